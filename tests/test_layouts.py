"""Data as users bring it from other tools (LLaMA-Factory, axolotl, OpenAI, TRL's KTO): each layout read into the
script's schema, or refused with file:line and the reason, never silently changed (common/layouts.py).

The samples are shaped like the public demo sets users download (alpaca_en_demo, glaive_toolcall_en_demo,
dpo_en_demo, kto_en_demo, mllm_demo, axolotl's conversation fixtures); the hub is not reachable from the tests.
Rows go through common.prepare under each script's recipe name, with the script's own row check.
"""

import json
from functools import partial

import pytest

from common.chat.masks import chat_example, spans
from common.chat.rows import chat_row_problem
from common.chat.tokenizer import prepare_tokenizer
from common.cleaning import CLEAN_DEFAULTS
from common.completion_format import completion_row_problem
from common.data import DataReport, load_sources
from common.errors import Dropped, UserError
from common.models import load_tokenizer
from common.preference import plain_row_problem
from common.prepare import Recipe, prepare
from common.prompts import prompt_problem
from tests.conftest import prepare_params, write_jsonl
from tests.real_tokenizers import load

PROBLEMS = {
    "sft_chat": chat_row_problem,
    "sft_completion": completion_row_problem,
    "dpo": partial(plain_row_problem, True),
    "grpo": prompt_problem,
}

ALPACA = {  # alpaca_en_demo
    "instruction": "Translate the sentence into French.",
    "input": "Good morning, everyone.",
    "output": "Bonjour à tous.",
}
ALPACA_CHAT = {
    "instruction": "And into German?",
    "input": "",
    "output": "Guten Morgen, alle zusammen.",
    "system": "You are a translator.",
    "history": [["Translate 'Good morning, everyone.' into French.", "Bonjour à tous."]],
}
TOOLS = json.dumps(
    [
        {
            "name": "convert_currency",
            "description": "Convert an amount from one currency to another",
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number"},
                    "from_currency": {"type": "string"},
                    "to_currency": {"type": "string"},
                },
                "required": ["amount", "from_currency", "to_currency"],
            },
        }
    ]
)
CALL = {"name": "convert_currency", "arguments": {"amount": 500, "from_currency": "USD", "to_currency": "EUR"}}
GLAIVE = {  # glaive_toolcall_en_demo: tools as a JSON string, calls and results as turns
    "conversations": [
        {"from": "human", "value": "Hi, I need to convert 500 US dollars to Euros."},
        {"from": "function_call", "value": json.dumps(CALL)},
        {"from": "observation", "value": '{"converted_amount": 425.5, "from_currency": "USD", "to_currency": "EUR"}'},
        {"from": "gpt", "value": "500 US dollars is about 425.50 Euros."},
    ],
    "tools": TOOLS,
}
DPO_EN = {  # dpo_en_demo: the conversation is the prompt, chosen and rejected are single messages
    "conversations": [{"from": "human", "value": "Name a benefit of regular exercise."}],
    "chosen": {"from": "gpt", "value": "It strengthens the heart."},
    "rejected": {"from": "gpt", "value": "Exercise has no benefits."},
}
KTO = {  # kto_en_demo
    "messages": [
        {"content": "Write a haiku about rain.", "role": "user"},
        {"content": "I do not write poems.", "role": "assistant"},
    ],
    "label": False,
}
MLLM = {  # mllm_demo
    "messages": [
        {"content": "<image>Who are they?", "role": "user"},
        {"content": "They're Kane and Gretzka from Bayern Munich.", "role": "assistant"},
    ],
    "images": ["mllm_demo_data/1.jpg"],
}
PARTS = {  # OpenAI content parts, all text
    "messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Capital of France? "}, {"type": "text", "text": "One word."}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]},
    ]
}
ROLES = {  # ShareGPT dumps: assistants under several names, a system turn
    "conversations": [
        {"from": "system", "value": "You are helpful."},
        {"from": "human", "value": "Hi"},
        {"from": "bing", "value": "Hello!"},
        {"from": "user", "value": "And you?"},
        {"from": "chatgpt", "value": "Fine."},
        {"from": "human", "value": "Bye"},
        {"from": "model", "value": "Bye!"},
    ],
    "id": "a1",
}
AXOLOTL = {  # axolotl's tests/fixtures/conversation.json: one object in a .json file
    "conversations": [
        {"from": "human", "value": "How do I reverse a list in Python?"},
        {"from": "gpt", "value": "Use reversed(xs) or xs[::-1]."},
    ]
}

