"""Which batching is fastest for chat SFT on this machine: padded random, padded length-grouped, or packed.

    python bench/batching_cpu.py                      # the example task, built-in tiny model, 1 epoch each
    python bench/batching_cpu.py --epochs 10 --strategies random,grouped --exact_match
    python bench/batching_cpu.py --long_tail 400      # 400 synthetic chats, log-normal lengths (median ~220)

Each strategy trains the same model from the same initialisation on the same rows with TRL's
SFTTrainer and sft_chat.py's optimiser settings; the script prints wall seconds of training, the
padding share and, with --exact_match, held-out exact match. "packed" is what sft_chat.py does:
rows packed in random order, each document attending to itself only (common/attention.py).
bench/sft_vs_trl.py compares the whole script with plain TRL.
"""

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from common.attention import use_varlen_attention  # noqa: E402
from common.batching import pack_in_random_order  # noqa: E402
from common.chat.masks import tokenize_chat  # noqa: E402
from common.chat.tokenizer import prepare_tokenizer  # noqa: E402
from common.evaluate import generate_answers, is_exact_match, read_examples  # noqa: E402
from common.models import load_model, load_tokenizer, resize_embeddings  # noqa: E402


def long_tail_chats(n: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    words = [
        "the",
        "a",
        "call",
        "weather",
        "timer",
        "city",
        "message",
        "music",
        "event",
        "send",
        "play",
        "set",
        "add",
        "when",
        "where",
        "how",
    ]
    chats = []
    for _ in range(n):
        length = min(1200, max(8, int(rng.lognormvariate(5.2, 0.6))))
        user = " ".join(rng.choice(words) for _ in range(length // 3))
        answer = " ".join(rng.choice(words) for _ in range(length - length // 3))
        chats.append([{"role": "user", "content": user}, {"role": "assistant", "content": answer}])
    return chats


def run(strategy: str, chats, max_length: int, batch_size: int, epochs: float, exact_match: bool) -> dict:
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer("builtin:tiny")
    chat = prepare_tokenizer(tokenizer, "special_tokens")
    new_ids = chat.new_token_ids
    packing = strategy == "packed"
    from datasets import Dataset

    rows = [
        {"input_ids": ids[:max_length], "labels": labels[:max_length]}
        for ids, labels in (tokenize_chat(tokenizer, c, spec=chat) for c in chats)
    ]
    dataset = Dataset.from_list(pack_in_random_order(rows, max_length, 0) if packing else rows)
    model = load_model("builtin:tiny", "float32", seed=0)
    resize_embeddings(model, tokenizer, new_ids, pretrained=False)
    if packing:
        use_varlen_attention(model)
    args = SFTConfig(
        output_dir="/tmp/bench_batching",
        per_device_train_batch_size=batch_size,
        num_train_epochs=epochs,
        learning_rate=6e-3,
        adam_beta2=0.95,
        warmup_steps=0.05,
        lr_scheduler_type="cosine",
        seed=42,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        gradient_checkpointing=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=max_length,
        packing=packing,
        padding_free=packing,
        disable_tqdm=True,
        train_sampling_strategy="group_by_length" if strategy == "grouped" else "random",
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    real = sum(len(row["input_ids"]) for row in rows)
    padded = sum(b["input_ids"].numel() for b in trainer.get_train_dataloader())
    start = time.perf_counter()
    trainer.train()
    result = {
        "strategy": strategy,
        "epochs": epochs,
        "train_s": round(time.perf_counter() - start, 1),
        "rows": len(rows),
        "tokens": real,
        "padding_share": round(1 - real / padded, 3),
    }
    if exact_match:
        examples = read_examples("data/examples/chat_test.jsonl")
        model.config.use_cache = True
        answers = generate_answers(model, tokenizer, [e.prompt for e in examples])
        result["exact_match"] = sum(
            is_exact_match(a, e.reference) for a, e in zip(answers, examples, strict=False)
        ) / len(examples)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--long_tail", type=int, default=0, help="synthetic long-tailed chats instead of the example")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--strategies", default="random,grouped,packed")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--exact_match", action="store_true", help="held-out exact match after training")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    if args.long_tail:
        chats, max_length = long_tail_chats(args.long_tail), 1024
    else:
        with open("data/examples/chat_train.jsonl", encoding="utf-8") as f:
            chats, max_length = [json.loads(line)["messages"] for line in f], 512
    for strategy in args.strategies.split(","):
        result = run(strategy, chats, max_length, args.batch_size, args.epochs, args.exact_match)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
