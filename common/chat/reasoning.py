"""Reasoning in assistant turns: `reasoning_content` or a leading `<think>...</think>` block, kept or dropped.

Rows bring reasoning two ways: an assistant message's `reasoning_content` field (the OpenAI/TRL form), or a
`<think>...</think>` block at the start of its content (how R1-style models write it). Both are read into
`reasoning_content`; the chat format then renders it the way its template does (common.chat.template), and
it is trained with the answer. `reasoning="drop"` removes it from every turn before rendering.
"""

import re

THINK_BLOCK = re.compile(r"\A\s*<think>(.*?)</think>\s*", re.S)


def reasoning_problem(message: dict) -> str | None:
    """Why an assistant message's reasoning is unusable, or None."""
    reasoning = message.get("reasoning_content")
    if reasoning is not None and not isinstance(reasoning, str):
        return f"reasoning_content must be a string, got {type(reasoning).__name__}"
    if reasoning and THINK_BLOCK.match(message.get("content") or ""):
        return "has both reasoning_content and a <think> block in its content; keep one"
    return None


def split_reasoning(message: dict) -> tuple[str, str]:
    """(reasoning, answer) of an assistant message; reasoning is "" when there is none."""
    content = message.get("content") or ""
    if message.get("reasoning_content"):
        return message["reasoning_content"], content
    found = THINK_BLOCK.match(content)
    if found:
        return found.group(1), content[found.end() :]
    return "", content


def strip_reasoning(text: str) -> str:
    """A generated answer without its leading think block (what a judge or an exact-match check compares)."""
    return THINK_BLOCK.sub("", text, count=1)


def with_reasoning(messages: list[dict], mode: str) -> list[dict]:
    """Messages as {role, content} (with their tool calls, and a tool result's name and call id) plus
    `reasoning_content` on assistant turns that have some (mode keep), or with every turn's reasoning removed
    (mode drop)."""
    out = []
    for message in messages:
        if message["role"] != "assistant":
            out.append(
                {
                    key: message[key]
                    for key in ("role", "content", "name", "tool_call_id")
                    if key in message and (key in ("role", "content") or message["role"] == "tool")
                }
            )
            continue
        reasoning, answer = split_reasoning(message)
        turn = {"role": "assistant", "content": answer}
        if message.get("tool_calls"):
            turn["tool_calls"] = message["tool_calls"]
        if reasoning.strip() and mode == "keep":
            turn["reasoning_content"] = reasoning.strip("\n")
        out.append(turn)
    return out