WEIGHTED = {  # axolotl's ShareGPT with per-turn weights: the first answer is context, not to be learned
    "conversations": [
        {"from": "system", "value": "You answer in one word.", "weight": 0},
        {"from": "human", "value": "Capital of France?", "weight": 0},
        {"from": "gpt", "value": "Lyon.", "weight": 0},
        {"from": "human", "value": "Are you sure?", "weight": 0},
        {"from": "gpt", "value": "Paris.", "weight": 1},
    ]
}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


ACCEPTED = [
    # (id, script, row, source options, the row as the script gets it, the lines printed for the source)
    (
        "alpaca for chat",
        "sft_chat",
        ALPACA,
        {},
        {
            "messages": [
                user("Translate the sentence into French.\nGood morning, everyone."),
                assistant("Bonjour à tous."),
            ]
        },
        ["read as alpaca"],
    ),
    (
        "alpaca with system and history",
        "sft_chat",
        ALPACA_CHAT,
        {},
        {
            "messages": [
                {"role": "system", "content": "You are a translator."},
                user("Translate 'Good morning, everyone.' into French."),
                assistant("Bonjour à tous."),
                user("And into German?"),
                assistant("Guten Morgen, alle zusammen."),
            ]
        },
        ["read as alpaca"],
    ),
    (
        "alpaca for completion",
        "sft_completion",
        ALPACA,
        {},
        {"prompt": "Translate the sentence into French.\nGood morning, everyone.", "completion": "Bonjour à tous."},
        ["read as alpaca"],
    ),
    (
        "alpaca system and history dropped when asked",
        "sft_completion",
        ALPACA_CHAT,
        {"ignore": ["system", "history"]},
        {
            "prompt": "And into German?",
            "completion": "Guten Morgen, alle zusammen.",
            "system": "You are a translator.",
            "history": ALPACA_CHAT["history"],
        },
        ["read as alpaca", "ignoring columns history, system"],
    ),
    (
        "glaive tool calls",
        "sft_chat",
        GLAIVE,
        {},
        {
            "messages": [
                user("Hi, I need to convert 500 US dollars to Euros."),
                {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]},
                {"role": "tool", "content": GLAIVE["conversations"][2]["value"]},
                assistant("500 US dollars is about 425.50 Euros."),
            ],
            "tools": TOOLS,
        },
        [
            "read as ShareGPT (roles function_call -> assistant with tool calls, gpt -> assistant, "
            "human -> user, observation -> tool)"
        ],
    ),
    (
        "dpo_en_demo",
        "dpo",
        DPO_EN,
        {},
        {
            "prompt": [user("Name a benefit of regular exercise.")],
            "chosen": [assistant("It strengthens the heart.")],
            "rejected": [assistant("Exercise has no benefits.")],
        },
        ["read as ShareGPT (roles gpt -> assistant, human -> user)"],
    ),
    (
        "OpenAI text parts",
        "sft_chat",
        PARTS,
        {},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                user("Capital of France? One word."),
                assistant("Paris."),
            ]
        },
        ["read as text parts"],
    ),
    (
        "ShareGPT roles beyond the four",
        "sft_chat",
        ROLES,
        {},
        {
            "messages": [
                {"role": "system", "content": "You are helpful."},
                user("Hi"),
                assistant("Hello!"),
                user("And you?"),
                assistant("Fine."),
                user("Bye"),
                assistant("Bye!"),
            ],
            "id": "a1",
        },
        [
            "read as ShareGPT (roles bing -> assistant, chatgpt -> assistant, human -> user, model -> assistant)",
            "ignoring columns id",
        ],
    ),
    (
        "a KTO label the user drops",
        "sft_chat",
        KTO,
        {"ignore": ["label"]},
        KTO,
        ["ignoring columns label"],
    ),
    (
        "a desirable KTO row",
        "sft_chat",
        {**KTO, "label": True},
        {},
        {**KTO, "label": True},
        ["ignoring columns label"],
    ),
    (
        "axolotl's per-turn weights",
        "sft_chat",
        WEIGHTED,
        {},
        {
            "messages": [
                {"role": "system", "content": "You answer in one word."},
                user("Capital of France?"),
                {"role": "assistant", "content": "Lyon.", "train": False},
                user("Are you sure?"),
                assistant("Paris."),
            ]
        },
        ["read as ShareGPT (roles gpt -> assistant, human -> user)"],
    ),
    *[
        (
            f"a {key} flag",
            "sft_chat",
            {
                "messages": [
                    user("Hi"),
                    {**assistant("Hello!"), key: False},
                    user("Bye"),
                    {**assistant("Bye!"), key: True},
                ]
            },
            {},
            {"messages": [user("Hi"), {**assistant("Hello!"), "train": False}, user("Bye"), assistant("Bye!")]},
            [],
        )
        for key in ("train", "training")
    ],
    (
        "a weight the user drops",
        "sft_chat",
        {"messages": [user("Hi"), {**assistant("Hello!"), "weight": 0.5}]},
        {"ignore": ["weight"]},
        {"messages": [user("Hi"), assistant("Hello!")]},
        ["ignoring per-turn keys weight"],
    ),
    (
        "keys no script reads",
        "sft_chat",
        {"messages": [{**user("Hi"), "lang": "en"}, {**assistant("Hello!"), "score": 5, "refusal": None}]},
        {},
        {"messages": [{**user("Hi"), "lang": "en"}, {**assistant("Hello!"), "score": 5, "refusal": None}]},
        ["ignoring per-turn keys lang, score"],
    ),
    (
        "an untrained turn in a preference prompt",  # a prompt is never trained: the mark agrees
        "dpo",
        {
            "prompt": [user("Hi"), {**assistant("Hello!"), "weight": 0}, user("Bye")],
            "chosen": [{**assistant("Bye!"), "weight": 1}],
            "rejected": [assistant("No.")],
        },
        {},
        {
            "prompt": [user("Hi"), assistant("Hello!"), user("Bye")],
            "chosen": [assistant("Bye!")],
            "rejected": [assistant("No.")],
        },
        [],
    ),
    (
        "a system column",
        "grpo",
        {"system": "Answer in French.", "messages": [user("Hello?"), assistant("Bonjour.")], "answer": "Bonjour."},
        {},
        {
            "messages": [{"role": "system", "content": "Answer in French."}, user("Hello?"), assistant("Bonjour.")],
            "answer": "Bonjour.",
        },
        [],
    ),
]


