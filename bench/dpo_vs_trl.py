"""dpo.py's defaults (reference log-probs computed once and cached) against a plain TRL DPOTrainer script.

    python bench/dpo_vs_trl.py                  # 3.9M-parameter Llama, 120 long-tailed pairs, 2 epochs, 3 runs each
    python bench/dpo_vs_trl.py --tiny           # the smoke test's setting

Same model and initial weights, same pairs, max_length=1024, two epochs, fp32 on CPU. The plain script keeps
TRL's defaults (batch 8, the reference model run again at every step, activation checkpointing); dpo.py
keeps its PARAMS defaults except `eval_fraction=0` and no before/after tests. Its reference cache starts
empty in every run, so epoch 1 pays for computing it (counted in "setup" before training starts); epoch 2
is what every later epoch costs. Variants alternate, each in a fresh process.
"""

import argparse
import os
import shutil
import sys
import time

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
    config = DPOConfig(output_dir=os.path.join(args.workdir, "trl"), max_length=args.max_length, num_train_epochs=2,
                       use_cpu=not torch.cuda.is_available(), bf16=False, report_to="none")
    trainer = workload.measured(DPOTrainer)(model=model, args=config, processing_class=tokenizer,
                                            train_dataset=load_dataset("json", data_files=data, split="train"))
    trainer.train()


def run_ours(args, data: str, model_dir: str) -> None:
    import dpo
    from common.params import resolve

    cache = os.path.join(args.workdir, "ref_cache")
    shutil.rmtree(cache, ignore_errors=True)
    params = resolve(dpo.PARAMS, [f"model={model_dir}", f"data=[{data}]", f"max_length={args.max_length}",
                                  "num_epochs=2", "eval_fraction=0", "test_data=", "exact_match_data=",
                                  "overwrite=true", "progress_bar=false", f"ref_cache_dir={cache}",
                                  f"output_dir={os.path.join(args.workdir, 'ours')}",
                                  f"clean.cache_dir={os.path.join(args.workdir, 'clean_cache')}", *args.ours.split()])
    dpo.main(params, trainer_class=workload.measured(__import__("trl").DPOTrainer))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="trl,ours")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=120)
    parser.add_argument("--median", type=int, default=300, help="median pair length (prompt + one completion) in tokens")
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--shape", default="4m", choices=workload.SHAPES)
    parser.add_argument("--tiny", action="store_true", help="16 pairs, a 60k-parameter model, one run each")
    parser.add_argument("--ours", default="", help="PARAMS overrides for dpo.py, e.g. 'grad_accum=1'")
    parser.add_argument("--workdir", default="outputs/bench/dpo")
    parser.add_argument("--run", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.rows, args.median, args.max_length, args.shape, args.repeats = 16, 40, 128, "tiny", 1
    data, model_dir = os.path.join(args.workdir, "pairs.jsonl"), os.path.join(args.workdir, "model")

    if args.run:
        workload.import_libraries("dpo")
        started = time.perf_counter()
        (run_ours if args.run == "ours" else run_trl)(args, data, model_dir)
        return workload.finish(args.run, args.out, started, args.rows)

    os.makedirs(args.workdir, exist_ok=True)
    workload.write_jsonl(data, workload.preference_rows(args.rows, args.median, args.max_length - 24))
    workload.build_model(model_dir, args.shape, args.max_length)
    peak = workload.matmul_peak_gflops()
    extra = ["--rows", str(args.rows), "--max_length", str(args.max_length), "--ours", args.ours]
    results = workload.alternate(os.path.abspath(__file__), args.variants.split(","), args.repeats, args.workdir,
                                 os.path.join(args.workdir, "results.jsonl"), extra)
    peak = max(peak, workload.matmul_peak_gflops())
    params = workload.model_parameters(model_dir)
    table = workload.summarise(results, params, peak, baseline=args.variants.split(",")[0])
    workload.print_table(table, f"dpo: {args.rows} pairs (median {args.median} tokens), {params / 1e6:.1f}M-parameter "
                                f"Llama, max_length={args.max_length}; fp32 matmul peak {peak:.0f} GFLOP/s "
                                f"({os.cpu_count()} cores); {args.repeats} runs each, alternating")


if __name__ == "__main__":
    main()
