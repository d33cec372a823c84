"""What the side-by-side benchmarks share: the bench model and data, the machine's matmul peak, the
measuring trainer, and the runner that alternates variants in fresh processes.

Each variant runs in its own process (so peak RSS is its own) and writes one JSON line of raw counts;
`summarise` turns them into the figures in BENCHMARKS.md.
"""

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# A 4M-parameter Llama (GQA, like current small models) and one of 1M for the smoke test.
SHAPES = {
    "4m": dict(
        hidden_size=256, intermediate_size=704, num_hidden_layers=5, num_attention_heads=8, num_key_value_heads=4
    ),
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    ),
}


def build_model(folder: str, shape: str, max_length: int) -> None:
    """A random Llama with the built-in tokenizer already given its chat tokens and template, so TRL and
    this project's scripts train exactly the same token sequences from the same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from common.chat.tokenizer import prepare_tokenizer
    from common.models import load_tokenizer

    tokenizer = load_tokenizer("builtin:tiny")
    prepare_tokenizer(tokenizer, "special_tokens")
    torch.manual_seed(0)
    vocab = -(-len(tokenizer) // 64) * 64
    config = LlamaConfig(
        vocab_size=vocab,
        max_position_embeddings=max_length,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=False,
        **SHAPES[shape],
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def vocabulary_words() -> list[str]:
    """Words of the built-in tokenizer that are one token each (a space is a token of its own there)."""
    from common.models import load_tokenizer

    tokenizer = load_tokenizer("builtin:tiny")
    return sorted(w for w in tokenizer.get_vocab() if w.isalpha() and len(tokenizer(w)["input_ids"]) == 1)


def text(rng, words: list[str], tokens: int) -> str:
    """About `tokens` tokens of random words (each word and each space is one token)."""
    return " ".join(rng.choices(words, k=max(1, (tokens + 1) // 2)))


def long_tailed_lengths(n: int, median: int, cap: int, seed: int) -> list[int]:
    """Log-normal lengths (sigma 0.6, as chat data tends to be), median `median`, cut at `cap`."""
    import math

    rng = random.Random(seed)
    return [min(cap, max(8, int(rng.lognormvariate(math.log(median), 0.6)))) for _ in range(n)]


def chat_rows(n: int, median: int, cap: int, seed: int = 0) -> list[dict]:
    """Chats of one user turn (a quarter of the tokens) and one assistant turn, of random words."""
    rng, words = random.Random(seed), vocabulary_words()
    rows = []
    for length in long_tailed_lengths(n, median, cap, seed):
        user = max(2, length // 4)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": text(rng, words, user)},
                    {"role": "assistant", "content": text(rng, words, length - user)},
                ]
            }
        )
    return rows


def preference_rows(n: int, median: int, cap: int, seed: int = 0) -> list[dict]:
    """Pairs with a prompt of a third of the tokens and two different completions of the rest."""
    rng, words = random.Random(seed), vocabulary_words()
    rows = []
    for length in long_tailed_lengths(n, median, cap, seed):
        prompt = max(2, length // 3)
        rows.append(
            {
                "prompt": [{"role": "user", "content": text(rng, words, prompt)}],
                "chosen": [{"role": "assistant", "content": text(rng, words, length - prompt)}],
                "rejected": [{"role": "assistant", "content": text(rng, words, length - prompt)}],
            }
        )
    return rows


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def matmul_peak_gflops(size: int = 2048, repeats: int = 10, device: str = "cpu", dtype=None) -> float:
    """The best of `repeats` square matmuls, in GFLOP/s: by default this machine's fp32 rate with all of torch's
    threads; `device="cuda", dtype=torch.bfloat16` (and a size of ~8192) gives a GPU's bf16 peak for MFU."""
    import torch

    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)
    for _ in range(1 if device == "cpu" else repeats):  # a GPU needs a few products to raise its clocks
        a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def measured(trainer_class):
    """trainer_class counting what each training step really computes, and timing each epoch."""
    from transformers import TrainerCallback

    class EpochTimes(TrainerCallback):
        def __init__(self, counts):
            self.counts = counts

        def on_train_begin(self, args, state, control, **kwargs):
            self.counts["train_begin"] = time.perf_counter()

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            self.counts["epoch_s"].append(time.perf_counter() - self.start)

    class Measured(trainer_class):
        def __init__(self, *args, **kwargs):
            self.counts = dict(epoch_s=[], steps=0, tokens=0, padded_tokens=0, trained_tokens=0)
            super().__init__(*args, **kwargs)
            self.add_callback(EpochTimes(self.counts))
            COUNTS.append(self.counts)

        def training_step(self, model, inputs, *args, **kwargs):
            ids, mask, counts = inputs["input_ids"], inputs.get("attention_mask"), self.counts
            counts["steps"] += 1
            counts["padded_tokens"] += ids.numel()
            counts["tokens"] += int(mask.sum()) if mask is not None else ids.numel()
            if "labels" in inputs:  # SFT: tokens with a label
                counts["trained_tokens"] += int((inputs["labels"][:, 1:] != -100).sum())
            else:  # DPO: completion tokens, whose log-probs make the loss
                counts["trained_tokens"] += int(inputs["completion_mask"].sum())
            return super().training_step(model, inputs, *args, **kwargs)

    return Measured