def _as_row(row: dict):
    return [{"row": json.dumps(row, ensure_ascii=False)}], {}


def prepared_rows(tmp_path, script, data, report=None, **more) -> list[dict]:
    """The rows as the script's examples() gets them, read through common.prepare under its recipe name."""
    recipe = Recipe(script, PROBLEMS[script], _as_row, columns=("row", "where"))
    done = prepare(prepare_params(tmp_path, data, **more), recipe, None, report or DataReport())
    return [json.loads(row) for row in done.train["row"]]


@pytest.mark.parametrize(
    "script, row, options, expected, lines", [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED]
)
def test_layouts_are_read_into_the_scripts_schema(tmp_path, capsys, script, row, options, expected, lines):
    path = write_jsonl(tmp_path / "d.jsonl", [row, row])
    report = DataReport()
    assert prepared_rows(tmp_path, script, [{"path": path, **options}], report) == [expected, expected]
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(path)]
    assert printed == [f"{path}: {line}" for line in lines]  # once for the source, not per row
    assert (path in report.counts.get("reading", {})) == bool(lines)
    if script != "sft_completion" and not _marks_in(row):  # the in-memory reader (held-out sets) maps them the same
        assert load_sources([{"path": path, **options}], DataReport())[0].data == expected


def _marks_in(row: dict) -> bool:
    """Whether a row's turns say which are trained: only a training script's reading takes that in."""
    turns = [m for value in row.values() if isinstance(value, list) for m in value if isinstance(m, dict)]
    return any({"weight", "train", "training"} & set(m) for m in turns)


