"""Function calling in chat rows (the OpenAI / TRL message format): tools, assistant tool calls, tool results.

A row may carry `tools`: a list of `{"type": "function", "function": {"name", "description", "parameters"}}` (or
bare function dicts, or that list as a JSON string). Assistant turns may carry `tool_calls`
(`[{"type": "function", "id"?, "function": {"name", "arguments"}}]`, arguments a dict or a JSON string) next to
or instead of `content`, and `{"role": "tool", "content", "name"?, "tool_call_id"?}` turns hold the results.
`tools_problem` and `call_problem` say why a row is unusable; `normalize_tools` and `normalize_message` give the
one form every chat format renders (arguments as dicts, content a string).
"""

import json
import re

# A name renders bare in our call syntax (`<call>name{...}`), so it must not hold what ends it.
NAME = re.compile(r"[^\s{}<>]+")


def normalize_tools(tools) -> list[dict]:
    """The row's tools as `{"type": "function", "function": {...}}` dicts; [] when the row has none.
    Call only after tools_problem(tools) is None."""
    if isinstance(tools, str):
        tools = json.loads(tools) if tools.strip() else []
    return [tool if "function" in tool else {"type": "function", "function": tool} for tool in tools or []]


def tools_problem(tools) -> str | None:
    """Why a row's `tools` is unusable, or None."""
    if isinstance(tools, str) and tools.strip():
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            return f"'tools' is a string but not valid JSON ({e.msg})"
    if tools is None or tools == "":
        return None
    if not isinstance(tools, list):
        return f"'tools' must be a list of function schemas, got {type(tools).__name__}"
    for i, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return f'tools[{i}] must be {{"type": "function", "function": {{"name", "parameters"}}}}'
        if not NAME.fullmatch(function["name"]):
            return f"tools[{i}] name {function['name']!r} must be non-empty, without spaces, braces or angle brackets"
        if not isinstance(function.get("parameters", {}), dict):
            return f"tools[{i}] ({function['name']}) parameters must be a JSON schema object"
    return None


def tool_names(tools) -> list[str]:
    return [tool["function"]["name"] for tool in normalize_tools(tools)]


def arguments_of(call: dict) -> dict:
    """A call's arguments as a dict (they may come as a JSON string). Call only after call_problem is None."""
    arguments = call["function"].get("arguments")
    if isinstance(arguments, str):
        return json.loads(arguments) if arguments.strip() else {}
    return arguments or {}


def call_problem(call, names: set | None) -> str | None:
    """Why one tool call is unusable, or None; names are the row's tool names (None: not checked)."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        return 'must be {"type": "function", "function": {"name", "arguments"}}'
    name, arguments = function["name"], function.get("arguments")
    if names is not None and name not in names:
        return f"calls {name!r}, which is not in the row's tools" + ("" if names else " (the row has no tools)")
    if not NAME.fullmatch(name):
        return f"function name {name!r} must be non-empty, without spaces, braces or angle brackets"
    if isinstance(arguments, str) and arguments.strip():
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            return f"arguments of {name!r} are not valid JSON ({e.msg})"
    if arguments not in (None, "") and not isinstance(arguments, dict):
        return f"arguments of {name!r} must be a JSON object, got {type(arguments).__name__}"
    return None


def normalize_message(message: dict) -> dict:
    """A checked message in the form templates render: content a string, tool calls with dict arguments."""
    out = {**message, "content": message.get("content") or ""}
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {
                "type": "function",
                **({"id": c["id"]} if c.get("id") else {}),
                "function": {"name": c["function"]["name"], "arguments": arguments_of(c)},
            }
            for c in message["tool_calls"]
        ]
    else:
        out.pop("tool_calls", None)
    return out


def map_strings(call: dict, fn) -> dict:
    """A checked call with fn applied to every string in its arguments (which come back as a dict)."""

    def walk(value):
        if isinstance(value, str):
            return fn(value)
        if isinstance(value, list):
            return [walk(v) for v in value]
        return {k: walk(v) for k, v in value.items()} if isinstance(value, dict) else value

    return {**call, "function": {**call["function"], "arguments": walk(arguments_of(call))}}


def calls_text(calls: list[dict]) -> list[str]:
    """What of each call must appear in the trained tokens, whatever a template's syntax: its name and its string
    argument values."""
    texts = []
    for call in calls:
        texts.append(call["function"]["name"])
        # a value with characters JSON (or our call syntax) escapes may show either way: only plain ones are looked for
        texts += [
            v
            for v in arguments_of(call).values()
            if isinstance(v, str) and v.strip() and json.dumps(v)[1:-1] == v and not set(v) & set(",{<")
        ]
    return texts


def same_calls(answer: list[dict], reference: list[dict]) -> bool:
    """Whether two lists of calls name the same functions, in order, with arguments equal as JSON values."""
    return [(c["function"]["name"], arguments_of(c)) for c in answer] == [
        (c["function"]["name"], arguments_of(c)) for c in reference
    ]


def answer_message(result: dict, names: set) -> dict:
    """A backend's result as the assistant message to write. Calls the row cannot hold (arguments that are not a
    JSON object, a function not among names, the row's tools) are kept as text after the answer's, so every written
    row passes the checks and a judge still sees what the model wrote."""
    message, calls = {"role": "assistant", "content": result["text"].strip()}, result.get("tool_calls") or []
    if calls and not any(call_problem(call, names) for call in calls):
        return normalize_message({**message, "tool_calls": calls})
    return {**message, "content": answer_text({**message, "tool_calls": calls})}


def answer_text(message: dict) -> str:
    """A message as one text (for judges that read text): its content, then each call as name{arguments}."""

    def call_text(call):
        arguments = call["function"].get("arguments") or {}
        return call["function"]["name"] + (
            arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        )

    return "\n".join([message.get("content") or "", *map(call_text, message.get("tool_calls") or [])]).strip()
