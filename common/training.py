"""Trainer settings: PARAMS to TRL's SFTConfig, DPOConfig and GRPOConfig, with precision and device choices made explicit.

TRL's own defaults (bf16 on, gradient checkpointing on) are wrong for CPU runs, so every one that
matters is set here from PARAMS.
"""

import os

import torch

from common.attention import use_varlen_attention
from common.checkpoint import checkpoints
from common.distributed import is_main
from common.errors import RunStopped
from common.models import resolve_dtype
from common.tracking import MetricsFile, ShardingReport, init_wandb, report_to


def packed_batch_size(batch_size: int, dataset) -> int:
    """Packed rows per device step that hold about batch_size examples, as unpacked batches do.

    Packing is a speed-up and should not change what is learned. Counted in packed rows, the example task's
    1,425 rows packed into 109 rows of 512 tokens, batch_size=32 made 40 steps in 10 epochs instead of 450,
    and an H100 run ended at 0% exact match where padded batches reach 98%.
    """
    import pyarrow.compute as pc

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


def stop_on_non_finite_loss(trainer_class):
    """trainer_class whose every micro-step checks its loss across ranks: a NaN or infinite loss stops the run
    with one line naming the step, before the next save, so the checkpoints on disk stay the last good ones.
    (Without DeepSpeed the bad step's update is not applied either: the optimizer steps after training_step.)"""

    class Guarded(trainer_class):
        def training_step(self, model, inputs, *args, **kwargs):
            loss = super().training_step(model, inputs, *args, **kwargs)
            bad = (~torch.isfinite(loss.detach())).float()
            if self.accelerator.num_processes > 1:
                bad = self.accelerator.reduce(bad, reduction="sum")
            if bad.item():
                last = checkpoints(self.args.output_dir)
                raise RunStopped(
                    f"the loss is {loss.item()} at step {self.state.global_step + 1}; stopped before saving it, "
                    f"last good checkpoint: {os.path.basename(last[-1]) if last else 'none'} "
                    "(lower learning_rate or check the data, then resume=true)"
                )
            return loss

    Guarded.__name__ = Guarded.__qualname__ = trainer_class.__name__
    return Guarded


def _start_wandb(params: dict, args) -> None:
    if "wandb" in args.report_to and is_main():
        init_wandb(params, args.run_name)


def sft_trainer(params: dict, model, tokenizer, train_set, eval_set, packing: bool, trainer_class=None):
    """TRL's SFTTrainer (or a subclass) on our tokenized datasets, logging to metrics.jsonl and wandb."""
    from trl import SFTConfig, SFTTrainer

    batch_size = packed_batch_size(params["batch_size"], train_set) if packing else params["batch_size"]
    if packing:
        use_varlen_attention(model)
    if is_main() and packing:
        print(
            f"packing: {batch_size} packed rows per device step, about batch_size={params['batch_size']} examples, "
            f"attention {model.config._attn_implementation}",
            flush=True,
        )
    args = SFTConfig(
        **trainer_args(params, eval_set is not None, batch_size),
        packing=packing,
        padding_free=packing,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    _start_wandb(params, args)
    return stop_on_non_finite_loss(trainer_class or SFTTrainer)(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        callbacks=[MetricsFile(params["output_dir"]), ShardingReport()],
    )


def dpo_trainer(params: dict, model, tokenizer, train_set, eval_set, trainer_class=None):
    """TRL's DPOTrainer (or a subclass) on the prepared pairs. Under LoRA the reference is the adapter-disabled model;
    otherwise the reference log-probs are computed once before training and cached on disk (common.preference).
    The pairs are memory-mapped files every rank opens: TRL caches its reference log-probs beside a dataset's
    files, written by rank 0 and read by the others."""
    from trl import DPOConfig, DPOTrainer

    from common.errors import UserError
    from common.preference import cached_reference, pretokenized

    lora = params["lora"]["enabled"]
    try:
        args = DPOConfig(
            **trainer_args(params, eval_set is not None),
            beta=params["beta"],
            loss_type=params["loss_type"],
            loss_weights=params["loss_weights"] or None,
            label_smoothing=params["label_smoothing"],
            precompute_ref_log_probs=not lora,
            disable_dropout=True,
        )
    except ValueError as e:
        raise UserError(f"DPO settings: {str(e).splitlines()[0]}") from None
    _start_wandb(params, args)
    trainer_class = pretokenized(stop_on_non_finite_loss(trainer_class or DPOTrainer))
    if not lora:
        trainer_class = cached_reference(trainer_class, params["ref_cache_dir"], tokenizer)
    return trainer_class(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        callbacks=[MetricsFile(params["output_dir"]), ShardingReport()],
    )


def grpo_trainer(params: dict, model, tokenizer, prompts, rewards: list, trainer_class=None, add_special_tokens=False):
    """TRL's GRPOTrainer (or a subclass) on the prepared prompts, scored by the rewards (common.rewards.Reward)."""
    from trl import GRPOConfig, GRPOTrainer

    from common.errors import UserError
    from common.prompts import rendered_prompts

    args = trainer_args(params, False)
    del args["max_length"]  # GRPO's lengths are max_completion_length and the prompts prepare kept
    vllm = {}
    if params["use_vllm"]:
        vllm = dict(
            use_vllm=True,
            vllm_mode=params["vllm_mode"],
            vllm_gpu_memory_utilization=params["vllm_gpu_memory_utilization"],
            vllm_server_base_url=params["vllm_server_base_url"] or None,
        )
    try:
        config = GRPOConfig(
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
    _start_wandb(params, config)
    trainer_class = rendered_prompts(stop_on_non_finite_loss(trainer_class or GRPOTrainer), add_special_tokens)
    return trainer_class(
        model=model,
        reward_funcs=rewards,
        args=config,
        train_dataset=prompts,
        processing_class=tokenizer,
        callbacks=[MetricsFile(params["output_dir"]), ShardingReport()],
    )