def test_json_files_hold_a_list_one_object_or_json_lines(tmp_path):
    one = tmp_path / "conversation.json"
    one.write_text(json.dumps(AXOLOTL, indent=2))
    listed = tmp_path / "alpaca.json"
    listed.write_text(json.dumps([ALPACA, ALPACA], indent=2))
    lines = tmp_path / "lines.json"
    lines.write_text(json.dumps(AXOLOTL) + "\n" + json.dumps(AXOLOTL) + "\n")
    chat = {"messages": [user("How do I reverse a list in Python?"), assistant("Use reversed(xs) or xs[::-1].")]}
    alpaca = {
        "messages": [user("Translate the sentence into French.\nGood morning, everyone."), assistant("Bonjour à tous.")]
    }
    assert prepared_rows(tmp_path, "sft_chat", [str(one), str(listed), str(lines)]) == [
        chat,
        alpaca,
        alpaca,
        chat,
        chat,
    ]
    assert [r.where for r in load_sources([str(one), str(lines)], DataReport())] == [
        f"{one}: row 1",
        f"{lines}:1",
        f"{lines}:2",
    ]


def test_an_explicit_mapping_wins_over_detection(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [DPO_EN])
    # conversations would be taken as the prompt by detection too; mapped, it must be, not a missing 'prompt'
    rows = prepared_rows(tmp_path, "dpo", [{"path": path, "fields": {"prompt": "conversations"}}])
    assert rows[0]["prompt"] == [user("Name a benefit of regular exercise.")]
    # alpaca's columns under a mapping are the user's: no alpaca reading, and the unmapped input is named
    path = write_jsonl(tmp_path / "a.jsonl", [ALPACA])
    spec = {"path": path, "fields": {"prompt": "instruction", "completion": "output"}}
    with pytest.raises(UserError, match=r"a.jsonl:1: 'input' is not empty and this script does not read it"):
        prepared_rows(tmp_path, "sft_completion", [spec])
    rows = prepared_rows(tmp_path, "sft_completion", [{**spec, "ignore": "input"}])
    assert rows == [{"prompt": ALPACA["instruction"], "completion": ALPACA["output"], "input": ALPACA["input"]}]


