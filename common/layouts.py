"""Rows as other tools write them, read into the project's schemas (DESIGN.md "Data") or refused with a reason.

A source's explicit `fields` mapping is applied first and always wins; then each row is read by its shape:
- ShareGPT: message lists of {"from", "value"} turns (`conversations` becomes `messages`, or `prompt` when the row
  also has `chosen` and `rejected`: LLaMA-Factory's preference layout, whose answers are single messages). Roles
  are mapped by SHAREGPT_ROLES; LLaMA-Factory's `function_call` turn becomes an assistant turn of tool calls.
- alpaca: `instruction`, `input`, `output`, optional `system` and `history` ([user, assistant] pairs); the user
  turn is instruction + "\n" + input, as LLaMA-Factory joins them.
- content given as a list of OpenAI text parts, concatenated as the API does; any other part refuses the row.
- a `system` column beside a conversation with no system turn becomes its first turn.
- marks that say whether a turn is trained (axolotl's `weight: 0|1`, its `train` or `training` flag): an assistant
  turn of a chat row marked untrained keeps `train: false`, which common/chat/masks.py reads (no loss on it); a mark
  the script cannot honour (a weight of 0.5, a trained user turn, an untrained preference answer) refuses the row.
An empty assistant turn is removed and counted; one that leaves two user turns side by side refuses the row.

Afterwards (past any row hook) the columns the script does not read are noted, to be named once per source; a
row whose meaning depends on one (a KTO `label` of false, images, an alpaca `input`) is refused unless the
source lists the column under `ignore`. The keys of a chat or preference turn beyond what the scripts read are
named once per source the same way.
"""

import json

from common.errors import RowProblem

# The recipe (script) names whose rows have a schema; any other (synth_data's, a test's) keeps rows whole
SCHEMAS = {
    "sft_chat": "chat",
    "sft_completion": "completion",
    "dpo": "preference",
    "grpo": "prompt",
    "distill": "prompt",
}
# The columns a schema reads; the prompt schema reads them all (grpo hands the whole row to its rewards)
READS = {
    "chat": {"messages", "tools"},
    "completion": {"text", "prompt", "completion"},
    "preference": {"prompt", "chosen", "rejected", "tools"},
}
SHAREGPT_ROLES = {
    **dict.fromkeys(("human", "user", "prompter"), "user"),
    **dict.fromkeys(("gpt", "assistant", "bing", "chatgpt", "bard", "model", "bot"), "assistant"),
    "system": "system",
    **dict.fromkeys(("observation", "tool", "function_response", "ipython"), "tool"),
}
# Columns no script reads (a text model takes no images, audio or video), and the placeholders that refer to them
MEDIA = ("images", "image", "videos", "video", "audios", "audio")
PLACEHOLDERS = {"<image>": ("images", "image"), "<video>": ("videos", "video"), "<audio>": ("audios", "audio")}
LISTS = ("messages", "prompt", "chosen", "rejected")  # the fields that may hold messages
TURN_KEYS = {"role", "content", "tool_calls", "reasoning_content", "name", "tool_call_id"}  # what a turn holds
MARKS = ("weight", "train", "training")  # whether a turn is trained (axolotl: weight, message_field_training)
PARTIAL = "train_detail"  # axolotl: the character spans of a turn that are trained


def read_row(row, spec: dict, schema: str | None) -> tuple[object, dict]:
    """The row in the schema's form and what reading it noted ({"layouts", "roles", "empty_turns", "turn_keys"}); raises
    RowProblem with the reason when the row cannot be read without losing what it means."""
    note = {"layouts": [], "roles": {}, "empty_turns": 0, "turn_keys": []}
    if not isinstance(row, dict):
        return row, note  # the row check refuses it
    fields = spec.get("fields") or {}
    row = dict(row)
    for target, source in fields.items():
        if target not in ("role", "content") and source in row:
            row[target] = row.pop(source)
    has = {k for k, v in row.items() if v is not None}  # a column of an Arrow source is None where a row lacks it
    if "instruction" in has and not has & {"messages", "conversations", "prompt", "text"}:
        row = _alpaca(row, schema)
        note["layouts"].append("alpaca")
    elif "conversations" in has and not has & {"messages", "prompt"}:
        row["prompt" if {"chosen", "rejected"} <= has else "messages"] = row.pop("conversations")
    for key in LISTS:
        value = row.get(key)
        if key in ("chosen", "rejected") and isinstance(value, dict):
            value = [value]  # LLaMA-Factory's preference answer: one message
        if isinstance(value, list):
            row[key] = [_turn(m, f"{key}[{i}]", fields, note) for i, m in enumerate(value)]
    if schema in ("chat", "preference"):
        ignore = set(spec.get("ignore") or ())
        for key in ("messages",) if schema == "chat" else ("prompt", "chosen", "rejected"):
            if isinstance(row.get(key), list):
                row[key] = [_marked(m, key, i, ignore, note) for i, m in enumerate(row[key])]
        note["turn_keys"] = sorted(set(note["turn_keys"]))
    if schema != "completion":
        _system_column(row)
    for key in ("messages", "prompt"):
        if isinstance(row.get(key), list):
            row[key] = _without_empty_answers(row[key], key, note)
    return row, note


