"""Held-out evaluation: exact match of greedy generations against the reference answers.

    python -m common.evaluate outputs/sft_chat/final data/examples/chat_test.jsonl
    python -m common.evaluate outputs/sft_completion/final data/examples/completion_test.jsonl

It loads the folder with plain transformers and stops where the saved generation_config says. Chat rows
are prompted with the saved chat template (`add_generation_prompt=True`); prompt/completion rows with the
prompt formatted by the template that sft_completion.py saved beside the model (or --template).
"""

import argparse
import json
import os
import sys

import torch
from jinja2 import TemplateError

TEMPLATE_FILE = "prompt_template.json"  # written into final/ by sft_completion.py


def read_examples(path: str) -> list[tuple[list[dict] | str, str]]:
    """(prompt, reference) per row: chat rows give the messages before the last assistant turn and that
    turn; prompt/completion rows give the prompt string and the completion."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if "messages" in row:
                    examples.append((row["messages"][:-1], row["messages"][-1]["content"]))
                else:
                    examples.append((row["prompt"], row["completion"]))
    return examples


def saved_template(model_dir: str) -> str:
    path = os.path.join(model_dir, TEMPLATE_FILE)
    if not os.path.isfile(path):
        return "{prompt}"
    with open(path, encoding="utf-8") as f:
        return json.load(f)["template"]


def is_exact_match(answer: str, reference: str) -> bool:
    """The answer, without a leading <think> block (reasoning models write one), equals the reference."""
    from common.reasoning import strip_reasoning

    return strip_reasoning(answer).strip() == reference.strip()


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list, batch_size: int = 64, max_new_tokens: int = 64):
    """Greedy answers; a prompt is a list of messages (chat template) or a string (tokenized as it is)."""
    tokenizer.padding_side = "left"
    model.eval()
    answers = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        if isinstance(chunk[0], str):
            batch = tokenizer(chunk, padding=True, return_tensors="pt")
        else:
            try:
                batch = tokenizer.apply_chat_template(
                    chunk, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
                )
            except TemplateError as e:
                from common.errors import UserError

                raise UserError(f"the saved chat template rejects a held-out prompt: {e}") from None
        batch = batch.to(model.device)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True)  # training turns it off
        answers += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def load_plain(model_dir: str):
    """A saved model in fp32 on this process alone. After a ZeRO-3 run the Trainer's DeepSpeed config is still
    registered, and from_pretrained would partition the model across ranks: collectives that one rank alone
    enters never return."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def exact_match(model_dir: str, data_path: str, show: int = 0, template: str | None = None) -> float:
    """Share of held-out rows whose greedy answer equals the reference (whitespace stripped)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_plain(model_dir)
    template = saved_template(model_dir) if template is None else template
    return exact_match_of(model, tokenizer, read_examples(data_path), show, template)


def exact_match_of(model, tokenizer, examples: list, show: int = 0, template: str = "{prompt}") -> float:
    """exact_match for a model already in memory; examples as read_examples returns them."""
    from common.chat_templates import fold_system, rejects_system

    fold = rejects_system(tokenizer)  # as training folded it (Gemma 1 and 2)
    prompts = [(fold_system(p) if fold else p) if isinstance(p, list) else template.format(prompt=p) for p, _ in examples]
    answers = generate_answers(model, tokenizer, prompts)
    hits = [is_exact_match(a, ref) for a, (_, ref) in zip(answers, examples)]
    for answer, (prompt, ref), hit in list(zip(answers, examples, hits))[:show]:
        shown = prompt[-1]["content"] if isinstance(prompt, list) else prompt
        print(f"{'ok  ' if hit else 'MISS'} {shown!r} -> {answer.strip()!r} (expected {ref!r})")
    return sum(hits) / max(1, len(hits))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("data", nargs="?", default="data/examples/chat_test.jsonl")
    parser.add_argument("--show", type=int, default=5, help="print this many examples")
    parser.add_argument("--template", help=f"prompt format for prompt/completion rows (default: {TEMPLATE_FILE} in model_dir)")
    args = parser.parse_args(argv)
    accuracy = exact_match(args.model_dir, args.data, args.show, args.template)
    print(f"exact match: {accuracy:.1%} on {args.data}")


if __name__ == "__main__":
    sys.exit(main())
