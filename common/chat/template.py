"""How a chat template renders rows: the rules a template follows (ChatSpec), found by rendering probe
conversations (system turns, reasoning, tools), and messages put in the form it renders."""

import json
from dataclasses import dataclass, field

from jinja2 import TemplateError
from trl.chat_template_utils import has_generation_markers

from common.errors import RowProblem

FIX = "set chat_template=path/to/template.jinja (with {% generation %} markers) or chat_format=special_tokens"


MARK = "zq-reasoning-probe-zq"


_SYSTEM = {"role": "system", "content": "You are brief."}


_TURNS = [
    {"role": "user", "content": "Name three primary colours."},
    {"role": "assistant", "content": "Red, yellow and blue."},
    {"role": "user", "content": "And one secondary colour?"},
    {"role": "assistant", "content": "Green."},
]


# Conversations on which a template is compared with TRL's copies and checked for prefix stability.
PROBES = [
    _TURNS[:2],
    [_SYSTEM, *_TURNS[:2]],
    _TURNS,
    [_SYSTEM, *_TURNS],
    [_TURNS[0], {**_TURNS[1], "reasoning_content": "Primaries."}, *_TURNS[2:]],
    [_TURNS[0], {**_TURNS[1], "content": "<think>\nPrimaries.\n</think>\n\nRed, yellow and blue."}],
]


# A tool-calling exchange with distinct marks, to see which parts a template shows (and, rendered with
# PROBE_TOOLS, to tell templates apart that differ only there). Its call id is nine letters and digits, the only
# form Mistral's templates accept, so that no template rejects the probe for its id.
PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "zq_tool_name",
            "description": "zq-tool-doc",
            "parameters": {"type": "object", "properties": {"zq_arg": {"type": "string"}}, "required": ["zq_arg"]},
        },
    }
]


_CALL = {
    "type": "function",
    "id": "zqcallid1",
    "function": {"name": "zq_tool_name", "arguments": {"zq_arg": "zq-value"}},
}


TOOL_PROBE = [
    _TURNS[0],
    {"role": "assistant", "content": "", "tool_calls": [_CALL]},
    {"role": "tool", "name": "zq_tool_name", "tool_call_id": _CALL["id"], "content": "zq-result"},
    {"role": "assistant", "content": "Done."},
]


@dataclass
class ChatSpec:
    """How rows become tokens under a tokenizer's (already chosen) chat template."""

    source: str  # what the masks come from, for the log and data_report.json
    prefix_masks: bool = False  # verified prefix rendering instead of generation markers
    reasoning_style: str = "field"  # "field": reasoning_content; "inline": <think> in content; "none": not shown
    fold_system: bool = False  # the template rejects a system turn: it goes into the first user turn
    reasoning: str = "keep"  # PARAMS reasoning: keep or drop
    shows_tools: bool = True  # the template renders a row's tools (schemas)
    call_arguments: str = "dict"  # how it takes tool-call arguments: "dict", "string" (JSON text), "" (calls not shown)
    shows_tool_results: bool = True  # it renders tool messages
    several_calls: bool = True  # it renders each of several calls in a turn (gpt-oss shows one, Llama 3.1 raises)
    new_token_ids: list = field(default_factory=list)  # tokens the format added to the vocabulary


def template_text(tokenizer) -> str | None:
    template = tokenizer.chat_template
    return template.get("default") if isinstance(template, dict) else template


def render(
    tokenizer,
    messages: list[dict],
    template: str | None = None,
    generation_prompt: bool = False,
    tools: list | None = None,
) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt, tools=tools or None
    )


def chat_spec(tokenizer, source: str, reasoning: str = "keep") -> ChatSpec:
    """The rules for rendering rows with the tokenizer's current template."""
    template = template_text(tokenizer)
    return ChatSpec(
        source=source,
        prefix_masks=not has_generation_markers(template),
        reasoning_style=reasoning_style(tokenizer),
        fold_system=rejects_system(tokenizer),
        reasoning=reasoning,
        **tool_support(tokenizer),
    )


