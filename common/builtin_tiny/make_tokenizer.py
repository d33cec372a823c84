#!/usr/bin/env python
"""Train the built-in tiny tokenizer on the shipped example task.

Byte-level BPE (any string encodes), vocabulary ~1,024, one special token
`<|endoftext|>` (bos/eos; no unk). Chat tokens are NOT added here: the training
script adds `<system>`, `<user>`, `<assistant>`, `<eot>` and `<pad>` itself.

Pre-tokenization isolates every run of letters, every single digit and every
other single character, so a slot value such as `Paris` is the same token(s)
whether it follows a space, a quote or `=` -- copying it from the request into
the call is then a token-for-token copy.

Deterministic. Run from anywhere:

    python common/builtin_tiny/make_tokenizer.py

Writes tokenizer.json and tokenizer_config.json next to this file.
"""

import argparse
import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "data" / "examples"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 512


def build_pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"\p{L}+|\p{N}|[^\p{L}\p{N}]"), behavior="isolated"
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def training_texts():
    for name in ("chat_train.jsonl", "completion_train.jsonl"):
        with open(DATA / name, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if "messages" in row:
                    for message in row["messages"]:
                        yield message["content"]
                else:
                    yield row["prompt"]
                    yield row["completion"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args()

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = build_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_texts(), trainer=trainer)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(args.out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS,
        "eos_token": EOS,
        "model_max_length": MODEL_MAX_LENGTH,
    }
    with open(args.out_dir / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print(f"vocab size {tokenizer.get_vocab_size()} -> {args.out_dir}")


if __name__ == "__main__":
    main()