REFUSED = [
    # (id, script, row, the reason, the source's ignore that lets it train as text, or None)
    ("KTO undesirable", "sft_chat", KTO, "'label' is false (a KTO undesirable example)", ["label"]),
    ("mllm_demo", "sft_chat", MLLM, "'images' is not empty: a multimodal row", ["images"]),
    (
        "an image placeholder alone",
        "sft_chat",
        {"messages": MLLM["messages"]},
        "messages[0] holds an <image> placeholder: a multimodal row",
        ["images"],
    ),
    (
        "an image part",
        "dpo",
        {
            "prompt": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "x.png"}},
                    ],
                }
            ],
            "chosen": "A cat.",
            "rejected": "A dog.",
        },
        "prompt[0] content[1] is of type 'image_url': a multimodal row",
        None,
    ),
    ("alpaca history for completion", "sft_completion", ALPACA_CHAT, "'history' is not empty", ["history", "system"]),
    (
        "a weighted loss",
        "sft_chat",
        {"messages": [user("Hi"), {**assistant("Hello!"), "weight": 0.5}]},
        "messages[1] has weight 0.5: a weighted loss is not supported",
        ["weight"],
    ),
    (
        "a trained user turn (axolotl trains inputs marked so)",
        "sft_chat",
        {"conversations": [{"from": "human", "value": "Hi", "weight": 1}, {"from": "gpt", "value": "Hello!"}]},
        "messages[0] is a user turn marked weight: 1, and only assistant turns are trained",
        ["weight"],
    ),
    (
        "an untrained preference answer",
        "dpo",
        {"prompt": "Hi", "chosen": [{**assistant("Hello!"), "train": False}], "rejected": [assistant("Go away.")]},
        "chosen[0] is marked train: false, and a preference answer is trained whole",
        ["train"],
    ),
    (
        "marks that disagree",
        "sft_chat",
        {"messages": [user("Hi"), {**assistant("Hello!"), "weight": 0, "train": True}]},
        "messages[1] has marks that disagree (weight: 0, train: true)",
        ["weight", "train"],
    ),
    (
        "a flag that is not a boolean",
        "sft_chat",
        {"messages": [user("Hi"), {**assistant("Hello!"), "training": "no"}]},
        'messages[1] has training "no": it must be true or false',
        ["training"],
    ),
    (
        "part of a turn trained (axolotl's train_detail)",
        "sft_chat",
        {"messages": [user("Hi"), {**assistant("Hello!"), "train_detail": [{"begin_offset": 0, "end_offset": 4}]}]},
        "messages[1] has train_detail: training part of a turn is not supported",
        ["train_detail"],
    ),
    (
        "an empty answer between two questions (axolotl's conversation.missingturns.json)",
        "sft_chat",
        {
            "conversations": [
                {"from": "human", "value": "How could I solve minesweeper with topology?"},
                {"from": "gpt", "value": ""},
                {"from": "human", "value": "Could you give me the gist?"},
                {"from": "gpt", "value": "Represent the board as a space."},
            ]
        },
        "messages[1] is an empty assistant turn between two user turns",
        None,
    ),
]


GOOD = {
    "sft_chat": {"messages": [user("Hi"), assistant("Hello!")]},
    "sft_completion": {"prompt": "Hi", "completion": "Hello!"},
    "dpo": {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
}


@pytest.mark.parametrize("script, row, reason, ignore", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_rows_that_would_lose_their_meaning_are_refused(tmp_path, script, row, reason, ignore):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD[script], row])
    with pytest.raises(UserError) as err:
        prepared_rows(tmp_path, script, [path])
    assert str(err.value).startswith(f"{path}:2: {reason}")
    report = DataReport()
    assert prepared_rows(tmp_path, script, [path], report, on_bad_rows="skip") == [GOOD[script]]
    assert list(report.dropped) == [f"bad row: {str(err.value).split(': ', 1)[1]}"]
    if ignore:
        assert len(prepared_rows(tmp_path, script, [{"path": path, "ignore": ignore}])) == 2