COUNTS: list[dict] = []


def import_libraries(script: str) -> None:
    """Import torch, transformers, TRL, datasets and the script before the clock starts, so that "data prep"
    times loading, reading, cleaning and tokenising, not Python's imports."""
    import importlib

    for name in ("torch", "transformers", "trl", "datasets", script):
        importlib.import_module(name)


def finish(variant: str, out: str, started: float, rows: int, extra: dict | None = None) -> None:
    """Append this process's counts to `out` as one JSON line."""
    counts = COUNTS[-1]
    result = dict(
        variant=variant,
        rows=rows,
        wall_s=time.perf_counter() - started,
        prepare_s=counts["train_begin"] - started,
        train_s=time.perf_counter() - counts["train_begin"],
        epoch_s=counts["epoch_s"],
        steps=counts["steps"],
        tokens=counts["tokens"],
        padded_tokens=counts["padded_tokens"],
        trained_tokens=counts["trained_tokens"],
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **(extra or {}),
    )
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")


def alternate(
    script: str, variants: list[str], repeats: int, workdir: str, out: str, extra_args: list[str]
) -> list[dict]:
    """Run each variant `repeats` times, in turn (A B A B ...), each in a fresh process; their results."""
    if os.path.exists(out):
        os.remove(out)
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    for repeat in range(repeats):
        for variant in variants:
            print(f"run {repeat + 1}/{repeats}: {variant}", flush=True)
            subprocess.run(
                [sys.executable, script, "--run", variant, "--workdir", workdir, "--out", out, *extra_args],
                check=True,
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
            )
    with open(out, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def spread(values: list[float]) -> str:
    """The median and, over several runs, the range."""
    if len(values) == 1:
        return number(values[0])
    return f"{number(statistics.median(values))} ({number(min(values))}-{number(max(values))})"


def summarise(results: list[dict], params: float, peak_gflops: float, baseline: str) -> list[dict]:
    """Per variant: the figures over its runs, and each ratio to the baseline's median."""
    table = []
    for variant in dict.fromkeys(r["variant"] for r in results):
        runs = [r for r in results if r["variant"] == variant]

        def per_run(f, runs=runs):
            return [f(r) for r in runs]

        table.append(
            dict(
                variant=variant,
                runs=len(runs),
                epoch_s=[per_run(lambda r, i=i: r["epoch_s"][i]) for i in range(len(runs[0]["epoch_s"]))],
                trained_tok_s=per_run(lambda r: r["trained_tokens"] / r["train_s"]),
                tok_s=per_run(lambda r: r["tokens"] / r["train_s"]),
                padding_share=per_run(lambda r: 1 - r["tokens"] / r["padded_tokens"] if r["padded_tokens"] else 0.0),
                peak_rss_mb=per_run(lambda r: r["peak_rss_mb"]),
                mfu_trained=per_run(lambda r: 6 * params * r["trained_tokens"] / r["train_s"] / (peak_gflops * 1e9)),
                mfu_all=per_run(lambda r: 6 * params * r["tokens"] / r["train_s"] / (peak_gflops * 1e9)),
                prepare_rows_s=per_run(lambda r: r["rows"] / r["prepare_s"]),
                wall_s=per_run(lambda r: r["wall_s"]),
                extra={k: per_run(lambda r, k=k: r[k]) for k in runs[0] if k.startswith("x_")},
            )
        )
    base = next(t for t in table if t["variant"] == baseline)
    for t in table:
        t["epoch_ratio"] = [
            [s / statistics.median(b) for s in e] for e, b in zip(t["epoch_s"], base["epoch_s"], strict=False)
        ]
        t["rss_ratio"] = [m / statistics.median(base["peak_rss_mb"]) for m in t["peak_rss_mb"]]
    return table


def print_table(table: list[dict], header: str) -> None:
    print(header)
    print(
        "| variant | runs | "
        + " | ".join(f"epoch {i + 1} s" for i in range(len(table[0]["epoch_s"])))
        + " | epoch time vs baseline | trained tokens/s | padding share | peak RSS MB | RSS vs baseline"
        " | MFU (trained tokens) | MFU (all tokens) | data prep rows/s | process wall s |"
    )
    print("|---" * (11 + len(table[0]["epoch_s"])) + "|")
    for t in table:
        cells = [
            t["variant"],
            str(t["runs"]),
            *(spread(e) for e in t["epoch_s"]),
            " / ".join(spread(r) for r in t["epoch_ratio"]),
            spread(t["trained_tok_s"]),
            spread(t["padding_share"]),
            spread(t["peak_rss_mb"]),
            spread(t["rss_ratio"]),
            spread([100 * m for m in t["mfu_trained"]]) + "%",
            spread([100 * m for m in t["mfu_all"]]) + "%",
            spread(t["prepare_rows_s"]),
            spread(t["wall_s"]),
        ]
        print("| " + " | ".join(cells) + " |")


def model_parameters(folder: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    return sum(p.numel() for p in model.parameters())


def side_by_side(script: str, variants: tuple, ours: str, rows: int, kind: str, make_rows, run) -> None:
    """The command line both side-by-side benchmarks share. As the parent: write the rows and the model, measure
    the matmul peak, run the variants alternately in fresh processes, print the table. As a child (--run):
    run(args, data, model_dir) trains one variant and its counts are appended to --out."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="trl,ours")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--median", type=int, default=300, help="median length in tokens (a pair: prompt + one answer)")
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--shape", default="4m", choices=SHAPES)
    parser.add_argument("--tiny", action="store_true", help="16 rows, a 60k-parameter model, one run each")
    parser.add_argument("--ours", default="", help=f"PARAMS overrides for {ours}.py, e.g. 'grad_accum=1'")
    parser.add_argument("--model", default="", help="a pretrained model folder instead of the random Llama")
    parser.add_argument("--data", default="", help="with --model: the first --rows rows of this file, not random words")
    parser.add_argument("--workdir", default=f"outputs/bench/{kind}")
    parser.add_argument("--run", choices=variants, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.rows, args.median, args.max_length, args.shape, args.repeats = 16, 40, 128, "tiny", 1
    data, model_dir = os.path.join(args.workdir, "rows.jsonl"), os.path.join(args.workdir, "model")
    if args.model:
        model_dir = os.path.expanduser(args.model)

    if args.run:
        import_libraries(ours)
        started = time.perf_counter()
        run(args, data, model_dir)
        return finish(args.run, args.out, started, args.rows)

    os.makedirs(args.workdir, exist_ok=True)
    if args.data:
        with open(args.data, encoding="utf-8") as f:
            write_jsonl(data, [json.loads(line) for line, _ in zip(f, range(args.rows), strict=False)])
    else:
        write_jsonl(data, make_rows(args.rows, args.median, args.max_length - 24))
    if not args.model:
        build_model(model_dir, args.shape, args.max_length)
    peak = matmul_peak_gflops()
    extra = ["--rows", str(args.rows), "--max_length", str(args.max_length), "--ours", args.ours, "--model", args.model]
    results = alternate(
        os.path.abspath(script),
        args.variants.split(","),
        args.repeats,
        args.workdir,
        os.path.join(args.workdir, "results.jsonl"),
        extra,
    )
    peak = max(peak, matmul_peak_gflops())
    params = model_parameters(model_dir)
    print_table(
        summarise(results, params, peak, baseline=args.variants.split(",")[0]),
        f"{kind}: {args.rows} rows ({args.data or f'median {args.median} tokens'}), "
        f"{params / 1e6:.1f}M-parameter {args.model or 'Llama'}, "
        f"max_length={args.max_length}; fp32 matmul peak {peak:.0f} GFLOP/s ({os.cpu_count()} cores); "
        f"{args.repeats} runs each, alternating",
    )
