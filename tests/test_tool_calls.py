"""Function calling in the special-tokens format: row checks, rendering, loss masks, parsing back, function tokens.

Native templates with tools are covered in tests/test_chat_masks.py; scripts end to end in test_sft_chat.py.
"""

import json

import pytest

from common.chat.masks import spans, tokenize_chat
from common.chat.own_format import add_function_tokens, use_function_tokens
from common.chat.rows import chat_row_problem
from common.chat.tokenizer import prepare_tokenizer
from common.cleaning import CLEAN_DEFAULTS, clean_rows
from common.data import DataReport, Row
from common.errors import UserError
from common.evaluate import Example, _hit
from common.models import load_tokenizer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather forecast.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["C", "F"]},
            },
            "required": ["city"],
        },
    },
}
TIMER = {"name": "set_timer", "parameters": {"type": "object", "properties": {"minutes": {"type": "integer"}}}}
TOOLS = [WEATHER, {"type": "function", "function": TIMER}]
USER = {"role": "user", "content": "Weather in Paris for 2 days, and a 5 minute timer"}


def call(name, arguments, id=None):
    return {"type": "function", **({"id": id} if id else {}), "function": {"name": name, "arguments": arguments}}


PARIS = call("get_weather", {"city": "Paris", "days": 2}, "c1")
TIMER_CALL = call("set_timer", '{"minutes": 5}', "c2")  # arguments as a JSON string
RESULT = {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": '{"sky": "sunny"}'}

# One row per shape of conversation: (messages, tools, the trained text of each assistant turn).
SHAPES = {
    "one call, content empty": (
        [USER, {"role": "assistant", "content": "", "tool_calls": [PARIS]}],
        TOOLS,
        ['<call>get_weather{city:"Paris",days:2}<eot>'],
    ),
    "content null, two calls": (
        [USER, {"role": "assistant", "content": None, "tool_calls": [PARIS, TIMER_CALL]}],
        TOOLS,
        ['<call>get_weather{city:"Paris",days:2}<call>set_timer{minutes:5}<eot>'],
    ),
    "text and a call": (
        [USER, {"role": "assistant", "content": "Checking.", "tool_calls": [PARIS]}],
        TOOLS,
        ['Checking.<call>get_weather{city:"Paris",days:2}<eot>'],
    ),
    "call, result, answer": (
        [
            USER,
            {"role": "assistant", "content": "", "tool_calls": [PARIS]},
            RESULT,
            {"role": "assistant", "content": "Sunny in Paris."},
        ],
        TOOLS,
        ['<call>get_weather{city:"Paris",days:2}<eot>', "Sunny in Paris.<eot>"],
    ),
    "system, tools as a JSON string, reasoning": (
        [
            {"role": "system", "content": "Be brief."},
            USER,
            {"role": "assistant", "content": "", "reasoning_content": "Two tools.", "tool_calls": [TIMER_CALL]},
        ],
        json.dumps(TOOLS),
        ["<think>Two tools.</think><call>set_timer{minutes:5}<eot>"],
    ),
    "no tools at all": ([USER, {"role": "assistant", "content": "I cannot."}], None, ["I cannot.<eot>"]),
}


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = load_tokenizer("builtin:tiny")
    tokenizer.spec = prepare_tokenizer(tokenizer, "special_tokens")
    return tokenizer


@pytest.mark.parametrize("shape", SHAPES)
def test_loss_is_on_each_assistant_turn_with_its_calls_and_never_on_tools_or_results(tokenizer, shape):
    messages, tools, trained = SHAPES[shape]
    assert chat_row_problem({"messages": messages, "tools": tools}) is None
    input_ids, labels = tokenize_chat(tokenizer, messages, spec=tokenizer.spec, tools=tools)
    mask = [label != -100 for label in labels]
    assert [tokenizer.decode(input_ids[a:b]) for a, b in spans(mask)] == trained
    text = tokenizer.decode(input_ids)
    if tools:  # the schema comes first, as signatures, and is never trained
        assert text.startswith(
            '<system>get_weather(city: string, days?: integer, unit?: "C"|"F") Weather forecast.\n'
            "set_timer(minutes?: integer)<eot>"
        )
    assert text.count("<tool>") == sum(m["role"] == "tool" for m in messages)


def obj(properties, required=(), **more):
    return {"type": "object", "properties": properties, "required": list(required), **more}


def array(items, **more):
    return {"type": "array", "items": items, **more}


NUMBER, STRING = {"type": "number"}, {"type": "string"}

# Nested schemas as common tool sets write them (glaive, xLAM, BFCL, pydantic) and their signatures: every field at
# every depth with its type, `?` when optional, its enum and its description.
SIGNATURES = {
    "an object parameter (BFCL's dict) with described fields": (
        obj(
            {
                "conditions": {
                    "type": "dict",
                    "description": "Wanted weather.",
                    "properties": {
                        "temp_min": {"type": "number", "description": "Lowest, in C."},
                        "sky": {"type": "string", "enum": ["sun", "rain"]},
                    },
                    "required": ["sky"],
                }
            },
            ["conditions"],
        ),
        'f(conditions: {temp_min?: number (Lowest, in C.), sky: "sun"|"rain"} (Wanted weather.)) Doc.',
    ),
    "an array of objects": (
        obj({"items": array(obj({"sku": STRING, "qty": {"type": "integer"}}, ["sku"]))}, ["items"]),
        "f(items: {sku: string, qty?: integer}[]) Doc.",
    ),
    "an object in an array in an object, enums inside": (
        obj(
            {
                "order": obj(
                    {
                        "lines": array(
                            obj({"unit": {"enum": ["kg", "g"]}, "tags": array({"enum": ["a", "b"]})}, ["unit"])
                        )
                    }
                )
            }
        ),
        'f(order?: {lines?: {unit: "kg"|"g", tags?: ("a"|"b")[]}[]}) Doc.',
    ),
    "arrays of arrays, items described": (
        obj(
            {
                "board": array(array({"enum": [0, 1], "description": "A cell."}), description="Rows."),
                "paths": array(array(obj({"x": NUMBER, "y": NUMBER}, ["x", "y"]))),
            }
        ),
        "f(board?: (0|1) (A cell.)[][] (Rows.), paths?: {x: number, y: number}[][]) Doc.",
    ),
    "no type: the schema's shape says it": (
        obj(
            {
                "extra": {"description": "Passed through."},
                "point": {"properties": {"x": NUMBER}, "required": ["x"]},
                "names": {"items": STRING},
                "options": {"type": "object", "properties": {}},
                "words": {"type": "array"},
            }
        ),
        "f(extra?: any (Passed through.), point?: {x: number}, names?: string[], options?: object, words?: any[]) Doc.",
    ),
    "anyOf, oneOf and type lists": (
        obj(
            {
                "when": {"anyOf": [STRING, {"type": "null"}], "description": "A date."},
                "ids": array({"oneOf": [STRING, {"type": "integer"}]}),
                "count": {"type": ["integer", "null"]},
                "tags": {"type": ["array", "null"], "items": STRING},
                "spot": {"anyOf": [obj({"lat": NUMBER}, ["lat"]), STRING]},
            }
        ),
        "f(when?: string|null (A date.), ids?: (string|integer)[], count?: integer|null, tags?: string[]|null, "
        "spot?: {lat: number}|string) Doc.",
    ),
    "tuples (BFCL's tuple, JSON schema's list of items)": (
        obj({"point": {"type": "tuple", "items": NUMBER}, "pair": array([STRING, {"type": "integer"}])}),
        "f(point?: number[], pair?: [string, integer]) Doc.",
    ),
    "loose data: a bare type name for a schema": (
        obj({"city": "string", "days": array("integer")}, ["city"]),
        "f(city: string, days?: integer[]) Doc.",
    ),
}


def field_names(schema) -> list[str]:
    """Every property name at every depth of a schema."""
    if isinstance(schema, list):
        return [n for s in schema for n in field_names(s)]
    if not isinstance(schema, dict):
        return []
    properties = schema.get("properties", {})
    nested = [*properties.values(), schema.get("items"), *schema.get("anyOf", []), *schema.get("oneOf", [])]
    return [*properties, *field_names(nested)]


@pytest.mark.parametrize("case", SIGNATURES)
def test_the_tools_line_shows_every_field_at_every_depth(tokenizer, case):
    parameters, signature = SIGNATURES[case]
    tool = {"type": "function", "function": {"name": "f", "description": "Doc.", "parameters": parameters}}
    text = tokenizer.apply_chat_template([USER], tools=[tool], tokenize=False)
    assert text.startswith(f"<system>{signature}<eot><user>")
    assert all(f"{name}:" in signature or f"{name}?:" in signature for name in field_names(parameters))


@pytest.mark.parametrize("shape", [s for s in SHAPES if SHAPES[s][0][-1].get("tool_calls") or s == "no tools at all"])
def test_a_rendered_answer_parses_back_to_the_message(tokenizer, shape):
    messages, tools, trained = SHAPES[shape]
    parsed = tokenizer.parse_response(trained[-1], prefix="")
    expected = messages[-1]
    assert parsed["content"] == (expected["content"] or "")
    assert parsed.get("reasoning_content") == expected.get("reasoning_content")
    got = [(c["function"]["name"], c["function"]["arguments"]) for c in parsed.get("tool_calls", [])]
    want = [
        (
            c["function"]["name"],
            c["function"]["arguments"]
            if isinstance(c["function"]["arguments"], dict)
            else json.loads(c["function"]["arguments"]),
        )
        for c in expected.get("tool_calls", [])
    ]
    assert got == want


def test_any_argument_value_parses_back_exactly(tokenizer):
    """Bare keys are quoted back by the parser's unquoted_keys dialect, which would also quote `,word:` inside a
    string: such characters are written escaped, so every value survives."""
    arguments = {
        "city": "Paris, FR",
        "n": 2,
        "x": 1.5,
        "ok": True,
        "none": None,
        "tricky": 'a,b:c {d:e} <eot> "q" \\ \n é',
        "list": ["x,y:z", {"k-1": "v,w:1"}],
        "my-key": {"in": [1, 2]},
        "é": 1,
    }
    messages = [USER, {"role": "assistant", "content": "", "tool_calls": [call("f", arguments)]}]
    answer = tokenizer.apply_chat_template(messages, tokenize=False).split("<assistant>")[1]
    assert answer.startswith('<call>f{city:"Paris\\u002c FR",n:2,x:1.5,ok:true,none:null,')
    assert tokenizer.parse_response(answer, prefix="")["tool_calls"][0]["function"]["arguments"] == arguments


BAD_ROWS = [
    (
        {"messages": [USER, {"role": "assistant", "content": "", "tool_calls": PARIS}]},
        "messages[1] tool_calls must be a list on an assistant turn, got dict",
    ),
    (
        {
            "tools": TOOLS,
            "messages": [
                USER,
                {"role": "assistant", "content": "", "tool_calls": [call("get_weather", "{city: Paris}")]},
            ],
        },
        "messages[1] tool_calls[0] arguments of 'get_weather' are not valid JSON",
    ),
    (
        {
            "tools": TOOLS,
            "messages": [USER, {"role": "assistant", "content": "", "tool_calls": [call("get_weather", "[1]")]}],
        },
        "messages[1] tool_calls[0] arguments of 'get_weather' must be a JSON object, got list",
    ),
    (
        {"tools": TOOLS, "messages": [USER, RESULT, {"role": "assistant", "content": "Sunny."}]},
        "messages[1] is a tool result with no assistant tool call before it",
    ),
    (
        {
            "tools": TOOLS,
            "messages": [USER, {"role": "assistant", "content": "", "tool_calls": [call("play_music", {})]}],
        },
        "messages[1] tool_calls[0] calls 'play_music', which is not in the row's tools",
    ),
    (
        {"messages": [USER, {"role": "assistant", "content": "", "tool_calls": [PARIS]}]},
        "calls 'get_weather', which is not in the row's tools (the row has no tools)",
    ),
    (
        {
            "tools": TOOLS,
            "messages": [
                USER,
                {"role": "assistant", "content": "", "tool_calls": [PARIS]},
                {**RESULT, "tool_call_id": "c9"},
            ],
        },
        "messages[2] answers tool_call_id 'c9', which no call before it has",
    ),
    ({"tools": "[{broken", "messages": [USER]}, "'tools' is a string but not valid JSON"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}], "messages": [USER]}, "tools[0] name 'a b' must be"),
    (
        {"messages": [USER, {"role": "assistant", "content": None}]},
        "messages[1] content must be a string, got NoneType",
    ),
    (
        {"messages": [USER, {"role": "user", "content": "x", "tool_calls": [PARIS]}]},
        "tool_calls must be a list on an assistant turn",
    ),
]


