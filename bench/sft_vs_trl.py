"""sft_chat.py's defaults against a plain TRL SFTTrainer script with TRL's defaults, side by side.

    python bench/sft_vs_trl.py                  # 3.9M-parameter Llama, 400 long-tailed chats, 3 runs of each
    python bench/sft_vs_trl.py --variants trl,trl_no_checkpointing,ours
    python bench/sft_vs_trl.py --tiny           # the smoke test's setting: seconds, not minutes

Same model (same initial weights), same rows, max_length=1024, one epoch, fp32 on CPU for both. The plain
script is what a TRL user writes: SFTConfig with only those settings and `report_to="none"`, so TRL's
defaults hold (batch 8, padded batches in random order, activation checkpointing, loss on every token).
sft_chat.py runs with its PARAMS defaults, except that it keeps every row for training (`eval_fraction=0`)
and skips the exact-match test (`test_data=`), which are not part of an epoch. Variants run alternately,
each in a fresh process; the figures are medians with the range over the runs.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workload  # noqa: E402

VARIANTS = ("trl", "trl_no_checkpointing", "ours")


def run_trl(args, data: str, model_dir: str, checkpointing: bool) -> None:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = SFTConfig(
        output_dir=os.path.join(args.workdir, "trl"),
        max_length=args.max_length,
        num_train_epochs=1,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        report_to="none",
        activation_checkpointing=checkpointing,
    )
    trainer = workload.measured(SFTTrainer)(
        model=model,
        args=config,
        processing_class=tokenizer,
        train_dataset=load_dataset("json", data_files=data, split="train"),
    )
    trainer.train()


def run_ours(args, data: str, model_dir: str) -> None:
    import sft_chat
    from common.params import resolve

    params = resolve(
        sft_chat.PARAMS,
        sft_chat.RULES,
        [
            f"model={model_dir}",
            f"data=[{data}]",
            f"max_length={args.max_length}",
            "num_epochs=1",
            "eval_fraction=0",
            "test_data=",
            "overwrite=true",
            "progress_bar=false",
            f"output_dir={os.path.join(args.workdir, 'ours')}",
            f"data_cache_dir={os.path.join(args.workdir, 'data_cache')}",
            *args.ours.split(),
        ],
    )
    sft_chat.main(params, trainer_class=workload.measured(__import__("trl").SFTTrainer))


def run(args, data: str, model_dir: str) -> None:
    if args.run == "ours":
        run_ours(args, data, model_dir)
    else:
        run_trl(args, data, model_dir, checkpointing=args.run == "trl")


def main() -> None:
    workload.side_by_side(__file__, VARIANTS, "sft_chat", 400, "sft", workload.chat_rows, run)


if __name__ == "__main__":
    main()
