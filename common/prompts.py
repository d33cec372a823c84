"""Prompt rows for grpo.py and synth_data.py: what a row must hold, and its prompt rendered as the model will read it.

A row is a chat row whose last assistant turn is the reference (left out of the prompt) or a {"prompt", ...} row (a
string or a list of messages) with any fields the rewards read; a row's `tools` are rendered with its prompt. The
prepared example keeps the row itself, so each reward sees the row its prompt came from.
"""

import json
import os
from functools import partial

from jinja2 import TemplateError

from common.chat.rows import validate_messages
from common.chat.template import fold_system, rejects_system, render
from common.chat.tools import normalize_tools, tool_names, tools_problem
from common.errors import Dropped, RowProblem, UserError
from common.evaluate import saved_template
from common.prepare import Recipe, prepare

ANSWER = {"role": "assistant", "content": ""}  # stands for the answer to come where a check wants an assistant turn


def prompt_of(row: dict, system_prompt: str = "") -> list[dict]:
    """The messages a model answers: a chat row without its last assistant turn (that is the reference), or
    a prompt string or message list; system_prompt is put first when the row has none."""
    if "messages" in row:
        messages = list(row["messages"])
        if messages and messages[-1].get("role") == "assistant":
            messages = messages[:-1]
    elif isinstance(row.get("prompt"), list):
        messages = list(row["prompt"])
    else:
        messages = [{"role": "user", "content": str(row.get("prompt", ""))}]
    if system_prompt and messages[0].get("role") != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def prompt_problem(row) -> str | None:
    """Why a row cannot give a prompt, or None. Its messages follow the chat rules (calls, a reference's too, name
    the row's tools; a tool result follows a call) and the prompt ends with a user turn or a tool result."""
    if not isinstance(row, dict):
        return "row must be a JSON object"
    if "messages" not in row and "prompt" not in row:
        return "row has neither 'messages' nor 'prompt'"
    problem = tools_problem(row.get("tools"))
    if problem:
        return problem
    conversation = row["messages"] if "messages" in row else prompt_of(row)
    if not isinstance(conversation, list):
        return "'messages' must be a list of messages"
    # a request-only row has no assistant turn: the answer to come stands in (harmless after a reference)
    problem = validate_messages([*conversation, ANSWER], set(tool_names(row.get("tools"))))
    if problem:
        return problem
    last = (prompt_of(row) or [{}])[-1]
    if last.get("role") != "tool" and not (last.get("role") == "user" and last["content"].strip()):
        return "the prompt must end with a non-empty user turn or a tool result"
    return None


def prompt_example(tokenizer, template: str, fold: bool, max_prompt_tokens: int, row: dict) -> tuple[list[dict], dict]:
    """The row's prompt: its messages through the chat template with a generation prompt (the row's tools with them),
    or, for a model without a chat template, its prompt string in `template`. A prompt longer than
    max_prompt_tokens is left out (cutting it would change the question) and counted."""
    if tokenizer.chat_template:
        messages = prompt_of(row)
        try:
            text = render(
                tokenizer,
                fold_system(messages) if fold else messages,
                generation_prompt=True,
                tools=normalize_tools(row.get("tools")),
            )
        except TemplateError as e:
            raise RowProblem(f"the chat template rejects the prompt: {e}") from None
    elif isinstance(row.get("prompt"), str):
        text = template.format(prompt=row["prompt"])
    else:
        raise RowProblem("the model has no chat template, so a row needs a 'prompt' string")
    length = len(tokenizer(text, add_special_tokens=not tokenizer.chat_template)["input_ids"])
    if length > max_prompt_tokens:
        raise Dropped(f"prompt longer than max_length - max_completion_length = {max_prompt_tokens} tokens")
    return [{"prompt": text, "row": json.dumps(row, ensure_ascii=False)}], {"prompt_tokens": length}


def prepared_prompts(params: dict, script: str, keys: tuple, model: str, tokenizer, report, row_hook=None):
    """The prompts of a run that generates (grpo.py, distill.py): params["data"] checked, cleaned and rendered once
    with model's chat template (its prompt_template.json without one) and each row's tools, in Arrow on every core
    (common/prepare.py); each keeps its source row. Returns (prompts, the prompt template). No prompt left, or no
    room for one beside max_completion_length, is one line."""
    max_prompt = params["max_length"] - params["max_completion_length"]
    if max_prompt < 1:
        raise UserError(
            f"max_length={params['max_length']} leaves no room for a prompt beside "
            f"max_completion_length={params['max_completion_length']}"
        )
    template = saved_template(model)
    examples = partial(prompt_example, tokenizer, template, rejects_system(tokenizer), max_prompt)
    recipe = Recipe(script, prompt_problem, examples, hook=row_hook, columns=("prompt", "row", "where"), keys=keys)
    prompts = prepare({**params, "model": model, "eval_data": []}, recipe, tokenizer, report).train
    if not len(prompts):
        reasons = ", ".join(f"{reason}: {n}" for reason, n in report.dropped.items())
        raise UserError(f"no prompts left in data ({reasons or 'none given'})")
    report.counts["train_prompts"] = len(prompts)
    return prompts, template


def write_prompt_preview(tokenizer, prompts, output_dir: str, n: int = 16) -> None:
    """data_preview.jsonl: the first n prompts as the trainer reads them, with the rows the rewards get."""
    with open(os.path.join(output_dir, "data_preview.jsonl"), "w", encoding="utf-8") as f:
        for example in prompts.select(range(min(n, len(prompts)))):
            ids = tokenizer(example["prompt"], add_special_tokens=not tokenizer.chat_template)["input_ids"]
            f.write(
                json.dumps({**example, "row": json.loads(example["row"]), "prompt_ids": ids}, ensure_ascii=False) + "\n"
            )
    if len(prompts):
        print(f"first prompt ({len(prompts)} prompts):\n{prompts[0]['prompt']}", flush=True)
