"""The special-tokens chat template (Jinja) and the response parser that reads its assistant turns back.

<system>get_weather(city: string, day?: string) Weather forecast.<eot>      the row's tools, if any
<system>You are brief.<eot><user>Weather in Paris?<eot>
<assistant><call>get_weather{"city": "Paris"}<eot>                      trained: calls, content, <eot>
<tool>{"sky": "sunny"}<eot><assistant>Sunny.<eot>
"""

from common.chat.template import ChatSpec
from common.distributed import is_main
from common.errors import UserError

ROLE_TOKENS = {"system": "<system>", "user": "<user>", "assistant": "<assistant>", "tool": "<tool>"}


CALL = "<call>"  # opens a tool call inside an assistant turn: <call>name{arg:"value"}


END_OF_TURN = "<eot>"


FUNCTION_TOKENS_FILE = "function_tokens.json"  # in final/: {function name: its token}


AUTO_FUNCTION_TOKENS = 64  # function_tokens=auto: a specialist's closed set of functions is at most this large


FUNCTION_TOKEN = "<fn:{}>"  # function_tokens=true: one token per function, standing for <call>name


# The tools, one line each before the conversation, as compact signatures: `name(city: string, days?: integer)
# description`. A JSON schema per tool would cost hundreds of tokens in every row; the signature keeps the names,
# types, enums, optional marks and descriptions a model needs to choose and fill a call, at every depth: an object
# shows its fields in braces, `{sku: string, qty?: integer}`, an array its items' type before `[]` (alternatives
# in parentheses, `("C"|"F")[]`), anyOf/oneOf and type lists their alternatives joined by `|`, and any schema its
# description after it in parentheses. A function with its own token is listed as that token alone: its schema is
# learned into the token (as in Octopus v2), so every row is shorter by its signature.
_TOOLS = (
    "{%- macro fields(p) -%}"
    "{%- set required = p['required'] if p['required'] is defined else [] -%}"
    "{%- for name, q in p['properties'].items() -%}"
    "{{ name }}{{ '' if name in required else '?' }}: {{ type_of(q) }}{{ ', ' if not loop.last }}"
    "{%- endfor -%}"
    "{%- endmacro -%}"
    # one type name t of schema p (none when p names no type): objects (BFCL says dict) show their fields, arrays
    # (BFCL's tuple too) their items' type (`any[]` without items), a list of items (a tuple schema) each item's type.
    # `'items' in p`, since p['items'] of a dict without that key is the dict's items method.
    "{%- macro shape(p, t) -%}"
    "{%- if t == 'array' or ('items' in p and t in [none, 'tuple']) -%}"
    "{%- set items = p['items'] if 'items' in p else {} -%}"
    "{%- if items is iterable and items is not mapping and items is not string -%}"
    "[{%- for q in items -%}{{ type_of(q) }}{{ ', ' if not loop.last }}{%- endfor -%}]"
    "{%- else -%}{{ type_of(items, true) }}[]{%- endif -%}"
    "{%- elif p['properties'] is mapping and t in [none, 'object', 'dict'] -%}"
    "{{ ('{' ~ fields(p) ~ '}') if p['properties'] else (t or 'object') }}"
    "{%- else -%}{{ t }}{%- endif -%}"
    "{%- endmacro -%}"
    # grouped: alternatives in parentheses, as an array's items need them (`("C"|"F")[]`, not `"C"|"F"[]`); a
    # schema that is no JSON object (`"city": "string"` in loose data) shows as written
    "{%- macro type_of(p, grouped=false) -%}"
    "{%- if p is not mapping -%}{{ p }}{%- else -%}"
    "{%- set kinds = p['type'] if p['type'] is defined and p['type'] is not none else [] -%}"
    "{%- set kinds = [kinds] if kinds is string else kinds -%}"
    "{%- set shaped = kinds or p['properties'] is mapping or 'items' in p -%}"
    "{%- set choices = p['anyOf'] if p['anyOf'] is defined else (p['oneOf'] if p['oneOf'] is defined else []) -%}"
    "{%- set n = (kinds if shaped else choices) | length -%}"
    "{%- set n = p['enum'] | length if p['enum'] is defined else n -%}"
    "{{ '(' if grouped and n > 1 }}"
    "{%- if p['enum'] is defined -%}{{ p['enum'] | map('tojson') | join('|') }}"
    "{%- elif shaped -%}{%- for t in kinds or [none] -%}{{ shape(p, t) }}{{ '|' if not loop.last }}{%- endfor -%}"
    "{%- elif choices -%}{%- for q in choices -%}{{ type_of(q) }}{{ '|' if not loop.last }}{%- endfor -%}"
    "{%- else -%}any{%- endif -%}"
    "{{ ')' if grouped and n > 1 }}"
    "{%- if p['description'] is defined and p['description'] %} ({{ p['description'] }}){%- endif -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if tools -%}<system>"
    "{%- for tool in tools -%}"
    "{%- set f = tool['function'] if tool['function'] is defined else tool -%}"
    "{%- set schema = f['parameters'] if f['parameters'] is defined and f['parameters'] else {} -%}"
    "{%- if f['name'] in function_tokens -%}<fn:{{ f['name'] }}>"
    "{%- else -%}{{ f['name'] }}({{ fields(schema) if schema['properties'] is mapping }})"
    "{%- if f['description'] is defined and f['description'] %} {{ f['description'] }}{%- endif -%}"
    "{{ '\\n' if not loop.last }}"
    "{%- endif -%}"
    "{%- endfor -%}<eot>"
    "{%- endif -%}"
)


