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
import time
from dataclasses import dataclass

import torch
from jinja2 import TemplateError
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from common.chat.reasoning import strip_reasoning
from common.chat.template import fold_system, rejects_system
from common.chat.tools import normalize_message, normalize_tools, same_calls
from common.distributed import is_main
from common.errors import UserError
from common.preference import as_chat, preference_margins

TEMPLATE_FILE = "prompt_template.json"  # written into final/ by sft_completion.py


@dataclass
class Example:
    prompt: list[dict] | str  # the messages before the last assistant turn, or a completion prompt
    reference: str | dict  # the expected answer, or the expected assistant message when it makes tool calls
    tools: list | None = None  # the row's tools, passed to the chat template


def read_examples(path: str, rows: int = 0) -> list[Example]:
    """Chat rows give the messages before the last assistant turn and that turn (its content, or the whole
    message when it calls tools); prompt/completion rows give the prompt string and the completion. rows: the
    first this many (0: all)."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if rows and len(examples) == rows:
                break
            if line.strip():
                row = json.loads(line)
                if "messages" in row:
                    *prompt, last = row["messages"]
                    reference = normalize_message(last) if last.get("tool_calls") else last["content"]
                    examples.append(Example(prompt, reference, normalize_tools(row.get("tools")) or None))
                else:
                    examples.append(Example(row["prompt"], row["completion"]))
    return examples


def saved_template(model_dir: str) -> str:
    path = os.path.join(model_dir, TEMPLATE_FILE)
    if not os.path.isfile(path):
        return "{prompt}"
    with open(path, encoding="utf-8") as f:
        return json.load(f)["template"]


def is_exact_match(answer: str, reference: str) -> bool:
    """The answer, without a leading <think> block (reasoning models write one), equals the reference."""
    return strip_reasoning(answer).strip() == reference.strip()


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    prompts: list,
    batch_size: int = 64,
    max_new_tokens: int = 128,
    tools: list | None = None,
    raw: bool = False,
    stops: list[int] | None = None,
    references: list | None = None,
    answer_tokens: int = 0,
) -> list[str]:
    """Greedy answers; a prompt is a list of messages (chat template, with tools[i] when given) or a string
    (tokenized as it is). raw: keep special tokens (a response parser reads them) up to the end of the turn.
    stops: the ids that end an answer (default: the model's generation_config eos). references (with
    answer_tokens): stop each answer once it can no longer match its reference (HopelessAnswer)."""
    stops = stops or model.generation_config.eos_token_id
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # restored below: training pads on the right
    model.eval()
    texts = [
        p if isinstance(p, str) else _chat_prompt(tokenizer, p, (tools or [None] * len(prompts))[i])
        for i, p in enumerate(prompts)
    ]
    answers = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        batch = tokenizer(
            chunk, padding=True, return_tensors="pt", add_special_tokens=isinstance(prompts[start], str)
        ).to(model.device)
        width = batch["input_ids"].shape[1]
        hopeless = references and [
            HopelessAnswer(tokenizer, references[start:][:batch_size], answer_tokens or max_new_tokens, width, raw)
        ]
        out = model.generate(  # use_cache: training turns it off
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            eos_token_id=stops,
            stopping_criteria=StoppingCriteriaList(hopeless or []),
        )
        for row, ids in enumerate(out[:, width:].tolist()):
            ids = ids[: hopeless[0].stopped.get(row)] if hopeless else ids  # generate pads a stopped row
            answers.append(tokenizer.decode(until_stop(ids, stops), skip_special_tokens=not raw))
    tokenizer.padding_side = side
    return answers


class HopelessAnswer(StoppingCriteria):
    """Stops a row once its answer cannot be graded a hit, so that a base model's prose costs a few tokens, not
    the whole limit: past `budget` tokens after a leading think block (answer_budget), or, for a text reference
    graded as text, once the answer's text without whitespace has stopped being a prefix of the reference's.
    Exact match strips whitespace only, and decoding adds or drops only whitespace where tokens join (a trailing
    U+FFFD is half a character). An answer inside an unclosed think block goes on, up to max_new_tokens."""

    def __init__(self, tokenizer, references: list, budget: int, prompt_length: int, raw: bool):
        self.tokenizer, self.budget, self.prompt_length, self.raw = tokenizer, budget, prompt_length, raw
        self.references = [None if raw or not isinstance(r, str) else "".join(r.split()) for r in references]
        self.stopped = {}  # row -> how many tokens it had generated when it was stopped

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=not self.raw)
        thinking = [_thinking(t.lstrip()) for t in texts]
        answers = [strip_reasoning(t) for t in texts]
        lengths = map(len, self.tokenizer(answers, add_special_tokens=False)["input_ids"])
        hopeless = [
            not think and (length > self.budget or (r is not None and not r.startswith(_bare(answer))))
            for think, length, answer, r in zip(thinking, lengths, answers, self.references, strict=True)
        ]
        generated = input_ids.shape[1] - self.prompt_length
        self.stopped = {row: generated for row, stop in enumerate(hopeless) if stop} | self.stopped
        return torch.tensor(hopeless, dtype=torch.bool, device=input_ids.device)


def _thinking(text: str) -> bool:
    """Inside a think block that exact match strips first (or its opening tag, part written)."""
    return text.startswith("<think>") and "</think>" not in text or "<think>".startswith(text)


def _bare(text: str) -> str:
    return "".join(text.split()).rstrip("\ufffd")


def until_stop(ids: list[int], stops) -> list[int]:
    """Generated ids up to and with the first stop token (an id or a list of them, as generation_config.eos_token_id
    holds); what follows in a batch is padding."""
    stops = set(stops if isinstance(stops, list) else [stops])
    return ids[: next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))]


def _chat_prompt(tokenizer, messages: list[dict], tools: list | None) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    except TemplateError as e:
        raise UserError(f"the saved chat template rejects a held-out prompt: {e}") from None


def load_plain(model_dir: str):
    """A saved model in fp32 on this process alone. After a ZeRO-3 run the Trainer's DeepSpeed config is still
    registered, and from_pretrained would partition the model across ranks: collectives that one rank alone
    enters never return."""
    unset_hf_deepspeed_config()
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def exact_match(model_dir: str, data_path: str, show: int = 0, template: str | None = None) -> float:
    """Share of held-out rows whose greedy answer equals the reference (whitespace stripped)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_plain(model_dir)
    template = saved_template(model_dir) if template is None else template
    return exact_match_of(model, tokenizer, read_examples(data_path), show, template)


