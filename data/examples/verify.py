"""Grader for the example function-calling task: exact string match, or for rows with tools, the right calls.

synth_data.py uses it as its verifier: verifier="data/examples/verify.py:verify". grpo.py's reward is verify, or
partial_credit, which also scores a near miss (the right function, some of its arguments).
"""

import ast

from common.chat.tools import arguments_of, call_problem, same_calls, tool_names


def exact_match(prediction: str, reference: str) -> bool:
    """True when the prediction equals the reference call, ignoring surrounding whitespace."""
    return prediction.strip() == reference.strip()


def verify(row: dict, answer: str | dict) -> bool:
    """synth_data.py's verifier: is the answer the row's reference (its last assistant turn, or its completion)?
    For a row with tools the answer is the assistant message, graded by tool_answer_ok."""
    if isinstance(answer, dict):
        return tool_answer_ok(row, answer)
    return exact_match(answer, _reference(row))


def partial_credit(row: dict, answer: str | dict) -> float:
    """A reward with credit for near misses: 1.0 for the reference (verify), else for an answer that parses as a call,
    0.25 for the reference's function name plus 0.5 x the share of the reference's and the answer's arguments that
    agree; 0.0 for anything else. A group of sampled answers that all miss still ranks the closer ones higher, so
    fewer groups have no reward spread to learn from (BENCHMARKS.md, "A real model")."""
    if verify(row, answer):
        return 1.0
    if isinstance(answer, dict):
        return 0.0
    got, want = _call(answer), _call(_reference(row))
    if got is None or want is None:
        return 0.0
    agree = sum(got[1].get(key, object()) == value for key, value in want[1].items())
    return 0.25 * (got[0] == want[0]) + 0.5 * agree / max(1, len(want[1]), len(got[1]))


def _reference(row: dict) -> str:
    """The reference answer of a row without tools: its last assistant turn, or its completion."""
    return row["messages"][-1]["content"] if "messages" in row else row["completion"]


def _call(text: str) -> tuple[str, dict] | None:
    """name(key=literal, ...) as (name, {key: value}), or None when the text is not one such call."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
            return None
        return node.func.id, {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except (SyntaxError, ValueError, TypeError, RecursionError):
        return None


def tool_answer_ok(row: dict, answer: dict) -> bool:
    """The answer makes the reference's calls (same functions in order, arguments equal as JSON values), or answers a
    text reference with that text and no call. A row with no reference (a request alone, as synth_data.py's
    instructions stage writes) needs at least one call, each to one of the row's tools and with every string
    argument copied verbatim from the request: the example task's slot values are always the request's words."""
    calls, conversation = answer.get("tool_calls") or [], _conversation(row)
    reference = conversation[-1]
    if reference["role"] == "assistant":
        if reference.get("tool_calls"):
            return same_calls(calls, reference["tool_calls"])
        return not calls and exact_match(answer.get("content") or "", reference["content"])
    request = next(m["content"] for m in reversed(conversation) if m["role"] == "user")
    names = set(tool_names(row.get("tools")))
    return bool(calls) and all(
        call_problem(call, names) is None
        and all(value in request for value in arguments_of(call).values() if isinstance(value, str))
        for call in calls
    )


def _conversation(row: dict) -> list[dict]:
    """The row as messages: a chat row's, or its prompt (a string is a user turn) and its completion, if any."""
    if "messages" in row:
        return row["messages"]
    prompt = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
    return prompt + ([{"role": "assistant", "content": row["completion"]}] if "completion" in row else [])
