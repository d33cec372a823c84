"""Trainer settings: PARAMS to TRL's SFTConfig, DPOConfig, GRPOConfig and DistillationConfig, with precision and
device choices made explicit, and the callbacks every run logs with. The trainers themselves are built in the scripts
(common/trl_patches.py).

TRL's own defaults (bf16 on, gradient checkpointing on) are wrong for CPU runs, so every one that
matters is set here from PARAMS.
"""

import os

import pyarrow.compute as pc
import torch
from trl import DistillationConfig, DPOConfig, GRPOConfig, SFTConfig

from common.distributed import is_main
from common.errors import UserError
from common.models import resolve_dtype
from common.tracking import MetricsFile, ShardingReport, init_wandb, report_to


def packed_batch_size(batch_size: int, dataset) -> int:
    """Packed rows per device step that hold about batch_size examples, as unpacked batches do.

    Packing is a speed-up and should not change what is learned. Counted in packed rows, the example task's
    1,425 rows packed into 109 rows of 512 tokens, batch_size=32 made 40 steps in 10 epochs instead of 450,
    and an H100 run ended at 0% exact match where padded batches reach 98%.
    """
    examples = pc.sum(pc.list_value_length(dataset.data.column("seq_lengths"))).as_py()
    return max(1, round(batch_size * len(dataset) / examples))


def trainer_args(params: dict, has_eval: bool, batch_size: int | None = None) -> dict:
    """The arguments SFTConfig and DPOConfig share, from PARAMS (batch_size: packed rows per device step)."""
    dtype = resolve_dtype(params["dtype"])
    return dict(
        output_dir=params["output_dir"],
        run_name=os.path.basename(os.path.normpath(params["output_dir"])),
        num_train_epochs=params["num_epochs"],
        max_steps=params["max_steps"],
        per_device_train_batch_size=batch_size or params["batch_size"],
        per_device_eval_batch_size=batch_size or params["batch_size"],
        gradient_accumulation_steps=params["grad_accum"],
        learning_rate=params["learning_rate"],
        lr_scheduler_type=params["lr_scheduler"],
        warmup_steps=params["warmup"] if params["warmup"] < 1 else int(params["warmup"]),
        weight_decay=params["weight_decay"],
        adam_beta2=params["adam_beta2"],
        max_grad_norm=params["max_grad_norm"],
        seed=params["seed"],
        data_seed=params["seed"],
        logging_steps=params["logging_steps"],
        save_strategy="steps",
        save_steps=params["save_steps"],
        save_total_limit=params["save_total_limit"],
        eval_strategy="steps" if has_eval else "no",
        eval_steps=params["eval_steps"] if has_eval else None,
        report_to=report_to(params["report_to"]),
        use_cpu=not torch.cuda.is_available(),
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        max_length=params["max_length"],
        activation_checkpointing=params["activation_checkpointing"],
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        disable_tqdm=not params["progress_bar"],
    )


def callbacks(params: dict, args) -> list:
    """metrics.jsonl and the ZeRO-3 sharding line for every run; the wandb run is started here, on the main process,
    with the redacted PARAMS as its config, when args report to wandb."""
    if "wandb" in args.report_to and is_main():
        init_wandb(params, args.run_name)
    return [MetricsFile(params["output_dir"]), ShardingReport()]


def sft_config(params: dict, train_set, eval_set, packing: bool) -> SFTConfig:
    """SFTConfig for our tokenized (and, when packing, packed) examples: TRL prepares nothing. Packed, a device step
    takes the packed rows that hold about batch_size examples (packed_batch_size)."""
    batch_size = packed_batch_size(params["batch_size"], train_set) if packing else params["batch_size"]
    if is_main() and packing:
        print(
            f"packing: {batch_size} packed rows per device step, about batch_size={params['batch_size']} examples",
            flush=True,
        )
    return SFTConfig(
        **trainer_args(params, eval_set is not None, batch_size),
        packing=packing,
        padding_free=packing,
        dataset_kwargs={"skip_prepare_dataset": True},
    )


def dpo_config(params: dict, eval_set) -> DPOConfig:
    """DPOConfig from PARAMS. Full fine-tuning precomputes the reference log-probs (cached on disk by
    trl_patches.CachedReference); under LoRA the reference is the adapter-disabled model."""
    try:
        return DPOConfig(
            **trainer_args(params, eval_set is not None),
            beta=params["beta"],
            loss_type=params["loss_type"],
            loss_weights=params["loss_weights"] or None,
            label_smoothing=params["label_smoothing"],
            precompute_ref_log_probs=not params["lora"]["enabled"],
            disable_dropout=True,
        )
    except ValueError as e:
        raise UserError(f"DPO settings: {str(e).splitlines()[0]}") from None


def grpo_config(params: dict) -> GRPOConfig:
    """GRPOConfig from PARAMS; its lengths are max_completion_length and the prompts prepare kept."""
    args = trainer_args(params, False)
    del args["max_length"]
    vllm = {}
    if params["use_vllm"]:
        vllm = dict(
            use_vllm=True,
            vllm_mode=params["vllm_mode"],
            vllm_gpu_memory_utilization=params["vllm_gpu_memory_utilization"],
            vllm_server_base_url=params["vllm_server_base_url"] or None,
        )
    try:
        return GRPOConfig(
            **args,
            **vllm,
            num_generations=params["num_generations"],
            max_completion_length=params["max_completion_length"],
            temperature=params["temperature"],
            top_p=params["top_p"],
            beta=params["beta"],
            loss_type=params["loss_type"],
            epsilon=params["epsilon"],
            epsilon_high=params["epsilon_high"] or None,
            scale_rewards=params["scale_rewards"],
            importance_sampling_level=params["importance_sampling_level"],
            num_iterations=params["num_iterations"],
            mask_truncated_completions=params["mask_truncated_completions"],
            top_entropy_quantile=params["top_entropy_quantile"],
            reward_weights=params["reward_weights"] or None,
            remove_unused_columns=False,
            shuffle_dataset=True,
            disable_dropout=True,
        )
    except ValueError as e:
        raise UserError(f"GRPO settings: {str(e).splitlines()[0]}") from None


def distill_config(params: dict) -> DistillationConfig:
    """DistillationConfig from PARAMS: one sampled answer per prompt, scored by the teacher, dropout off in both."""
    args = trainer_args(params, False)
    del args["max_length"]
    try:
        return DistillationConfig(
            **args,
            beta=params["beta"],
            temperature=params["temperature"],
            top_p=params["top_p"],
            max_completion_length=params["max_completion_length"],
            remove_unused_columns=False,
            shuffle_dataset=True,
            disable_dropout=True,
        )
    except ValueError as e:
        raise UserError(f"distillation settings: {str(e).splitlines()[0]}") from None
