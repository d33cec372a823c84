"""Trainer settings: PARAMS to TRL's SFTConfig, with precision and device choices made explicit.

TRL's own defaults (bf16 on, gradient checkpointing on) are wrong for CPU runs, so every one that
matters is set here from PARAMS.
"""

import os

import torch

from common.distributed import is_main
from common.models import resolve_dtype
from common.tracking import MetricsFile, init_wandb, report_to


def sft_config(params: dict, packing: bool, has_eval: bool, report_to: str):
    from trl import SFTConfig

    dtype = resolve_dtype(params["dtype"])
    on_gpu = torch.cuda.is_available()
    return SFTConfig(
        output_dir=params["output_dir"],
        run_name=os.path.basename(os.path.normpath(params["output_dir"])),
        num_train_epochs=params["num_epochs"],
        max_steps=params["max_steps"],
        per_device_train_batch_size=params["batch_size"],
        per_device_eval_batch_size=params["batch_size"],
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
        eval_steps=params["eval_steps"],
        report_to=report_to,
        use_cpu=not on_gpu,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        max_length=params["max_length"],
        packing=packing,
        padding_free=packing,
        dataset_kwargs={"skip_prepare_dataset": True},
        activation_checkpointing=params["activation_checkpointing"],
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        disable_tqdm=not params["progress_bar"],
    )


def sft_trainer(params: dict, model, tokenizer, train_set, eval_set, packing: bool, trainer_class=None):
    """TRL's SFTTrainer (or a subclass) on our tokenized datasets, logging to metrics.jsonl and wandb."""
    from trl import SFTTrainer

    args = sft_config(params, packing, eval_set is not None, report_to(params["report_to"]))
    if "wandb" in args.report_to and is_main():
        init_wandb(params, args.run_name)
    return (trainer_class or SFTTrainer)(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        callbacks=[MetricsFile(params["output_dir"])],
    )