# A call's arguments as compact JSON with bare keys, `{city:"Paris",days:2}`: the parser's unquoted_keys dialect
# quotes them back. The key sits right before its value, as in `city="Paris"`, which a small model learns to fill
# far sooner than `"city": "Paris"` (BENCHMARKS.md). The dialect quotes any `{word:` or `,word:`, so inside
# strings `,` `{` (and `<`, which could open a special token) are written as JSON \u escapes: every value parses
# back exactly. Keys that are not plain words stay quoted.
_ARGUMENTS = (
    "{%- macro json_value(v) -%}"
    "{%- if v is string -%}{{ (v | tojson).replace(',', '\\\\u002c').replace('{', '\\\\u007b').replace('<', '\\\\u003c') }}"  # noqa: E501 - one Jinja expression
    "{%- elif v is mapping -%}{{ '{' }}{%- for k, x in v.items() -%}"
    "{{ json_value(k ~ '') }}:{{ json_value(x) }}{{ ',' if not loop.last }}{%- endfor -%}{{ '}' }}"
    "{%- elif v is iterable -%}[{%- for x in v -%}{{ json_value(x) }}{{ ',' if not loop.last }}{%- endfor -%}]"
    "{%- else -%}{{ v | tojson }}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- macro arguments(a) -%}"
    "{%- if a is string -%}{{ a }}{%- else -%}{{ '{' }}{%- for k, x in a.items() -%}"
    "{{ k if k and (k | list | reject('in', 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_') | list | length == 0)"  # noqa: E501 - one Jinja expression
    " else json_value(k ~ '') }}:{{ json_value(x) }}{{ ',' if not loop.last }}{%- endfor -%}{{ '}' }}{%- endif -%}"
    "{%- endmacro -%}"
)


