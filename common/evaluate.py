"""Held-out evaluation: exact match of greedy generations against the reference answers.

    python -m common.evaluate outputs/sft_chat/final data/examples/chat_test.jsonl

It loads the folder with plain transformers, prompts with the saved chat template
(`add_generation_prompt=True`) and stops where the saved generation_config says.
"""

import argparse
import json
import sys

import torch


def read_examples(path: str) -> list[tuple[list[dict], str]]:
    """(prompt messages, reference answer) per chat row: the reference is the last assistant turn."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                messages = json.loads(line)["messages"]
                examples.append((messages[:-1], messages[-1]["content"]))
    return examples


def is_exact_match(answer: str, reference: str) -> bool:
    return answer.strip() == reference.strip()


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[list[dict]], batch_size: int = 64, max_new_tokens: int = 64):
    tokenizer.padding_side = "left"
    model.eval()
    answers = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer.apply_chat_template(
            prompts[start : start + batch_size],
            add_generation_prompt=True,
            padding=True,
            return_tensors="pt",
            return_dict=True,
        ).to(model.device)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        answers += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def exact_match(model_dir: str, data_path: str, show: int = 0) -> float:
    """Share of held-out rows whose greedy answer equals the reference (whitespace stripped)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    examples = read_examples(data_path)
    answers = generate_answers(model, tokenizer, [p for p, _ in examples])
    hits = [is_exact_match(a, ref) for a, (_, ref) in zip(answers, examples)]
    for answer, (prompt, ref), hit in list(zip(answers, examples, hits))[:show]:
        print(f"{'ok  ' if hit else 'MISS'} {prompt[-1]['content']!r} -> {answer.strip()!r} (expected {ref!r})")
    return sum(hits) / max(1, len(hits))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("data", nargs="?", default="data/examples/chat_test.jsonl")
    parser.add_argument("--show", type=int, default=5, help="print this many examples")
    args = parser.parse_args(argv)
    accuracy = exact_match(args.model_dir, args.data, args.show)
    print(f"exact match: {accuracy:.1%} on {args.data}")


if __name__ == "__main__":
    sys.exit(main())
