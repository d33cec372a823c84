"""Held-out preference pairs, scored two ways side by side in one process: common.preference.preference_margins
(each pair's prompt read once, the head only where answer tokens are predicted) against each side scored as a whole
sequence through TRL's DataCollatorForPreference (how dpo.py scored them until 2026-12-06). Prints both times and
the largest difference between the margins (BENCHMARKS.md "A real model").

    python bench/preference_margins.py --model outputs/smollm2-135m-warmup/final --rows 100
"""

import argparse
import json
import os
import sys
import time

import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.chat.native import use_training_template  # noqa: E402
from common.chat.template import chat_spec  # noqa: E402
from common.evaluate import load_plain  # noqa: E402
from common.models import load_tokenizer  # noqa: E402
from common.preference import as_chat, preference_margins, tokenize_preference  # noqa: E402


@torch.no_grad()
def whole_sequences(model, tokenizer, rows, spec, batch_size=8) -> list[float]:
    """Chosen and rejected each as prompt + answer, every position through the head."""
    examples = [tokenize_preference(tokenizer, row, spec) for row in rows]
    collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id or 0)
    margins = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        chosen, rejected = (logps * batch["completion_mask"][:, 1:]).sum(-1).chunk(2)
        margins += (chosen - rejected).tolist()
    return margins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model folder with a chat template")
    parser.add_argument("--data", default="data/examples/preference_test.jsonl")
    parser.add_argument("--rows", type=int, default=100)
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.model, False)
    spec = chat_spec(tokenizer, use_training_template(tokenizer, "", "keep"), "keep")
    model = load_plain(args.model).eval()
    with open(args.data, encoding="utf-8") as f:
        rows = [as_chat(json.loads(line), True) for line in f if line.strip()][: args.rows]
    results = {}
    for name, score in (("prompt once", preference_margins), ("whole sequences", whole_sequences)):
        start = time.perf_counter()
        results[name] = score(model, tokenizer, rows, spec)
        print(f"{name}: {len(rows)} pairs in {time.perf_counter() - start:.1f} s", flush=True)
    difference = max(abs(a - b) for a, b in zip(*results.values(), strict=True))
    print(f"largest margin difference {difference:.2g}")


if __name__ == "__main__":
    main()