@pytest.mark.parametrize("row, problem", BAD_ROWS)
def test_malformed_tool_rows_are_refused_with_the_reason(row, problem):
    assert problem in (chat_row_problem(row) or "")


def test_function_tokens_make_each_name_one_token_and_parse_back_to_the_plain_name():
    tokenizer = load_tokenizer("builtin:tiny")
    spec = prepare_tokenizer(tokenizer, "special_tokens")
    mapping = add_function_tokens(tokenizer, spec, ["set_timer", "get_weather"])
    assert mapping == {"get_weather": "<fn:get_weather>", "set_timer": "<fn:set_timer>"}
    assert spec.new_token_ids[-2:] == tokenizer.convert_tokens_to_ids(list(mapping.values()))
    messages, tools, _ = SHAPES["content null, two calls"]
    input_ids, labels = tokenize_chat(tokenizer, messages, spec=spec, tools=tools)
    trained = [t for t in labels if t != -100]
    assert tokenizer.convert_tokens_to_ids(["<fn:get_weather>"]) == [trained[0]]  # choosing a function: one token
    text = tokenizer.decode(input_ids)
    assert text.startswith(
        "<system><fn:get_weather><fn:set_timer><eot><user>"
    )  # a tokenized function's schema is its token
    answer = tokenizer.decode(trained)
    assert answer == '<fn:get_weather>{city:"Paris",days:2}<fn:set_timer>{minutes:5}<eot>'
    parsed = tokenizer.parse_response(answer, prefix="")
    assert [c["function"]["name"] for c in parsed["tool_calls"]] == ["get_weather", "set_timer"]
    # a tool the tokens do not cover still renders as a signature, and its call as <call>name
    other = {"name": "play", "parameters": {"type": "object", "properties": {}}}
    row = [USER, {"role": "assistant", "content": "", "tool_calls": [call("play", {})]}]
    assert "<fn:get_weather><fn:set_timer>play()<eot>" in tokenizer.apply_chat_template(
        row, tools=[*TOOLS, other], tokenize=False
    )