def exact_match_of(
    model, tokenizer, examples: list[Example], show: int = 0, template: str = "{prompt}", stops: list[int] | None = None
) -> float:
    """exact_match for a model already in memory; a tool-call answer must name the same functions, in order,
    with arguments equal as JSON values (read back with the tokenizer's response parser). Rows that call tools
    print their accuracy per function."""
    fold = rejects_system(tokenizer)  # as training folded it (Gemma 1 and 2)
    prompts = [
        (fold_system(e.prompt) if fold else e.prompt)
        if isinstance(e.prompt, list)
        else template.format(prompt=e.prompt)
        for e in examples
    ]
    calls = any(isinstance(e.reference, dict) for e in examples)
    if calls and getattr(tokenizer, "response_template", None) is None:
        raise UserError(
            "the held-out rows call tools, but the saved tokenizer has no response_template to read "
            "calls back with (transformers' parse_response)"
        )
    answers = generate_answers(
        model,
        tokenizer,
        prompts,
        tools=[e.tools for e in examples],
        raw=calls,
        stops=stops,
        references=[e.reference for e in examples],
        answer_tokens=answer_budget(tokenizer, prompts, examples),
    )
    hits = [_hit(tokenizer, answer, e, calls) for answer, e in zip(answers, examples, strict=False)]
    if show and not all(hits[:show]):
        print("(a miss is shown up to where it could no longer match)")
    for answer, e, hit in list(zip(answers, examples, hits, strict=False))[:show]:
        shown = e.prompt[-1]["content"] if isinstance(e.prompt, list) else e.prompt
        print(f"{'ok  ' if hit else 'MISS'} {shown!r} -> {answer.strip()!r} (expected {_shown(e.reference)!r})")
    if calls:
        by_function = {}
        for e, hit in zip(examples, hits, strict=False):
            name = (
                " + ".join(c["function"]["name"] for c in e.reference["tool_calls"])
                if isinstance(e.reference, dict)
                else "(no call)"
            )
            by_function.setdefault(name, []).append(hit)
        for name, results in sorted(by_function.items()):
            print(f"  {name}: {sum(results) / len(results):.1%} of {len(results)}")
    return sum(hits) / max(1, len(hits))


def answer_budget(tokenizer, prompts: list, examples: list[Example], most: int = 128, slack: int = 16) -> int:
    """Tokens an answer may take after a leading think block: one much longer than the longest reference cannot
    match it, so the longest reference plus `slack` tokens (whitespace, another split), at most `most`. A call
    counts as the template renders it, twice over (other spellings of the same arguments); one the template does
    not render after the prompt leaves `most`."""
    longest = max(_reference_tokens(tokenizer, p, e, most) for p, e in zip(prompts, examples, strict=True))
    return min(most, longest + slack)


