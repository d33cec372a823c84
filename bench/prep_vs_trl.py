"""Data preparation only, side by side: sft_chat.py's against TRL's own SFT dataset preparation.

    python bench/prep_vs_trl.py                          # 20,000 and 100,000 long-tailed chats
    python bench/prep_vs_trl.py --rows 20000,100000,1000000
    python bench/prep_vs_trl.py --ours "num_proc=1"      # extra PARAMS overrides for sft_chat.py
    python bench/prep_vs_trl.py --tiny                   # the smoke test's setting: 300 rows, seconds

Same rows (workload.chat_rows: median 300 tokens, log-normal, written once per row count to
--workdir/rows-N.jsonl and reused), same tokenizer (workload.build_model: the built-in tokenizer with the
chat tokens and template, so both sides tokenize the same sequences), max_length=1024. Nothing is trained.
Each variant runs in a fresh process and is measured from outside:

- ours: `python sft_chat.py dry_run=true model=MODEL data=[ROWS] max_length=1024 eval_fraction=0 test_data=
  overwrite=true progress_bar=false output_dir=WORKDIR/ours data_cache_dir=WORKDIR/data_cache
  data_cache_dir=WORKDIR/data_cache` plus --ours, with both caches emptied first (cleaning on, its default).
  The child runs sft_chat.main on exactly those overrides after importing torch, transformers, TRL and
  datasets, so "prep s" is reading, cleaning, tokenising, packing and writing data_report.json and the
  preview, not Python's imports; "wall s" is the whole process. Tokens: train_tokens of data_report.json.
- ours_rerun: the same command again, caches kept. Both record data_cache_entries (folders in data_cache_dir
  after the run): a rerun that adds one did not reuse the first run's preparation.
- trl_1proc, trl_2proc: a plain TRL script: the model is loaded from the folder (not timed), then, timed:
  the tokenizer, `datasets.load_dataset("json", ...)`, SFTConfig(max_length=1024, dataset_num_proc=None or 2,
  report_to="none", use_cpu=True, bf16=False) and SFTTrainer(...), whose construction runs TRL's preparation
  (chat template, tokenise, labels, truncate). Each run gets an empty HF_DATASETS_CACHE of its own, so
  neither the json-to-arrow conversion nor a map is served from an earlier run's cache. Tokens: the lengths
  of the prepared train set's input_ids. The JSON line also keeps load_s and trainer_s (construction alone).

Peak RSS is sampled every 0.05 s with psutil: "tree" sums the RSS of the process and all its descendants
(preparation workers included; pages shared between forked workers are counted in each), "main" is the
process's own (the larger of the samples and its own getrusage). Every run is appended to
WORKDIR/results.jsonl (emptied at the start). The environment is the other benchmarks' (HF_HUB_OFFLINE=1,
TOKENIZERS_PARALLELISM=false).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workload  # noqa: E402

VARIANTS = ("ours", "ours_rerun", "trl_1proc", "trl_2proc")
CHUNK = 100_000  # rows generated at a time, so a million rows never sit in memory at once
SAMPLE_S = 0.05


# ---- the child: one variant, its counts as one JSON line in --out ----


def run_ours(args, data: str, model_dir: str) -> dict:
    import sft_chat
    from common.params import resolve

    out = os.path.join(args.workdir, "ours")
    overrides = ours_overrides(args, data, model_dir)
    if "data_cache_dir" not in sft_chat.PARAMS:  # before common/ has it: the run has no data cache to reuse
        overrides = [o for o in overrides if not o.startswith("data_cache_dir=")]
    params = resolve(sft_chat.PARAMS, sft_chat.RULES, overrides)
    started = time.perf_counter()
    sft_chat.main(params)
    prep_s = time.perf_counter() - started
    with open(os.path.join(out, "data_report.json"), encoding="utf-8") as f:
        report = json.load(f)
    cache = params.get("data_cache_dir")  # entries after the run: a rerun that adds one did not reuse the cache
    entries = len(os.listdir(cache)) if cache and os.path.isdir(cache) else 0
    return dict(
        prep_s=prep_s,
        tokens=report["train_tokens"],
        prepared_rows=report.get("train_rows"),
        data_cache_entries=entries,
        overrides=overrides,
    )


def run_trl(args, data: str, model_dir: str, num_proc: int | None) -> dict:
    import pyarrow.compute as pc
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = load_dataset("json", data_files=data, split="train")
    loaded = time.perf_counter()
    config = SFTConfig(
        output_dir=os.path.join(args.workdir, args.run),
        max_length=args.max_length,
        dataset_num_proc=num_proc,
        report_to="none",
        use_cpu=True,
        bf16=False,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    finished = time.perf_counter()
    prepared = trainer.train_dataset
    lengths = pc.list_value_length(prepared.data.column("input_ids"))  # from the arrow column, no Python lists
    return dict(
        prep_s=finished - started,
        load_s=loaded - started,
        trainer_s=finished - loaded,
        tokens=int(pc.sum(lengths).as_py()),
        prepared_rows=len(prepared),
    )


def ours_overrides(args, data: str, model_dir: str) -> list[str]:
    return [
        "dry_run=true",
        f"model={model_dir}",
        f"data=[{data}]",
        f"max_length={args.max_length}",
        "eval_fraction=0",
        "test_data=",
        "overwrite=true",
        "progress_bar=false",
        f"output_dir={os.path.join(args.workdir, 'ours')}",
        f"data_cache_dir={os.path.join(args.workdir, 'data_cache')}",
        f"data_cache_dir={os.path.join(args.workdir, 'data_cache')}",
        *args.ours.split(),
    ]


def child(args) -> None:
    workload.import_libraries("sft_chat")
    data, model_dir = rows_file(args.workdir, args.rows), model_folder(args)
    if args.run.startswith("ours"):
        counts = run_ours(args, data, model_dir)
    else:
        counts = run_trl(args, data, model_dir, num_proc=2 if args.run == "trl_2proc" else None)
    counts["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(counts, f)


# ---- the parent: rows, model, the variants in fresh processes, the tables ----


def rows_file(workdir: str, rows: int) -> str:
    return os.path.join(workdir, f"rows-{rows}.jsonl")


def model_folder(args) -> str:
    return os.path.join(args.workdir, f"model-{args.shape}-{args.max_length}")


def write_rows(path: str, rows: int, median: int, cap: int) -> None:
    """rows chats in path, made CHUNK at a time (seed = the chunk's number); kept if already there."""
    if os.path.exists(path):
        return
    print(f"writing {rows:,} rows to {path}", flush=True)
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        for seed, start in enumerate(range(0, rows, CHUNK)):
            chunk = workload.chat_rows(min(CHUNK, rows - start), median, cap, seed)
            f.writelines(json.dumps(row) + "\n" for row in chunk)
    os.replace(partial, path)


def measure(command: list[str], env: dict) -> dict:
    """Run command; its wall seconds and peak RSS (MB), of the process tree and of the process alone."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=workload.ROOT, stdout=subprocess.DEVNULL)
    watched, tree_peak, main_peak = psutil.Process(process.pid), 0, 0
    while process.poll() is None:
        try:
            procs = [watched, *watched.children(recursive=True)]
        except psutil.Error:
            procs = []
        total = 0
        for p in procs:
            try:
                rss = p.memory_info().rss
            except psutil.Error:  # a worker that ended between listing and reading
                continue
            total += rss
            if p.pid == process.pid:
                main_peak = max(main_peak, rss)
        tree_peak = max(tree_peak, total)
        time.sleep(SAMPLE_S)
    wall_s = time.perf_counter() - started
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed with status {process.returncode}")
    return dict(wall_s=wall_s, peak_rss_mb=tree_peak / 2**20, peak_rss_main_mb=main_peak / 2**20)


def run_variant(args, variant: str, rows: int, env: dict) -> dict:
    workdir = args.workdir
    out = os.path.join(workdir, f"child-{variant}.json")
    env = dict(env)
    if variant == "ours":  # empty caches: the first run
        for cache in ("clean_cache", "data_cache"):
            shutil.rmtree(os.path.join(workdir, cache), ignore_errors=True)
    hf_cache = os.path.join(workdir, "hf_datasets_cache", variant)
    if variant.startswith("trl"):  # TRL's arrow and map caches: empty for every run
        shutil.rmtree(hf_cache, ignore_errors=True)
        env["HF_DATASETS_CACHE"] = hf_cache
    print(f"{rows:,} rows: {variant}", flush=True)
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--run",
        variant,
        "--rows",
        str(rows),
        "--workdir",
        workdir,
        "--out",
        out,
        "--max_length",
        str(args.max_length),
        "--shape",
        args.shape,
        "--ours",
        args.ours,
    ]
    measured = measure(command, env)
    with open(out, encoding="utf-8") as f:
        counts = json.load(f)
    os.remove(out)
    shutil.rmtree(hf_cache, ignore_errors=True)
    measured["peak_rss_main_mb"] = max(measured["peak_rss_main_mb"], counts.pop("ru_maxrss_mb"))
    measured["peak_rss_mb"] = max(measured["peak_rss_mb"], measured["peak_rss_main_mb"])
    result = dict(
        variant=variant,
        rows=rows,
        prep_s=counts.pop("prep_s"),
        wall_s=measured["wall_s"],
        tokens=counts.pop("tokens"),
        peak_rss_mb=measured["peak_rss_mb"],
        peak_rss_main_mb=measured["peak_rss_main_mb"],
        **counts,
    )
    with open(os.path.join(workdir, "results.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    return result


def print_table(results: list[dict], rows: int, args) -> None:
    n = workload.number
    print(
        f"\nData preparation: {rows:,} chats (median {args.median} tokens), max_length={args.max_length}, "
        f"{os.cpu_count()} cores; ours: `{args.ours or 'defaults'}`"
    )
    print("| variant | rows | prep s | rows/s | tokens/s | peak RSS MB (tree) | peak RSS MB (main) | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        per_s = [n(r["rows"] / r["prep_s"]), n(r["tokens"] / r["prep_s"])]
        cells = [
            r["variant"],
            f"{r['rows']:,}",
            n(r["prep_s"]),
            *per_s,
            n(r["peak_rss_mb"]),
            n(r["peak_rss_main_mb"]),
            n(r["wall_s"]),
        ]
        print("| " + " | ".join(cells) + " |")


def print_goals(results: list[dict]) -> None:
    def get(variant, rows):
        return next((r for r in results if r["variant"] == variant and r["rows"] == rows), None)

    counts = sorted({r["rows"] for r in results})
    print()
    for rows in counts:
        ours, trl, rerun = get("ours", rows), get("trl_1proc", rows), get("ours_rerun", rows)
        if ours and trl:
            print(
                f"- {rows:,} rows: ours prepares {trl['prep_s'] / ours['prep_s']:.2f}x as fast as trl_1proc "
                f"({ours['prep_s']:.1f} s against {trl['prep_s']:.1f} s; wall {ours['wall_s']:.1f} s against "
                f"{trl['wall_s']:.1f} s)"
            )
        if ours and rerun:
            missed = rerun["data_cache_entries"] > ours["data_cache_entries"]
            print(
                f"- {rows:,} rows: ours rerun / first run: {rerun['prep_s'] / ours['prep_s']:.2f} of the prep time "
                f"({rerun['prep_s']:.1f} s against {ours['prep_s']:.1f} s), {rerun['wall_s'] / ours['wall_s']:.2f} "
                f"of the wall time" + ("; the rerun wrote a new data_cache entry (not reused)" if missed else "")
            )
    ours = [r for r in (get("ours", rows) for rows in counts) if r]
    for small, large in zip(ours, ours[1:], strict=False):
        print(
            f"- ours peak RSS (tree) at {large['rows']:,} / at {small['rows']:,} rows: "
            f"{large['peak_rss_mb'] / small['peak_rss_mb']:.2f} ({large['peak_rss_mb']:,.0f} MB against "
            f"{small['peak_rss_mb']:,.0f} MB; main process "
            f"{large['peak_rss_main_mb'] / small['peak_rss_main_mb']:.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="20000,100000", help="row counts, comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--median", type=int, default=300, help="median chat length in tokens")
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--shape", default="4m", choices=workload.SHAPES)
    parser.add_argument("--tiny", action="store_true", help="300 rows, a 60k-parameter model")
    parser.add_argument("--ours", default="", help="PARAMS overrides for sft_chat.py, e.g. 'num_proc=1'")
    parser.add_argument("--workdir", default="/tmp/prep_bench")
    parser.add_argument("--run", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        args.rows = int(args.rows)
        return child(args)
    if args.tiny:
        args.rows, args.median, args.max_length, args.shape = "300", 40, 128, "tiny"
    args.workdir = os.path.abspath(args.workdir)
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")

    os.makedirs(args.workdir, exist_ok=True)
    model_dir = model_folder(args)
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        workload.build_model(model_dir, args.shape, args.max_length)
    results_path = os.path.join(args.workdir, "results.jsonl")
    if os.path.exists(results_path):
        os.remove(results_path)
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false"
    )
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        write_rows(rows_file(args.workdir, rows), rows, args.median, args.max_length - 24)
        table = [run_variant(args, variant, rows, env) for variant in variants]
        print_table(table, rows, args)
        results += table
    print_goals(results)


if __name__ == "__main__":
    main()