def unread_columns(row: dict, schema: str | None) -> list[str]:
    """The columns of a row (as the script gets it) that the script does not read, those with a value."""
    reads = READS.get(schema)
    return sorted(c for c, v in row.items() if v is not None and (c in MEDIA or (reads is not None and c not in reads)))


def unread_problem(row: dict, unread: list[str], ignore) -> str | None:
    """Why the row means something the script would not see, or None; columns in `ignore` (the source's key)
    are the user's to drop."""
    ignore = set(ignore or ())
    for column in (c for c in unread if c not in ignore):
        value = row[column]
        if column in MEDIA and value not in ("", [], {}):
            return (
                f"'{column}' is not empty: a multimodal row, which a text model cannot train on; list '{column}' "
                "under the source's ignore to train on its text alone"
            )
        if column in ("label", "kto_tag") and value is False:
            return (
                f"'{column}' is false (a KTO undesirable example) and this script trains on every answer it reads; "
                f"remove such rows, or list '{column}' under the source's ignore to train on them anyway"
            )
        if column in ("input", "system", "history") and value not in ("", [], {}):
            return (
                f"'{column}' is not empty and this script does not read it, so the row would lose part of its "
                f"prompt; map it with the source's fields, or list '{column}' under its ignore"
            )
    for at, text in _texts(row):
        for placeholder, columns in PLACEHOLDERS.items():
            if placeholder in text and not ignore & set(columns):
                return (
                    f"{at} holds an {placeholder} placeholder: a multimodal row, which a text model cannot train "
                    f"on; list '{columns[0]}' under the source's ignore to train on its text as written"
                )
    return None


def merge_note(summary: dict, note: dict) -> dict:
    """A source's summary (layouts, roles, ignored columns) with one row's note added."""
    return {
        "layouts": sorted({*summary.get("layouts", []), *note.get("layouts", [])}),
        "roles": dict(sorted({**summary.get("roles", {}), **note.get("roles", {})}.items())),
        "ignored_columns": sorted({*summary.get("ignored_columns", []), *note.get("ignored", [])}),
        "ignored_turn_keys": sorted({*summary.get("ignored_turn_keys", []), *note.get("turn_keys", [])}),
    }


def reading_lines(reading: dict) -> list[str]:
    """The lines that say, once per source, how its rows were read and which columns the script ignores."""
    lines = []
    for path, summary in reading.items():
        roles = ", ".join(f"{name} -> {role}" for name, role in summary["roles"].items())
        if summary["layouts"]:
            lines.append(f"{path}: read as {', '.join(summary['layouts'])}" + (f" (roles {roles})" if roles else ""))
        if summary["ignored_columns"]:
            lines.append(f"{path}: ignoring columns {', '.join(summary['ignored_columns'])}")
        if summary.get("ignored_turn_keys"):
            lines.append(f"{path}: ignoring per-turn keys {', '.join(summary['ignored_turn_keys'])}")
    return lines


