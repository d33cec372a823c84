"""The stages of synth_data.py: new requests (self-instruct or Magpie), prompts from rows, judges, pairs.

Judges score each sampled answer of a prompt; higher is better:
    verifier      a Python function named "module:function" or "path/file.py:function", called as
                  fn(row, answer) -> bool or number, where row is the prompt's source row (with its reference)
                  and answer the answer's text, or for a row with tools the assistant message (with its tool_calls)
    llm           a model asked `rubric` (with {prompt} and {answer}); the first number of its reply is the score
    reward_model  an AutoModelForSequenceClassification; its first logit on the conversation is the score
"""

import json
import random
import re

import torch
from datasketch import MinHash, MinHashLSH
from jinja2 import TemplateError
from transformers import AutoModelForSequenceClassification

from common.chat.tools import answer_text, normalize_tools, same_calls
from common.errors import UserError
from common.models import load_tokenizer
from common.prompts import prompt_of

SELF_INSTRUCT = (
    "Here are requests that users sent to an assistant:\n{examples}\n"
    "Write one new request of the same kind, different from all of these. Reply with the request only."
)
MARK = "\u2063USER-TURN\u2063"  # where the user's text would go in a rendered template


def with_tools(tools: list, row: dict) -> dict:
    """A row to write, with the tools its prompt was offered (first, as in the example files) when there are some."""
    return {"tools": tools, **row} if tools else row


def shared_tools(rows: list[dict]) -> list[dict]:
    """The tools of the seed rows when they all list the same ones (as one product's traffic does), so new requests
    can carry them; [] when they differ or there are none."""
    found = {json.dumps(normalize_tools(row.get("tools")), sort_keys=True) for row in rows}
    return json.loads(found.pop()) if len(found) == 1 else []


def last_request(row: dict) -> str:
    return next(m["content"] for m in reversed(prompt_of(row)) if m.get("role") == "user")


def self_instruct_prompts(seeds: list[str], count: int, per_prompt: int, seed: int) -> list[list[dict]]:
    """count prompts, each showing per_prompt seed requests drawn under seed (the same list on every run)."""
    rng = random.Random(seed)
    return [
        [
            {
                "role": "user",
                "content": SELF_INSTRUCT.format(
                    examples="\n".join(f"- {s}" for s in rng.sample(seeds, min(per_prompt, len(seeds))))
                ),
            }
        ]
        for _ in range(count)
    ]


def magpie_prefix(tokenizer, system_prompt: str) -> str:
    """The rendered template up to where a user's text starts: the model then writes the user turn itself."""
    if not tokenizer.chat_template:
        raise UserError("instruction_style=magpie needs a model with a chat template")
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []

    try:
        rendered = tokenizer.apply_chat_template([*messages, {"role": "user", "content": MARK}], tokenize=False)
    except TemplateError as e:
        raise UserError(
            f"instruction_style=magpie: the chat template rejects a system prompt and user turn: {e}"
        ) from None
    return rendered.split(MARK)[0]


def novel(candidates: list[str], seeds: list[str], max_similarity: float, limit: int) -> list[str]:
    """Candidates whose estimated Jaccard similarity (MinHash over word 1- and 2-grams) to every seed and every
    earlier kept candidate is below max_similarity, in order, at most limit of them."""

    def signature(text: str) -> MinHash:
        words = re.findall(r"\w+", text.lower())
        m = MinHash(num_perm=128)
        m.update_batch(
            [w.encode() for w in words] + [f"{a} {b}".encode() for a, b in zip(words, words[1:], strict=False)]
        )
        return m

    lsh = MinHashLSH(threshold=max_similarity, num_perm=128)
    for i, text in enumerate(seeds):
        lsh.insert(f"seed{i}", signature(text), check_duplication=False)
    kept = []
    for i, text in enumerate(candidates):
        text = text.strip()
        if not text or len(kept) >= limit:
            continue
        m = signature(text)
        if not lsh.query(m):
            lsh.insert(f"new{i}", m, check_duplication=False)
            kept.append(text)
    return kept


def reward_scores(model_name: str, asks: list[tuple[list[dict], list, dict]], trust_remote_code: bool) -> list[float]:
    """The reward model's first logit for each (prompt, tools, answer message): the conversation rendered with its
    tools."""

    tokenizer = load_tokenizer(model_name, trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(model_name, trust_remote_code=trust_remote_code).eval()
    scores = []
    with torch.no_grad():
        for prompt, tools, answer in asks:
            conversation = [*prompt, answer]
            if tokenizer.chat_template:
                try:
                    ids = tokenizer.apply_chat_template(
                        conversation, tools=tools or None, return_tensors="pt", return_dict=True
                    )
                except TemplateError as e:
                    raise UserError(f"the reward model's chat template rejects a conversation: {e}") from None
            else:
                ids = tokenizer("\n".join(answer_text(m) for m in conversation), return_tensors="pt")
            scores.append(float(model(**ids).logits[0, 0]))
    return scores


def judge_rubric_reply(reply: str) -> float:
    """The first number in an LLM judge's reply; no number scores lowest."""
    found = re.search(r"-?\d+(?:\.\d+)?", reply)
    return float(found.group()) if found else float("-inf")


def best_and_worst(answers: list[dict], scores: list[float]) -> tuple[dict, dict] | None:
    """(chosen, rejected): the highest- and lowest-scored distinct answer messages, or None when no score is higher
    than another (nothing to prefer)."""
    ranked = sorted(zip(scores, range(len(answers)), strict=False), key=lambda p: (-p[0], p[1]))
    (top, best), (bottom, worst) = ranked[0], ranked[-1]
    chosen, rejected = answers[best], answers[worst]
    same = chosen["content"].strip() == rejected["content"].strip() and same_calls(
        chosen.get("tool_calls") or [], rejected.get("tool_calls") or []
    )
    return None if top <= bottom or same else (chosen, rejected)
