"""Batching: tokenized examples to the dataset and collator the trainer sees (truncation, packing, preview).

We hand SFTTrainer finished `input_ids`/`labels` (it skips its own preparation), so what `dry_run`
previews is exactly what training receives, and every truncated or dropped row is counted.
"""

import json
import os

import torch

from common.data import DataReport


def choose_packing(packing) -> bool:
    """"auto": pack on GPU (varlen attention makes it pay); on CPU, padded batches in random order.

    On two CPU cores TRL's packing ran 2x slower than padded batches (KNOWN_TRAPS.md): sdpa with a packed
    row's block-diagonal mask computes full-size attention in the math kernel. Length-grouped batches cut
    padding but make each batch one kind of row; on the example task they trained to 16% exact match
    where random batches reached 99.5% (README, "Batching").
    """
    return torch.cuda.is_available() if packing == "auto" else bool(packing)


def build_dataset(examples, max_length: int, packing: bool, seed: int, report: DataReport, split: str,
                  batch_size: int | None = None):
    """A datasets.Dataset of input_ids/labels (packed in random order when asked); counts go into the report.

    Packed rows are max_length long, or shorter when batch_size examples would not fill one: a step of
    one row then still holds about batch_size examples (see training.packed_batch_size).
    """
    from datasets import Dataset

    rows, truncated, no_target = [], 0, 0
    for input_ids, labels in examples:
        if len(input_ids) > max_length:
            truncated += 1
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        if all(label == -100 for label in labels[1:]):  # the first label is never a target after the shift
            no_target += 1
            continue
        rows.append({"input_ids": input_ids, "labels": labels})
    if no_target:
        report.drop(f"{split}: no trained token after truncation to max_length={max_length}", no_target)
    report.counts[f"{split}_rows"] = len(rows)
    report.counts[f"{split}_truncated"] = truncated
    report.counts[f"{split}_tokens"] = sum(len(r["input_ids"]) for r in rows)
    report.counts[f"{split}_trained_tokens"] = sum(sum(lab != -100 for lab in r["labels"][1:]) for r in rows)
    row_length = max_length
    if packing and rows:
        lengths = [len(r["input_ids"]) for r in rows]
        if batch_size:
            row_length = min(max_length, max(max(lengths), batch_size * sum(lengths) // len(lengths)))
        rows = pack_in_random_order(rows, row_length, seed)
    dataset = Dataset.from_list(rows)
    if packing and len(dataset):
        report.counts[f"{split}_packed_rows"] = len(dataset)
        report.counts[f"{split}_packed_row_length"] = row_length
        report.counts[f"{split}_packing_fill"] = round(report.counts[f"{split}_tokens"] / (len(dataset) * row_length), 4)
    return dataset


def pack_in_random_order(rows: list[dict], max_length: int, seed: int, open_rows: int = 8) -> list[dict]:
    """Examples packed into rows of at most max_length tokens, each row a random mix of examples.

    TRL's best-fit-decreasing packing sorts by length, so a row holds examples of one length, and on the
    example task one kind of request: a GPU run reached 42% exact match with it against 99.5% with padded
    batches, the same failure as length-grouped batches. Here examples are shuffled and each goes to the
    first of a few open rows with room (the fullest is closed when too many are open); fill stays near
    BFD's for short examples. `seq_lengths` gives TRL's collator the document boundaries.
    """
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    packed, pending = [], []
    for i in order:
        row, size = rows[i], len(rows[i]["input_ids"])
        target = next((p for p in pending if len(p["input_ids"]) + size <= max_length), None)
        if target is None:
            if len(pending) == open_rows:
                pending.sort(key=lambda p: len(p["input_ids"]))
                packed.append(pending.pop())
            target = {"input_ids": [], "labels": [], "seq_lengths": []}
            pending.append(target)
        target["input_ids"] += row["input_ids"]
        target["labels"] += row["labels"]
        target["seq_lengths"].append(size)
    return packed + pending


def collator(tokenizer, packing: bool):
    """The collator SFTTrainer builds for itself from the same settings (it refuses a passed-in one when
    packing): padded batches, or one padding-free row with per-document position_ids when packed."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=packing)


def write_preview(dataset, collate, output_dir: str, n: int = 16) -> list[dict]:
    """data_preview.jsonl: the first n training examples exactly as the collator hands them to the model."""
    preview = []
    for i in range(min(n, len(dataset))):
        batch = collate([dataset[i]])
        preview.append({k: batch[k][0].tolist() for k in ("input_ids", "labels", "position_ids") if k in batch})
    with open(os.path.join(output_dir, "data_preview.jsonl"), "w", encoding="utf-8") as f:
        for row in preview:
            f.write(json.dumps(row) + "\n")
    return preview


def show_example(tokenizer, example: dict) -> str:
    """The example's text with the tokens that carry a loss wrapped in [[ ]]."""
    pieces, inside = [], False
    for token, label in zip(example["input_ids"], example["labels"]):
        trained = label != -100
        if trained != inside:
            pieces.append("[[" if trained else "]]")
            inside = trained
        pieces.append(tokenizer.decode([token]))
    return "".join(pieces) + ("]]" if inside else "")


def dry_run(train_set, tokenizer, packing: bool, output_dir: str, report: DataReport) -> None:
    """What dry_run=true leaves behind: data_preview.jsonl, the prepared tokenizer/, and a printed example."""
    preview = write_preview(train_set, collator(tokenizer, packing), output_dir)
    tokenizer.save_pretrained(os.path.join(output_dir, "tokenizer"))
    print("first training example, trained tokens in [[ ]]:\n" + show_example(tokenizer, preview[0]))
    print(json.dumps(report.as_dict(), indent=2))
