"""Throughput of cleaning on synthetic chat rows of about 200 words (issue 5's bar: 100,000 rows of exact plus
near-duplicate removal in under 2 minutes on two cores).

    python bench/cleaning_throughput.py                      # 100,000 rows, dedup only, then every step
    python bench/cleaning_throughput.py --rows 10000

1% of the rows are exact copies and 1% near copies (one word edited), so the counts check themselves.
"""

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.cleaning import CLEAN_DEFAULTS, clean_rows  # noqa: E402
from common.data import DataReport, Row  # noqa: E402


def corpus(n: int, seed: int = 0) -> list[Row]:
    rng = random.Random(seed)
    vocab = [f"{a}{b}{c}{d}" for a in "bcdfgklmnprstvz" for b in "aeiou" for c in "lmnrst" for d in "aeiou"]
    rows = []
    for i in range(n):
        if i % 100 == 50:  # an exact copy of an earlier row
            rows.append(Row(rows[i - 50].data, f"row {i}"))
            continue
        answer = [rng.choice(vocab) for _ in range(180)]
        if i % 100 == 75:  # a near copy: one word of an earlier answer edited
            answer = rows[i - 50].data["messages"][1]["content"].split()
            answer[rng.randrange(len(answer))] = rng.choice(vocab)
        messages = [
            {"role": "user", "content": " ".join(rng.choice(vocab) for _ in range(20))},
            {"role": "assistant", "content": " ".join(answer)},
        ]
        if i % 100 == 75:
            messages[0] = rows[i - 50].data["messages"][0]
        rows.append(Row({"messages": messages}, f"row {i}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    rows = corpus(args.rows)
    off = dict(normalize=False, pii=False, phrases=False, max_repeated_lines=1.0, max_symbol_ratio=1e9)
    for name, settings in (("exact + near dedup", {**CLEAN_DEFAULTS, **off}), ("every step", dict(CLEAN_DEFAULTS))):
        report = DataReport()
        start = time.perf_counter()
        kept = clean_rows(rows, settings, report)
        elapsed = time.perf_counter() - start
        print(
            f"{name}: {len(rows)} rows in {elapsed:.1f} s ({len(rows) / elapsed:.0f} rows/s), kept {len(kept)}, "
            f"dropped {report.dropped}"
        )


if __name__ == "__main__":
    main()
