"""Batching: packing, the collator the trainer sees, and the preview.

We hand SFTTrainer finished `input_ids`/`labels` (common.prepare makes them; it skips its own preparation),
so what `dry_run` previews is exactly what training receives, and every truncated or dropped row is counted.
"""

import json
import os
import random

from trl.trainer.sft_trainer import DataCollatorForLanguageModeling


def choose_packing(packing) -> bool:
    """ "auto": packed, on CPU and GPU, now that each document's attention runs at its own size.

    With transformers' sdpa a packed step ran 2x slower than padded batches on two CPU cores
    (KNOWN_TRAPS.md): the block-diagonal mask makes attention full-size over the whole step. With
    common.attention's per-document sdpa, packing is the fastest choice measured (BENCHMARKS.md).
    Length-grouped batches would also cut padding but make each batch one kind of row; on the example
    task they trained to 16% exact match where random batches reached 99.5%.
    """
    return True if packing == "auto" else bool(packing)


def packed_row_length(lengths, max_length: int, batch_size: int | None) -> int:
    """Packed rows are max_length long, or shorter when batch_size examples would not fill one: a step of one
    row then still holds about batch_size examples (see training.packed_batch_size)."""
    if not batch_size:
        return max_length
    return int(min(max_length, max(max(lengths), batch_size * sum(lengths) // len(lengths))))


def pack_in_random_order(rows: list[dict], max_length: int, seed: int) -> list[dict]:
    """In-memory examples ({"input_ids", "labels"}) packed as pack_lengths places them, with seq_lengths."""
    packs = pack_lengths([len(row["input_ids"]) for row in rows], max_length, seed)
    return [
        {
            "input_ids": sum((rows[i]["input_ids"] for i in p), []),
            "labels": sum((rows[i]["labels"] for i in p), []),
            "seq_lengths": [len(rows[i]["input_ids"]) for i in p],
        }
        for p in packs
    ]


def pack_lengths(
    size: list[int], max_length: int, seed: int, window: int = 128, open_rows: int = 32
) -> list[list[int]]:
    """Examples (by their lengths alone) packed into rows of at most max_length tokens, each row a random mix of
    examples; returns each row's example indices.

    TRL's best-fit-decreasing packing sorts the whole set by length, so a row holds examples of one length,
    and on the example task one kind of request: a GPU run reached 42% exact match with it against 99.5%
    with padded batches, the same failure as length-grouped batches. Here the examples are shuffled and
    placed best-fit, a window at a time: the window's long examples (over a quarter of a row) first,
    longest first, then its short ones in random order, into up to `open_rows` open rows. At the end the
    part-filled open rows are packed again the same way. Rows of short examples are thus random; on the
    long-tailed bench data rows are 98.5% full, where first-fit in random order filled 93%
    (bench/sft_vs_trl.py). `seq_lengths` gives TRL's collator the document boundaries.
    """
    order = list(range(len(size)))
    random.Random(seed).shuffle(order)

    def window_order(indices):
        long = sorted((i for i in indices if size[i] > max_length // 4), key=lambda i: -size[i])
        return long + [i for i in indices if size[i] <= max_length // 4]

    def place(indices, packed, pending, limit):
        for i in indices:
            fits = [p for p in pending if p["length"] + size[i] <= max_length]
            target = max(fits, key=lambda p: p["length"]) if fits else None
            if target is None:
                if limit and len(pending) == limit:
                    pending.sort(key=lambda p: p["length"])
                    packed.append(pending.pop())
                target = {"length": 0, "members": []}
                pending.append(target)
            target["length"] += size[i]
            target["members"].append(i)

    packed, pending = [], []
    for start in range(0, len(order), window):
        place(window_order(order[start : start + window]), packed, pending, open_rows)
    leftover, pending = [i for p in pending for i in p["members"]], []
    place(window_order(leftover), packed, pending, None)
    return [p["members"] for p in packed + pending]


def collator(tokenizer, packing: bool):
    """The collator SFTTrainer builds for itself from the same settings (it refuses a passed-in one when
    packing): padded batches, or one padding-free row with per-document position_ids when packed."""
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
    """The example's text with the tokens that carry a loss wrapped in [[ ]].

    The text is decoded whole and cut where the decoded prefix before each change of marker ends: one token alone
    may be part of a character (byte-level BPE splits emoji and rarer Chinese characters over several tokens) or
    lose its leading space (SentencePiece), so without the markers the preview is exactly tokenizer.decode(ids).
    A character split between a trained and an untrained token shows after the marker, with the tokens ending it.
    """
    ids = example["input_ids"]
    text = tokenizer.decode(ids)
    trained = [label != -100 for _, label in zip(ids, example["labels"], strict=True)]
    pieces, at, inside = [], 0, False
    for i, now in enumerate([*trained, False]):
        if now != inside:
            cut = len(os.path.commonprefix([tokenizer.decode(ids[:i]), text]))  # a split character decodes as U+FFFD
            pieces += [text[at:cut], "[[" if now else "]]"]
            at, inside = cut, now
    return "".join(pieces) + text[at:]


def write_sft_preview(train_set, tokenizer, packing: bool, output_dir: str) -> None:
    """data_preview.jsonl of SFT examples as the collator hands them over; prints the first with its trained tokens."""
    preview = write_preview(train_set, collator(tokenizer, packing), output_dir)
    print("first training example, trained tokens in [[ ]]:\n" + show_example(tokenizer, preview[0]))
