"""Held-out exact match along training runs: each checkpoint-N/ and final/ of each run folder, against the wall time
at which it was written, counted from when the run (or its route: generation, then training) began. Gives
BENCHMARKS.md's curve of distill.py against the offline route (synth_data.py answers, sft_chat.py on them).

    python bench/distill_curve.py --rows 100 --steps 20,60,100 outputs/smollm2-135m-distill=1764950000

Each argument is RUN_FOLDER=START (seconds since the epoch, `date +%s` when the route began); a folder with a model
and no checkpoints (a teacher, a pruned student) is scored once at time 0.
"""

import argparse
import glob
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transformers import AutoTokenizer  # noqa: E402

from common.evaluate import exact_match_of, load_plain, read_examples, saved_template  # noqa: E402


def points(run: str, start: float, steps: set) -> list[tuple[str, float]]:
    """(model folder, seconds after start it was written) for the saved models of a run (its checkpoints at steps,
    all when empty, and final/), oldest first."""
    folders = [
        f for f in glob.glob(os.path.join(run, "checkpoint-*")) if not steps or int(f.rsplit("-", 1)[1]) in steps
    ] + glob.glob(os.path.join(run, "final"))
    folders = [f for f in folders if glob.glob(os.path.join(f, "*.safetensors"))]
    if not folders:
        return [(run, 0.0)]
    written = {f: max(os.path.getmtime(p) for p in glob.glob(os.path.join(f, "*"))) for f in folders}
    return sorted(((f, written[f] - start) for f in folders), key=lambda p: p[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="RUN_FOLDER=START_EPOCH_SECONDS")
    parser.add_argument("--test", default="data/examples/chat_test.jsonl")
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--steps", default="", help="comma-separated checkpoint steps to score (default: all)")
    args = parser.parse_args()
    examples = read_examples(args.test)[: args.rows]
    print("| model | step | written at | held-out exact match |\n|---|---|---|---|")
    for spec in args.runs:
        run, _, start = spec.partition("=")
        for folder, at in points(run, float(start or 0), {int(s) for s in args.steps.split(",") if s}):
            tokenizer = AutoTokenizer.from_pretrained(folder)
            score = exact_match_of(load_plain(folder), tokenizer, examples, template=saved_template(folder))
            step = re.search(r"checkpoint-(\d+)", folder)
            print(f"| {folder} | {step[1] if step else '-'} | {at:.0f} s | {score:.1%} |", flush=True)


if __name__ == "__main__":
    main()