@pytest.mark.parametrize("clean", [False, True])
def test_empty_answers_are_removed_and_counted(tmp_path, clean):
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]}
    rows = [
        {"messages": [user("Hi"), assistant("Hello!"), user("Thanks"), assistant(" \n")]},  # a trailing empty answer
        {  # glaive rows may end with an empty gpt turn after the result
            "conversations": [
                {"from": "human", "value": "Convert 500 USD to EUR."},
                {"from": "function_call", "value": json.dumps(CALL)},
                {"from": "observation", "value": '{"converted_amount": 425.5}'},
                {"from": "gpt", "value": ""},
            ],
            "tools": TOOLS,
        },
        {"messages": [user("Hi there"), assistant("")]},  # no answer at all: left whole, for cleaning to drop
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    report = DataReport()
    kept = prepared_rows(tmp_path, "sft_chat", [path], report, clean=dict(CLEAN_DEFAULTS, enabled=clean))
    assert kept[0]["messages"] == [user("Hi"), assistant("Hello!"), user("Thanks")]
    assert kept[1]["messages"] == [
        user("Convert 500 USD to EUR."),
        call,
        {"role": "tool", "content": '{"converted_amount": 425.5}'},
    ]
    assert report.counts["empty_assistant_turns_removed"] == 2
    if clean:
        assert len(kept) == 2 and report.dropped == {"cleaning: empty after normalisation": 1}
    else:
        assert kept[2] == rows[2]


@pytest.mark.parametrize(
    "source, message",
    [
        ({"path": "d.jsonl", "ignore": 5}, "ignore of d.jsonl is a list of column names"),
        ({"path": "d.jsonl", "ignore": ["label", 2]}, "ignore of d.jsonl is a list of column names"),
        ({"path": "d.jsonl", "fields": ["prompt"]}, "fields of d.jsonl maps the script's names to your columns"),
        ({"path": "d.jsonl", "columns": {}}, "a dict with path, split, fields, ignore, weight"),
    ],
)
def test_bad_source_options(source, message):
    with pytest.raises(UserError, match=message):
        load_sources([source], DataReport())


@pytest.fixture(scope="module")
def chat_formats(tmp_path_factory):
    """(tokenizer, chat spec) of the built-in special-tokens format and of Qwen2.5's own template."""
    builtin = load_tokenizer("builtin:tiny")
    qwen = load("qwen2.5", tmp_path_factory.mktemp("real_tokenizers"))
    return {
        "special_tokens": (builtin, prepare_tokenizer(builtin, "special_tokens")),
        "qwen2.5": (qwen, prepare_tokenizer(qwen, "native")),
    }


ANSWERS = [
    {"role": "system", "content": "You answer in one word."},
    user("Capital of France?"),
    assistant("Lyon."),
    user("Are you sure?"),
    assistant("Paris."),
]


def marked(key, value, turns=(2,)):
    """The conversation with `key: value` on the given turns."""
    return {"messages": [{**m, key: value} if i in turns else m for i, m in enumerate(ANSWERS)]}


MARKED = {  # the first answer marked untrained, as each tool writes it
    "axolotl weight 0 (ShareGPT)": WEIGHTED,
    "weight 0": marked("weight", 0),
    "train false": marked("train", False),
    "training false": marked("training", False),
}


@pytest.mark.parametrize("form", MARKED)
@pytest.mark.parametrize("chat_format", ["special_tokens", "qwen2.5"])
def test_a_turn_marked_untrained_takes_no_loss_and_the_others_do(tmp_path, chat_formats, chat_format, form):
    tokenizer, spec = chat_formats[chat_format]
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": ANSWERS}, MARKED[form]])
    unmarked, marked_row = prepared_rows(tmp_path, "sft_chat", [path])
    [plain], _ = chat_example(tokenizer, spec, "all_assistant", unmarked)
    [example], _ = chat_example(tokenizer, spec, "all_assistant", marked_row)
    assert example["input_ids"] == plain["input_ids"]  # a mark changes the loss, never the text
    lyon, paris = spans([int(label != -100) for label in plain["labels"]])
    assert "Lyon." in tokenizer.decode(plain["input_ids"][slice(*lyon)])
    assert "Paris." in tokenizer.decode(plain["input_ids"][slice(*paris)])
    assert example["labels"] == [-100 if lyon[0] <= i < lyon[1] else x for i, x in enumerate(plain["labels"])]


@pytest.mark.parametrize(
    "loss_on, row, reason",
    [
        ("all_assistant", marked("weight", 0, turns=(2, 4)), "no assistant turn to train: each is marked train: false"),
        ("last_assistant", marked("train", False, turns=(4,)), "no assistant turn to train: the last is marked"),
    ],
    ids=["every answer", "the last answer, under loss_on=last_assistant"],
)
def test_a_row_with_no_turn_left_to_train_is_dropped_and_counted(tmp_path, chat_formats, loss_on, row, reason):
    tokenizer, spec = chat_formats["special_tokens"]
    [read] = prepared_rows(tmp_path / "one", "sft_chat", [write_jsonl(tmp_path / "r.jsonl", [row])])
    with pytest.raises(Dropped, match=reason):
        chat_example(tokenizer, spec, loss_on, read)
    recipe = Recipe("sft_chat", chat_row_problem, partial(chat_example, tokenizer, spec, loss_on))
    report = DataReport()
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": ANSWERS}, row])
    assert len(prepare(prepare_params(tmp_path, [data]), recipe, tokenizer, report).train) == 1
    assert [(r.startswith(reason), n) for r, n in report.dropped.items()] == [(True, 1)]