# `{% generation %}` marks what the loss is taken on: assistant reasoning (as a <think> block), content, tool calls
# and the end-of-turn token, on every assistant turn, so a conversation renders the same at inference as in
# training. A call is `<call>name{city:"Paris"}` (or `<fn:name>{...}` with function tokens): the name bare, since
# the call token already says a name follows, and the arguments as JSON (above), which any value type survives
# and transformers' response parser reads back as a dict.
_MESSAGES = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<assistant>{% generation %}"
    "{%- if message['reasoning_content'] is string and message['reasoning_content'] -%}"
    "<think>{{ message['reasoning_content'] }}</think>"
    "{%- endif -%}"
    "{{ message['content'] if message['content'] is string else '' }}"
    "{%- for call in (message['tool_calls'] if message['tool_calls'] is defined and message['tool_calls'] else []) -%}"
    "{%- set c = call['function'] if call['function'] is defined else call -%}"
    "{{ ('<fn:' ~ c['name'] ~ '>') if c['name'] in function_tokens else ('<call>' ~ c['name']) }}"
    "{{ arguments(c['arguments']) }}"
    "{%- endfor -%}"
    "<eot>{% endgeneration %}"
    "{%- else -%}"
    "<{{ message['role'] }}>{{ message['content'] }}<eot>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<assistant>{%- endif -%}"
)


def special_tokens_template(function_names=()) -> str:
    """Our chat template; function_names render as their function tokens."""
    return "{%- set function_tokens = " + repr(sorted(function_names)) + " -%}" + _TOOLS + _ARGUMENTS + _MESSAGES


# How tokenizer.parse_response reads a generated assistant turn back (transformers' response_template).
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant", "content": ""},
    "start_anchor": "<assistant>",
    "fields": {
        "reasoning_content": {"open": "<think>", "close": "</think>", "content": "text"},
        "tool_calls": {
            "open_pattern": r"(?:<call>|<fn:)(?P<name>[^\s{}<>]+)>?",
            "close_pattern": r"(?=<call>|<fn:|<eot>)|\Z",
            "repeats": True,
            "content": "json",
            "content_args": {"unquoted_keys": True},
            "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}},
        },
        "content": {"close_pattern": r"<eot>.*", "content": "text"},
    },
}


def use_function_tokens(tokenizer, spec: ChatSpec, params: dict, names, report) -> dict[str, str]:
    """PARAMS function_tokens: a token for each function the training rows' tools name (names), or none ({}).
    "auto" takes them for a specialist's closed set of functions (at most AUTO_FUNCTION_TOKENS names) in the
    special-tokens format, and not for broad tool data, whose model must read schemas it has never seen."""
    setting = params["function_tokens"]
    if setting is True and params["chat_format"] != "special_tokens":
        raise UserError("function_tokens=true needs chat_format=special_tokens: a native template writes names as text")
    names = set(names)
    if setting == "auto":
        setting = params["chat_format"] == "special_tokens" and 0 < len(names) <= AUTO_FUNCTION_TOKENS
    if not setting or not names:
        return {}
    tokens = add_function_tokens(tokenizer, spec, names)
    report.counts["function_tokens"] = len(tokens)
    if is_main():
        print(f"function tokens: {len(tokens)}, one per function in the training rows' tools", flush=True)
    return tokens


def add_function_tokens(tokenizer, spec: ChatSpec, names) -> dict[str, str]:
    """One special token per function name (special_tokens format): a call is that token and its arguments, and
    the tools line of the function is the token. Returns {name: token} for every function token the tokenizer
    has, the mapping final/ keeps."""
    before = len(tokenizer)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [FUNCTION_TOKEN.format(n) for n in sorted(set(names))]},
        replace_extra_special_tokens=False,
    )
    tokens = function_tokens_of(tokenizer)
    tokenizer.chat_template = special_tokens_template(tokens)
    spec.new_token_ids += list(range(before, len(tokenizer)))
    return tokens


def function_tokens_of(tokenizer) -> dict[str, str]:
    """{name: token} of the function tokens the tokenizer already has."""
    prefix, suffix = FUNCTION_TOKEN.split("{}")
    return {
        token[len(prefix) : -len(suffix)]: token
        for token in tokenizer.get_added_vocab()
        if token.startswith(prefix) and token.endswith(suffix)
    }