def _alpaca(row: dict, schema: str | None) -> dict:
    """An alpaca row in the schema's form: a prompt and completion (a completion row keeps system and history as
    columns it does not read), a prompt and answers (preference), or a conversation."""
    for name in ("instruction", "input", "output", "system"):
        if row.get(name) is not None and not isinstance(row[name], str):
            raise RowProblem(f"'{name}' must be a string, got {type(row[name]).__name__}")
    request = "\n".join(part for part in (row.pop("instruction"), row.pop("input", None)) if part)
    if schema == "completion":
        if row.get("output") is not None:
            row["completion"] = row.pop("output")
        return {**row, "prompt": request}
    history = row.pop("history", None) or []
    if not isinstance(history, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair) for pair in history
    ):
        raise RowProblem("'history' must be a list of [user, assistant] pairs")
    system = row.pop("system", None)
    turns = [{"role": "system", "content": system}] if system else []
    for user, assistant in history:
        turns += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    turns.append({"role": "user", "content": request})
    if schema == "preference":
        return {**row, "prompt": request if len(turns) == 1 else turns}
    answer = [{"role": "assistant", "content": row.pop("output")}] if row.get("output") is not None else []
    return {**row, "messages": turns + answer}


def _turn(message, at: str, fields: dict, note: dict):
    """One message as an OpenAI message: a ShareGPT turn mapped (its role noted), text parts joined."""
    if not isinstance(message, dict):
        return message  # the row check refuses it
    role_key = fields.get("role") or ("from" if "from" in message and "role" not in message else "role")
    content_key = fields.get("content") or ("value" if "value" in message and "content" not in message else "content")
    if (role_key, content_key) != ("role", "content"):
        rest = {k: v for k, v in message.items() if k not in (role_key, content_key)}  # a weight, a name
        message = {**rest, **_sharegpt_turn(message.get(role_key), message.get(content_key))}
        if "ShareGPT" not in note["layouts"]:
            note["layouts"].append("ShareGPT")
        name = message.pop("from")
        if name != message["role"]:
            note["roles"][str(name)] = message["role"] + (" with tool calls" if "tool_calls" in message else "")
    if isinstance(message.get("content"), list):
        message = {**message, "content": _joined(message["content"], at)}
        if isinstance(message["content"], str) and "text parts" not in note["layouts"]:
            note["layouts"].append("text parts")
    return message


def _marked(message, key: str, i: int, ignore: set, note: dict):
    """A chat or preference turn with its training marks read (MARKS, PARTIAL; those the source ignores dropped)
    and its other keys noted. Loss is taken on assistant turns only, so a mark can only take it away: from a chat
    turn it does (`train: false` stays on the turn for the mask), from a preference answer (trained whole) it
    cannot, and a mark that trains a system, user or tool turn asks for what no script does; those are refused."""
    if not isinstance(message, dict):
        return message  # the row check refuses it
    message, at = dict(message), f"{key}[{i}]"
    for ignored in [k for k in (*MARKS, PARTIAL) if k in ignore and message.get(k) is not None]:
        del message[ignored]
        note["turn_keys"].append(ignored)
    trained, mark_key, mark = _trained(message, at)
    if message.pop(PARTIAL, None):
        raise RowProblem(
            f"{at} has {PARTIAL}: training part of a turn is not supported; list '{PARTIAL}' under the source's "
            "ignore to train the whole turn"
        )
    note["turn_keys"] += [k for k, v in message.items() if v is not None and k not in TURN_KEYS]
    role, hint = message.get("role"), f"list '{mark_key}' under the source's ignore to train as if unmarked"
    if trained and role in ("system", "user", "tool"):
        raise RowProblem(f"{at} is a {role} turn marked {mark}, and only assistant turns are trained; {hint}")
    if trained is False and role == "assistant" and key in ("chosen", "rejected"):
        raise RowProblem(f"{at} is marked {mark}, and a preference answer is trained whole; {hint}")
    if trained is False and role == "assistant" and key == "messages":
        message["train"] = False
    return message


def _trained(message: dict, at: str) -> tuple[bool | None, str, str]:
    """Whether a turn's marks say it is trained (None: no mark), and the first mark's key and the mark as written
    (`weight: 0`); the marks are taken off the turn. A weight other than 0 or 1, a flag other than true or false,
    and marks that disagree refuse the row."""
    said = {}
    for key in MARKS:
        value = message.pop(key, None)
        if value is None:
            continue
        if key == "weight" and (isinstance(value, bool) or value not in (0, 1)):
            raise RowProblem(
                f"{at} has weight {json.dumps(value)}: a weighted loss is not supported (a turn's weight is 0 or "
                "1); list 'weight' under the source's ignore to train the turn as if unmarked"
            )
        if key != "weight" and not isinstance(value, bool):
            raise RowProblem(
                f"{at} has {key} {json.dumps(value)}: it must be true or false; list '{key}' under the source's "
                "ignore to train the turn as if unmarked"
            )
        said[key] = (bool(value), f"{key}: {json.dumps(value)}")
    if len({trained for trained, _ in said.values()}) > 1:
        marks = ", ".join(mark for _, mark in said.values())
        raise RowProblem(f"{at} has marks that disagree ({marks}); keep one")
    return next(((trained, key, mark) for key, (trained, mark) in said.items()), (None, "", ""))