def _reference_tokens(tokenizer, prompt, example: Example, most: int) -> int:
    if isinstance(example.reference, str):
        return len(tokenizer(example.reference.strip(), add_special_tokens=False)["input_ids"])
    try:
        start = tokenizer.apply_chat_template(prompt, tools=example.tools, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template([*prompt, example.reference], tools=example.tools, tokenize=False)
    except TemplateError:
        return most
    if not full.startswith(start):
        return most
    return 2 * len(tokenizer(full[len(start) :], add_special_tokens=False)["input_ids"])


def _hit(tokenizer, answer: str, example: Example, parse: bool) -> bool:
    """Whether a generated answer matches the reference: its text, or (parse) the message the tokenizer's
    response parser reads from it, whose calls must equal the reference's."""
    if not parse:
        return is_exact_match(answer, example.reference)
    parsed = _parsed(tokenizer, answer)
    if parsed is None:
        return False
    if isinstance(example.reference, str):
        return not parsed.get("tool_calls") and is_exact_match(parsed.get("content") or "", example.reference)
    return same_calls(parsed.get("tool_calls") or [], example.reference["tool_calls"])


def _parsed(tokenizer, answer: str) -> dict | None:
    """The answer as an assistant message, or None when it does not parse (a broken call is a miss)."""
    try:
        return tokenizer.parse_response(answer, prefix="")
    except ValueError:
        return None


def _shown(reference) -> str:
    if isinstance(reference, str):
        return reference
    return "; ".join(
        f"{c['function']['name']}({json.dumps(c['function']['arguments'], ensure_ascii=False)})"
        for c in reference["tool_calls"]
    )


def held_out(
    stage: str,
    model,
    tokenizer,
    exact_match_data: str,
    template: str = "{prompt}",
    stops: list[int] | None = None,
    show: int = 0,
    preferences: tuple = ("", None),
    before: dict | None = None,
    rows: int = 0,
) -> dict:
    """Every script's before/after line, on the main process: held-out exact match of greedy answers on
    exact_match_data ("" skips it) and, for dpo.py, preferences = (pair file, chat spec): the share of held-out pairs
    whose chosen answer the model gives more log-probability than the rejected one, and after training (with the
    `before` results) the share whose margin grew. Returns the results for a later `before`. model may be the
    folder of a saved model (final/), loaded only when there is something to evaluate. rows: the first this many
    rows of each file (0: all), to keep evaluation cheap next to training on a real model."""
    path, chat = preferences
    if not is_main() or not (path or exact_match_data):
        return {}
    if isinstance(model, str):
        model = load_plain(model)
    if torch.cuda.is_available():
        model = model.to("cuda")
    results = {}
    if path:
        with open(path, encoding="utf-8") as f:
            pairs = [as_chat(json.loads(line), chat is not None) for line in f if line.strip()]
        start = time.perf_counter()
        margins = results["margins"] = preference_margins(model, tokenizer, pairs[: rows or None], chat)
        line = f"{stage}: held-out preference accuracy {sum(m > 0 for m in margins) / len(margins):.1%}"
        if before and before.get("margins"):
            grew = sum(a > b for a, b in zip(margins, before["margins"], strict=True)) / len(margins)
            line += f", reward accuracy {grew:.1%} (margin grew)"
        print(f"{line} on {path} ({len(margins)} pairs, {time.perf_counter() - start:.0f} s)", flush=True)
    if exact_match_data:
        examples, start = read_examples(exact_match_data, rows), time.perf_counter()
        accuracy = results["exact_match"] = exact_match_of(model, tokenizer, examples, show, template, stops)
        seconds = time.perf_counter() - start  # printed so that its cost next to training's is plain
        line = f"{stage}: held-out exact match {accuracy:.1%} on {exact_match_data}"
        print(f"{line} ({len(examples)} rows, {seconds:.0f} s)", flush=True)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("data", nargs="?", default="data/examples/chat_test.jsonl")
    parser.add_argument("--show", type=int, default=5, help="print this many examples")
    parser.add_argument(
        "--template", help=f"prompt format for prompt/completion rows (default: {TEMPLATE_FILE} in model_dir)"
    )
    args = parser.parse_args(argv)
    accuracy = exact_match(args.model_dir, args.data, args.show, args.template)
    print(f"exact match: {accuracy:.1%} on {args.data}")


if __name__ == "__main__":
    sys.exit(main())
