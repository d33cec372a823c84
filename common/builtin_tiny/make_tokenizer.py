#!/usr/bin/env python
"""Train the built-in tiny tokenizer on the shipped example task.

Byte-level BPE (any string encodes), vocabulary ~1,024, one special token
`<|endoftext|>` (bos/eos; no unk). Chat tokens are NOT added here: the training
script adds `<system>`, `<user>`, `<assistant>`, `<eot>` and `<pad>` itself.

Pre-tokenization isolates every run of letters, every run of digits and every
other single character, so a slot value such as `Paris` is the same token(s)
whether it follows a space, a quote or `=` -- copying it from the request into
the call is then a token-for-token copy.

Deterministic. Run from anywhere:

    python common/builtin_tiny/make_tokenizer.py

Writes tokenizer.json and tokenizer_config.json next to this file, plus the
built-in tiny model's config.json (a randomly initialised LlamaConfig whose
vocab_size/bos/eos must match the tokenizer, so both are written together).
"""

import argparse
import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "data" / "examples"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 512

# Built-in tiny model (random init, ~1M parameters). Calibrated on 2 CPU cores:
# tied embeddings and 8 narrow heads learn the slot copying markedly faster.
MODEL_SHAPE = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "tie_word_embeddings": True,
}


def build_pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"\p{L}+|\p{N}+|[^\p{L}\p{N}]"), behavior="isolated"
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


def write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


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
    write_json(args.out_dir / "tokenizer_config.json", config)
    eos_id = tokenizer.token_to_id(EOS)
    model_config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": tokenizer.get_vocab_size(),
        **MODEL_SHAPE,
        "hidden_act": "silu",
        "max_position_embeddings": MODEL_MAX_LENGTH,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "use_cache": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
    }
    write_json(args.out_dir / "config.json", model_config)
    print(f"vocab size {tokenizer.get_vocab_size()} -> {args.out_dir}")


if __name__ == "__main__":
    main()
