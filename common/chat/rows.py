"""Checks of chat rows: roles, content, tool calls against the row's tools, tool results after calls, reasoning."""

from common.chat.own_format import ROLE_TOKENS
from common.chat.reasoning import reasoning_problem
from common.chat.tools import call_problem, tool_names, tools_problem


def chat_row_problem(row: dict) -> str | None:
    """Why a chat row ({"messages", "tools"?}) is unusable, or None when it is fine."""
    if "messages" not in row:
        return "row has no 'messages' field"
    problem = tools_problem(row.get("tools"))
    return problem or validate_messages(row["messages"], set(tool_names(row.get("tools"))))


def validate_messages(messages, tool_names: set | None = None) -> str | None:
    """Why a conversation is unusable, or None when it is fine. tool_names: the functions its calls may name
    (None: calls are not checked against a schema, as for a generated answer scored later)."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    call_ids = None  # ids of the calls the latest assistant turn made; None: a tool result cannot come here
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] must be an object with role and content"
        role, content, calls = message.get("role"), message.get("content"), message.get("tool_calls")
        if role not in ROLE_TOKENS:
            return f"messages[{i}] has unknown role {role!r} (expected system, user, assistant or tool)"
        if calls is not None and (role != "assistant" or not isinstance(calls, list)):
            return f"messages[{i}] tool_calls must be a list on an assistant turn, got {type(calls).__name__} on {role}"
        if not isinstance(content, str) and not (role == "assistant" and content is None and calls):
            return f"messages[{i}] content must be a string, got {type(content).__name__}"
        for j, call in enumerate(calls or []):
            problem = call_problem(call, tool_names)
            if problem:
                return f"messages[{i}] tool_calls[{j}] {problem}"
        problem = reasoning_problem(message) if role == "assistant" else None
        if problem:
            return f"messages[{i}] {problem}"
        if role == "tool":
            if call_ids is None:
                return f"messages[{i}] is a tool result with no assistant tool call before it"
            if message.get("tool_call_id") and call_ids and message["tool_call_id"] not in call_ids:
                return f"messages[{i}] answers tool_call_id {message['tool_call_id']!r}, which no call before it has"
        else:
            call_ids = {c.get("id") for c in calls} - {None} if calls else None
    if not any(m["role"] == "assistant" for m in messages):
        return "conversation has no assistant turn"
    return None