def tool_support(tokenizer) -> dict:
    """ChatSpec's tool fields for the tokenizer's template. Templates take tools= and render calls and results in
    their own syntax, or silently leave some out (Phi-3 shows no tool results, Llama 3's first template no calls,
    gpt-oss only a turn's first call), or want arguments as a JSON string (DeepSeek-V3)."""
    if not template_text(tokenizer):
        return {"shows_tools": False, "call_arguments": "", "shows_tool_results": False}

    def shown(messages) -> str:
        try:
            return render(tokenizer, messages, tools=PROBE_TOOLS)
        except (TemplateError, TypeError):
            return ""

    def exchange(style: str, *values: str, results=TOOL_PROBE[2:]) -> str:
        """The probe exchange with one call per value, arguments in the given style."""
        calls = [
            {
                **_CALL,
                "id": f"zqcallid{i + 1}",
                "function": {
                    **_CALL["function"],
                    "arguments": ({"zq_arg": value} if style == "dict" else json.dumps({"zq_arg": value})),
                },
            }
            for i, value in enumerate(values)
        ]
        return shown([TOOL_PROBE[0], {**TOOL_PROBE[1], "tool_calls": calls}, *results])

    shows_tools = "zq_tool_name" in shown(_TURNS[:2])  # a conversation without calls: the name comes from the schema
    for style in ("dict", "string"):
        text = exchange(style, "zq-value")
        if all(mark in text for mark in ("zq_tool_name", "zq_arg", "zq-value")):
            return {
                "shows_tools": shows_tools,
                "call_arguments": style,
                "shows_tool_results": "zq-result" in text,
                "several_calls": "zq-other" in exchange(style, "zq-value", "zq-other", results=[]),
            }
    return {
        "shows_tools": shows_tools,
        "call_arguments": "",
        "shows_tool_results": "zq-result" in exchange("dict", "zq-value"),
    }


def rejects_system(tokenizer) -> bool:
    """Whether the template raises on a system turn but renders the same row with the system prompt folded into
    the first user turn (Gemma 1 and 2; Gemma 3's own template folds it itself)."""
    if not template_text(tokenizer):
        return False
    try:
        render(tokenizer, [_SYSTEM, *_TURNS[:2]])
        return False
    except TemplateError:
        try:
            render(tokenizer, fold_system([_SYSTEM, *_TURNS[:2]]))
            return True
        except TemplateError:
            return False


def fold_system(messages: list[dict]) -> list[dict]:
    """A leading system turn moved into the first user turn, separated by a blank line (as Gemma 3 does)."""
    if len(messages) < 2 or messages[0]["role"] != "system" or messages[1]["role"] != "user":
        return messages
    user = {**messages[1], "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
    return [user, *messages[2:]]


def reasoning_style(tokenizer) -> str:
    """How the template shows an assistant turn's reasoning: from the reasoning_content field, inline as a
    <think> block in the content (R1 and any template that prints content as it is), or not at all."""
    user = _TURNS[0]
    try:
        if MARK in render(tokenizer, [user, {"role": "assistant", "content": "Red.", "reasoning_content": MARK}]):
            return "field"
        if MARK in render(tokenizer, [user, {"role": "assistant", "content": f"<think>\n{MARK}\n</think>\n\nRed."}]):
            return "inline"
    except TemplateError:
        pass
    return "none"


def prepare_messages(messages: list[dict], spec: ChatSpec, tools: list | None = None) -> list[dict]:
    """Messages (reasoning already in reasoning_content, tool calls normalized) in the form the template renders:
    the system turn folded when it must be, reasoning inline when the template reads it there, call arguments as
    the template takes them. A row with tools, calls or results the template would silently leave out is refused."""
    if spec.fold_system:
        messages = fold_system(messages)
    _check_tool_support(messages, spec, tools)
    if spec.call_arguments == "string":
        messages = [
            {
                **m,
                "tool_calls": [
                    {
                        **c,
                        "function": {
                            **c["function"],
                            "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False),
                        },
                    }
                    for c in m["tool_calls"]
                ],
            }
            if m.get("tool_calls")
            else m
            for m in messages
        ]
    if spec.reasoning_style == "field":
        return messages
    out = []
    for message in messages:
        reasoning = message.get("reasoning_content")
        if reasoning and spec.reasoning_style == "none":
            raise RowProblem(
                "the chat template does not show reasoning (reasoning_content or <think>); set "
                "reasoning=drop, chat_template=path/to/template.jinja or chat_format=special_tokens"
            )
        if reasoning and spec.reasoning_style == "inline":
            message = {key: value for key, value in message.items() if key != "reasoning_content"}
            message["content"] = f"<think>\n{reasoning}\n</think>\n\n{message['content']}"
        out.append(message)
    return out


def _check_tool_support(messages: list[dict], spec: ChatSpec, tools: list | None) -> None:
    fix = "set chat_template=path/to/template.jinja (one that renders tools) or chat_format=special_tokens"
    if tools and not spec.shows_tools:
        raise RowProblem(f"the chat template does not show the row's tools; {fix}")
    if not spec.call_arguments and any(m.get("tool_calls") for m in messages):
        raise RowProblem(f"the chat template does not show tool calls; {fix}")
    if not spec.several_calls and any(len(m.get("tool_calls") or []) > 1 for m in messages):
        raise RowProblem(
            f"the chat template takes one tool call per assistant turn and this row has a turn with more; {fix}"
        )
    if not spec.shows_tool_results and any(m["role"] == "tool" for m in messages):
        raise RowProblem(f"the chat template does not show tool results; {fix}")