@pytest.mark.parametrize(
    "setting, chat_format, functions, added",
    [
        ("auto", "special_tokens", 6, 6),
        ("auto", "special_tokens", 65, 0),
        (True, "special_tokens", 65, 65),
        (False, "special_tokens", 6, 0),
        ("auto", "native", 6, 0),
        ("auto", "special_tokens", 0, 0),
    ],
)
def test_function_tokens_auto_takes_a_closed_set_of_functions(setting, chat_format, functions, added):
    tokenizer = load_tokenizer("builtin:tiny")
    spec = prepare_tokenizer(tokenizer, "special_tokens")
    tools = [{"name": f"f{i}", "parameters": {"type": "object", "properties": {}}} for i in range(functions)]
    report = DataReport()
    params = {"function_tokens": setting, "chat_format": chat_format}
    assert len(use_function_tokens(tokenizer, spec, params, [t["name"] for t in tools], report)) == added
    assert report.counts.get("function_tokens", 0) == added


def test_function_tokens_with_a_native_template_stop_with_one_line():
    with pytest.raises(UserError, match="function_tokens=true needs chat_format=special_tokens"):
        use_function_tokens(None, None, {"function_tokens": True, "chat_format": "native"}, [], DataReport())


def test_cleaning_keeps_calls_and_the_values_they_pass_where_the_request_has_them():
    row = {
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": "Text  +44 20 7946 0958 that I am late"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [call("set_timer", {"minutes": 5, "to": "+44 20 7946 0958"})],
            },
        ],
    }
    report = DataReport()
    kept = clean_rows([Row(row, "x:1")], dict(CLEAN_DEFAULTS), report)
    assert len(kept) == 1, report.dropped
    user, answer = kept[0].data["messages"]
    # as typed (normalising keeps runs of spaces); the number is what the call passes, so it is the row's data, not
    # PII to scrub (README "Cleaning")
    assert user["content"] == "Text  +44 20 7946 0958 that I am late"
    assert answer["tool_calls"][0]["function"]["arguments"] == {"minutes": 5, "to": "+44 20 7946 0958"}


@pytest.mark.parametrize(
    "answer, hit",
    [
        ('<call>get_weather{"days": 2, "city": "Paris"}<eot>', True),  # argument order does not matter
        ('<call>get_weather{"city": "Paris", "days": 2.0}<eot>', True),  # equal as JSON values
        ('<call>get_weather{"city": "Paris", "days": "2"}<eot>', False),
        ('<call>get_weather{"city": "Paris"}<eot>', False),
        ('<call>get_forecast{city:"Paris",days:2}<eot>', False),
        ('<call>get_weather{"city": "Par<eot>', False),  # broken JSON is a miss, not a crash
        ('get_weather(city="Paris", days=2)<eot>', False),
    ],
)
def test_held_out_calls_are_scored_as_json_values(tokenizer, answer, hit):
    example = Example([USER], {"role": "assistant", "content": "", "tool_calls": [PARIS]}, TOOLS)
    assert _hit(tokenizer, answer, example, parse=True) is hit
