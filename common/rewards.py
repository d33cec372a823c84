"""User functions that score answers, loaded by name: grpo.py's rewards and synth_data.py's verifier.

A reward for grpo.py is the user's `fn(row, completion) -> float or bool`, called as TRL calls rewards.

A reward is named like synth_data.py's verifier ("module:function" or "path/file.py:function") and gets the
prompt's source row (with its reference and any extra fields) and the completion alone: its text, decoded without
the prompt and without special tokens; for a row with tools, the assistant message with its tool_calls, as the
tokenizer's response parser reads it (what synth_data.py's verifier gets). A reward that raises, or returns
something other than a number or a bool, stops the run with one line naming it and the row, on every rank.
"""

import importlib
import importlib.util
import json
import math
import numbers
import os

import numpy as np
import torch.distributed as dist

from common.chat.tools import answer_message, tool_names
from common.errors import UserError


def load_function(spec: str, key: str):
    """The function named by "package.module:function" or "path/to/file.py:function"."""
    module_name, _, name = spec.rpartition(":")
    if not module_name or not name:
        raise UserError(f"{key}={spec!r} must name a function as module:function or path/file.py:function")
    try:
        if module_name.endswith(".py"):
            if not os.path.isfile(module_name):
                raise UserError(f"{key}: file not found: {module_name}")
            loader = importlib.util.spec_from_file_location(os.path.basename(module_name)[:-3], module_name)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"{key}: cannot import {module_name} ({e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"{key}: {module_name} has no function {name}")
    return fn


def load_rewards(specs: list[str], weights: list[float]) -> list:
    """The reward functions, checked before any model loads: each importable, and one weight per reward."""
    if not specs:
        raise UserError("rewards is empty: name at least one function, e.g. data/examples/verify.py:verify")
    if weights and len(weights) != len(specs):
        raise UserError(
            f"reward_weights has {len(weights)} weights for {len(specs)} rewards; give one per reward or none"
        )
    return [load_function(spec, "rewards") for spec in specs]


class Reward:
    """One reward function as a TRL reward function: called with the batch's completions and the dataset's `row`
    and `where` columns, it returns one float per completion."""

    def __init__(self, spec: str, fn, tokenizer):
        self.spec, self.fn, self.tokenizer = spec, fn, tokenizer
        self.__name__ = spec.rpartition(":")[2]  # TRL logs rewards/<name>/mean
        self.parse = getattr(tokenizer, "response_template", None) is not None

    def __call__(self, prompts, completions, completion_ids, row, where, **kwargs) -> list[float]:
        scores, problem = [], None
        for text, ids, source, at in zip(completions, completion_ids, row, where, strict=False):
            if problem:
                break
            source = json.loads(source)
            try:
                value = self.fn(source, self._answer(source, text, ids))
            except Exception as e:  # the user's code: any error is theirs to see, with the row it met
                problem = f"reward {self.spec} raised {type(e).__name__}: {e} (row {at})"
                break
            if not _is_score(value):
                problem = (
                    f"reward {self.spec} returned {type(value).__name__} {value!r:.60} for row {at}; "
                    "it must return a number or a bool"
                )
                break
            scores.append(float(value))
        _stop_everywhere(problem)
        return scores

    def _answer(self, row: dict, text: str, ids) -> str | dict:
        if not row.get("tools"):
            return text
        if not self.parse:
            return {"role": "assistant", "content": text}
        try:
            message = self.tokenizer.parse_response(self.tokenizer.decode(ids, skip_special_tokens=False), prefix="")
        except ValueError:  # a call cut short: the text, which a grader reads as no call
            return {"role": "assistant", "content": text}
        result = {"text": message.get("content") or "", "tool_calls": message.get("tool_calls") or []}
        return answer_message(result, set(tool_names(row["tools"])))


def _is_score(value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return True
    return isinstance(value, numbers.Real) and math.isfinite(float(value))


def _stop_everywhere(problem: str | None) -> None:
    """Raise the first rank's problem on every rank, so no rank is left waiting in the next collective."""
    problems = [problem]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        problems = [None] * dist.get_world_size()
        dist.all_gather_object(problems, problem)
    found = next((p for p in problems if p), None)
    if found:
        raise UserError(found)
