"""dpo.py's defaults (reference log-probs computed once and cached) against a plain TRL DPOTrainer script.

    python bench/dpo_vs_trl.py                  # 3.9M-parameter Llama, 120 long-tailed pairs, 2 epochs, 3 runs each
    python bench/dpo_vs_trl.py --tiny           # the smoke test's setting

Same model and initial weights, same pairs, max_length=1024, two epochs, fp32 on CPU. The plain script keeps
TRL's defaults (batch 8, the reference model run again at every step, activation checkpointing); dpo.py
keeps its PARAMS defaults except `eval_fraction=0` and no before/after tests. Its reference cache starts
empty in every run, so epoch 1 pays for computing it (counted in "setup" before training starts); epoch 2
is what every later epoch costs. Variants alternate, each in a fresh process.
"""

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workload  # noqa: E402

VARIANTS = ("trl", "ours")


def run_trl(args, data: str, model_dir: str) -> None:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = DPOConfig(
        output_dir=os.path.join(args.workdir, "trl"),
        max_length=args.max_length,
        num_train_epochs=2,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        report_to="none",
    )
    trainer = workload.measured(DPOTrainer)(
        model=model,
        args=config,
        processing_class=tokenizer,
        train_dataset=load_dataset("json", data_files=data, split="train"),
    )
    trainer.train()


def run_ours(args, data: str, model_dir: str) -> None:
    import dpo
    from common.params import resolve

    cache = os.path.join(args.workdir, "ref_cache")
    shutil.rmtree(cache, ignore_errors=True)
    params = resolve(
        dpo.PARAMS,
        dpo.RULES,
        [
            f"model={model_dir}",
            f"data=[{data}]",
            f"max_length={args.max_length}",
            "num_epochs=2",
            "eval_fraction=0",
            "test_data=",
            "exact_match_data=",
            "overwrite=true",
            "progress_bar=false",
            f"ref_cache_dir={cache}",
            f"output_dir={os.path.join(args.workdir, 'ours')}",
            f"data_cache_dir={os.path.join(args.workdir, 'data_cache')}",
            *args.ours.split(),
        ],
    )
    dpo.main(params, trainer_class=workload.measured(__import__("trl").DPOTrainer))


def run(args, data: str, model_dir: str) -> None:
    (run_ours if args.run == "ours" else run_trl)(args, data, model_dir)


def main() -> None:
    workload.side_by_side(__file__, VARIANTS, "dpo", 120, "dpo", workload.preference_rows, run)


if __name__ == "__main__":
    main()