def _sharegpt_turn(name, content) -> dict:
    """A ShareGPT turn as an OpenAI message (with "from": its name, for the note). A `function_call` turn
    (LLaMA-Factory) holds a JSON call {"name", "arguments"} or a list of them and becomes an assistant turn of tool
    calls; a value that is not JSON stays as it is, for the row check to reject with the row's file and line."""
    if name != "function_call":
        return {"from": name, "role": SHAREGPT_ROLES.get(name, name), "content": content}
    try:
        calls = json.loads(content) if isinstance(content, str) else content
    except json.JSONDecodeError:
        return {"from": name, "role": "assistant", "content": "", "tool_calls": content}
    calls = calls if isinstance(calls, list) else [calls]
    tool_calls = [{"type": "function", "function": c} for c in calls]
    return {"from": name, "role": "assistant", "content": "", "tool_calls": tool_calls}


def _joined(parts: list, at: str):
    """OpenAI content parts as one text when all are text parts; a part of another type refuses the row. Parts
    that are not {type, ...} objects are left for the row check."""
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in (None, "text"):
            raise RowProblem(f"{at} content[{j}] is of type '{kind}': a multimodal row, which a text model cannot read")
        if kind is None or not isinstance(part.get("text"), str):
            return parts
    return "".join(part["text"] for part in parts)


def _system_column(row: dict) -> None:
    """A `system` column (LLaMA-Factory's) as the first turn of the row's conversation or prompt, when that has no
    system turn; otherwise it stays a column the script does not read."""
    system = row.get("system")
    key = "messages" if isinstance(row.get("messages"), list) else "prompt"
    conversation = row.get(key)
    if not isinstance(system, str) or not isinstance(conversation, (list, str)):
        return
    if isinstance(conversation, str):
        conversation = [{"role": "user", "content": conversation}]
    elif conversation and isinstance(conversation[0], dict) and conversation[0].get("role") == "system":
        return
    row.pop("system")
    row[key] = [{"role": "system", "content": system}, *conversation] if system else row[key]


def _blank(content) -> bool:
    """Whether a turn's text is empty to cleaning too (whitespace and zero-width spaces only)."""
    return content is None or (isinstance(content, str) and not content.replace("\u200b", "").strip())


def _without_empty_answers(messages: list, key: str, note: dict) -> list:
    """The messages without assistant turns that hold no text and no calls, counted in the note. Removing one
    between two user turns would leave them side by side, a conversation the data never held: refused. A
    conversation whose every answer is empty is left whole: it has nothing to train, and cleaning drops it under
    that reason (an answer empty after normalisation)."""

    def role(m):
        return m.get("role") if isinstance(m, dict) else None

    def empty(m):
        return role(m) == "assistant" and _blank(m.get("content")) and not m.get("tool_calls")

    if key == "messages" and not any(role(m) == "assistant" and not empty(m) for m in messages):
        return messages
    kept = []
    for i, message in enumerate(messages):
        if empty(message):
            if kept and role(kept[-1]) == "user" and i + 1 < len(messages) and role(messages[i + 1]) == "user":
                raise RowProblem(
                    f"{key}[{i}] is an empty assistant turn between two user turns; write its answer or remove "
                    "the unanswered user turn with it"
                )
            note["empty_turns"] += 1
            continue
        kept.append(message)
    return kept


def _texts(row: dict):
    """(where, text) of every text a script may read in a row."""
    for key in ("text", "completion", *LISTS):
        value = row.get(key)
        if isinstance(value, str):
            yield key, value
        elif isinstance(value, list):
            for i, message in enumerate(value):
                if isinstance(message, dict) and isinstance(message.get("content"), str):
                    yield f"{key}[{i}]", message["content"]
