"""The shipped example task, the experiment files in examples/ and the fork-by-copy habit: custom losses are
the ones used."""

import json
import math
import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import ROOT, read_jsonl, run, run_script, write_jsonl

sys.path.insert(0, os.path.join(ROOT, "examples"))
EXAMPLES = Path(ROOT, "data", "examples")
SHORT = ["max_steps=2", "logging_steps=1", "save_steps=100", "eval_fraction=0", "test_data=", "progress_bar=false"]


def first_loss(out):
    return next(m["loss"] for m in read_jsonl(out / "metrics.jsonl") if "loss" in m)


def test_name_weights_cover_the_function_name_of_each_answer():
    from sft_chat_weighted_name import name_weights

    from common.chat.tokenizer import prepare_tokenizer
    from common.models import load_tokenizer

    tokenizer = load_tokenizer("builtin:tiny")
    prepare_tokenizer(tokenizer, "special_tokens")
    answer = tokenizer("set_timer(minutes=5)<eot>", add_special_tokens=False)["input_ids"]
    prompt = tokenizer("<user>Set a timer for 5 minutes<eot><assistant>", add_special_tokens=False)["input_ids"]
    labels = torch.tensor([[-100] * len(prompt) + answer + [-100] * len(prompt) + answer])  # two answers, packed
    weights = name_weights(labels, tokenizer, 3.0)[0].tolist()
    name = next(i for i, t in enumerate(answer) if "(" in tokenizer.decode([t])) + 1
    expected = [1.0] * len(prompt) + [3.0] * name + [1.0] * (len(answer) - name)
    assert weights == expected * 2


@pytest.mark.e2e
def test_weighted_name_sft_is_the_loss_used_and_equals_sft_chat_at_weight_1(tmp_path):
    script = "examples/sft_chat_weighted_name.py"
    runs = {
        "sft_chat": ("sft_chat.py", []),
        "weight 1": (script, ["name_weight=1"]),
        "weight 3": (script, ["name_weight=3"]),
    }
    losses = {}
    for name, (path, extra) in runs.items():
        out = tmp_path / name.replace(" ", "_")
        result = run_script(path, *SHORT, *extra, f"output_dir={out}")
        assert result.returncode == 0, result.stderr[-3000:]
        losses[name] = first_loss(out)
    assert losses["weight 1"] == pytest.approx(losses["sft_chat"], abs=1e-4)  # same batch, same loss
    assert losses["weight 3"] > losses["sft_chat"] + 0.5  # the name's tokens count three times
    assert (tmp_path / "weight_3" / "final" / "model.safetensors").exists()


def test_dpop_loss_is_dpo_at_lambda_0_and_penalises_a_falling_chosen_answer():
    from dpo_positive import dpop_loss

    chosen, rejected = torch.tensor([-5.0, -3.0]), torch.tensor([-6.0, -9.0])
    ref_chosen, ref_rejected = torch.tensor([-4.0, -3.5]), torch.tensor([-6.5, -8.0])
    plain, _ = dpop_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1, lam=0.0)
    delta = (chosen - ref_chosen) - (rejected - ref_rejected)
    torch.testing.assert_close(plain, -F.logsigmoid(0.1 * delta))
    positive, penalty = dpop_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1, lam=50.0)
    assert penalty.tolist() == [1.0, 0.0]  # only the first chosen answer fell below the reference
    assert positive[0] > plain[0] + 1.0 and positive[1] == plain[1]


@pytest.mark.e2e
@pytest.mark.parametrize("reference", ["cached", "lora"])
def test_dpo_positive_runs_and_logs_its_penalty(tmp_path, sft_model, reference):
    out = tmp_path / "out"
    pairs = write_jsonl(tmp_path / "pairs.jsonl", read_jsonl(f"{ROOT}/data/examples/preference_train.jsonl")[:32])
    extra = ["lora.enabled=true", "lora.r=4"] if reference == "lora" else [f"ref_cache_dir={tmp_path / 'cache'}"]
    result = run_script(
        "examples/dpo_positive.py",
        f"model={sft_model}",
        f"data={pairs}",
        *SHORT,
        "exact_match_data=",
        "batch_size=8",
        *extra,
        f"output_dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [m for m in read_jsonl(out / "metrics.jsonl") if "loss" in m]
    assert all("dpop/penalty" in m for m in metrics)  # TRL never logs this: the subclass computed the loss
    assert first_loss(out) == pytest.approx(math.log(2), abs=1e-3)  # policy = reference at the first step
    assert (out / "final" / "model.safetensors").exists()


def test_a_copied_script_runs_unchanged(tmp_path):
    copy = os.path.join(ROOT, f"my_sft_{uuid.uuid4().hex[:8]}.py")
    shutil.copy(os.path.join(ROOT, "sft_chat.py"), copy)
    try:
        result = run([sys.executable, copy, *SHORT, f"output_dir={tmp_path / 'out'}"])
    finally:
        os.remove(copy)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "final" / "model.safetensors").exists()


def test_row_hook_maps_another_schema_before_the_checks(tmp_path):
    rows = read_jsonl(f"{ROOT}/data/examples/chat_train.jsonl")[:64]
    data = write_jsonl(
        tmp_path / "qa.jsonl", [{"q": r["messages"][-2]["content"], "a": r["messages"][-1]["content"]} for r in rows]
    )
    experiment = tmp_path / "experiment.py"
    experiment.write_text(
        "from common.params import resolve\n"
        "from sft_chat import PARAMS, RULES, main\n\n\n"
        "def to_chat(row):\n"
        "    if row['a'].startswith('play_music'):\n"
        "        return None\n"
        "    return {'messages': [{'role': 'user', 'content': row['q']}, "
        "{'role': 'assistant', 'content': row['a']}]}\n\n\n"
        "if __name__ == '__main__':\n"
        "    main(resolve(PARAMS, RULES), row_hook=to_chat)\n"
    )
    out = tmp_path / "out"
    args = [
        f"data={data}",
        "dry_run=true",
        "eval_fraction=0",
        "test_data=",
        f"output_dir={out}",
        f"data_cache_dir={tmp_path}",
    ]
    result = run([sys.executable, str(experiment), *args])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "data_report.json").read_text(encoding="utf-8"))
    music = sum(r["messages"][-1]["content"].startswith("play_music") for r in rows)
    assert music and report["dropped"]["row_hook returned None"] == music
    assert report["cleaning"]["rows_in"] == 64 - music
    plain = run_script("sft_chat.py", *args)  # without the hook the same rows are not chat rows
    assert plain.returncode == 2 and "qa.jsonl:1: row has no 'messages' field" in plain.stderr


def test_the_generator_writes_the_shipped_example_files_byte_for_byte(tmp_path):
    shutil.copy(EXAMPLES / "make_example_task.py", tmp_path)  # it writes next to itself
    result = run([sys.executable, str(tmp_path / "make_example_task.py")])
    assert result.returncode == 0, result.stderr[-3000:]
    shipped = sorted(path.name for path in EXAMPLES.glob("*.jsonl"))
    assert sorted(path.name for path in tmp_path.glob("*.jsonl")) == shipped
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), name


def string_call(function: dict) -> str:
    """A tool call written the way the chat and completion files write it."""
    arguments = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in function["arguments"].items())
    return f"{function['name']}({arguments})"


JSON_TYPES = {"string": str, "integer": int, "number": (int, float)}


@pytest.mark.parametrize(
    "name, reference", [("tools_train.jsonl", "completion_train.jsonl"), ("tools_test.jsonl", "completion_test.jsonl")]
)
def test_each_tool_row_calls_a_listed_tool_with_the_slot_values_of_its_request(name, reference):
    rows, pairs = read_jsonl(EXAMPLES / name), read_jsonl(EXAMPLES / reference)
    functions = ["get_weather", "set_timer", "send_message", "play_music", "convert_currency", "add_event"]
    assert [tool["function"]["name"] for tool in rows[0]["tools"]] == functions
    assert len(rows) == len(pairs)
    for row, pair in zip(rows, pairs, strict=False):
        assert row["tools"] == rows[0]["tools"]  # the same list in the same order, as a product sends it
        schemas = {tool["function"]["name"]: tool["function"]["parameters"] for tool in row["tools"]}
        assert [m["content"] for m in row["messages"] if m["role"] == "user"] == [pair["prompt"]]
        (call,) = [call for m in row["messages"] for call in m.get("tool_calls", [])]
        function = call["function"]
        assert function["name"] in schemas and call["id"] == "call_1"
        schema = schemas[function["name"]]
        assert list(function["arguments"]) == schema["required"] == list(schema["properties"])
        for key, value in function["arguments"].items():
            assert isinstance(value, JSON_TYPES[schema["properties"][key]["type"]]) and str(value) in pair["prompt"]
        assert string_call(function) == pair["completion"]  # the same slot values as the string call


def roles(row):
    return [m["role"] for m in row["messages"] if m["role"] != "system"]


def test_a_fifth_of_tool_training_rows_go_on_with_the_result_and_test_rows_end_at_the_call():
    train, test = read_jsonl(EXAMPLES / "tools_train.jsonl"), read_jsonl(EXAMPLES / "tools_test.jsonl")
    multi_step = [row for row in train if roles(row) == ["user", "assistant", "tool", "assistant"]]
    assert all(roles(row) == ["user", "assistant"] for row in test + [r for r in train if r not in multi_step])
    assert 0.18 < len(multi_step) / len(train) < 0.22
    for row in multi_step:
        (call,), result, reply = row["messages"][-3]["tool_calls"], row["messages"][-2], row["messages"][-1]
        assert (result["tool_call_id"], result["name"]) == (call["id"], call["function"]["name"])
        assert isinstance(json.loads(result["content"]), dict)
        assert reply["content"] and "tool_calls" not in reply
    for row in test:
        assert row["messages"][-1]["content"] == "" and row["messages"][-1]["tool_calls"]
    for rows in (train, test):
        assert 0.15 < sum(row["messages"][0]["role"] == "system" for row in rows) / len(rows) < 0.25


def user_requests(name):
    return {m["content"] for row in read_jsonl(EXAMPLES / name) for m in row["messages"] if m["role"] == "user"}


@pytest.mark.parametrize("train", ["tools_train.jsonl", "chat_train.jsonl"])
def test_held_out_tool_requests_are_chat_tests_and_never_trained_on(train):
    held_out = user_requests("tools_test.jsonl")
    assert held_out == user_requests("chat_test.jsonl") and len(held_out) == 200
    assert not held_out & user_requests(train)


XLAM_TOOLS = [
    {
        "name": "get_stock",
        "description": "Latest price of a stock.",
        "parameters": {
            "symbol": {"description": "Ticker.", "type": "str", "default": "TSLA"},
            "days": {"description": "History length.", "type": "int"},
        },
    },
    {
        "name": "filter_words",
        "description": "Words of a list above a length.",
        "parameters": {
            "words": {"description": "The words.", "type": "List[str]"},
            "min_length": {"description": "Shortest kept.", "type": "float, optional"},
            "strict": {"description": "Exclusive bound.", "type": "Optional[bool]"},
            "options": {"description": "Anything else.", "type": "Dict[str, Any]"},
            "extra": {"description": "Passed through.", "type": "Any"},
        },
    },
]
XLAM_SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "symbol": {"type": "string", "description": "Ticker.", "default": "TSLA"},
            "days": {"type": "integer", "description": "History length."},
        },
        "required": ["days"],
    },
    {
        "type": "object",
        "properties": {
            "words": {"type": "array", "description": "The words."},
            "min_length": {"type": "number", "description": "Shortest kept."},
            "strict": {"type": "boolean", "description": "Exclusive bound."},
            "options": {"type": "object", "description": "Anything else."},
            "extra": {"description": "Passed through."},
        },
        "required": ["words", "options", "extra"],
    },
]


def xlam_row(query, tools, answers):
    return {"query": query, "tools": json.dumps(tools), "answers": json.dumps(answers)}


def chat_tools(*indices):
    return [
        {
            "type": "function",
            "function": {
                "name": XLAM_TOOLS[i]["name"],
                "parameters": XLAM_SCHEMAS[i],
                "description": XLAM_TOOLS[i]["description"],
            },
        }
        for i in indices
    ]


def assistant_calls(*calls):
    return {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": c} for c in calls]}


STOCK = {"name": "get_stock", "arguments": {"symbol": "AAPL", "days": 5}}
WORDS = {"name": "filter_words", "arguments": {"words": ["a", "tree"], "options": {}, "extra": 1}}


@pytest.mark.parametrize(
    "row, chat",
    [
        (
            xlam_row("AAPL over 5 days?", XLAM_TOOLS[:1], [STOCK]),
            {
                "tools": chat_tools(0),
                "messages": [{"role": "user", "content": "AAPL over 5 days?"}, assistant_calls(STOCK)],
            },
        ),
        (
            xlam_row("AAPL, and long words", XLAM_TOOLS, [STOCK, WORDS]),  # parallel calls: one turn
            {
                "tools": chat_tools(0, 1),
                "messages": [{"role": "user", "content": "AAPL, and long words"}, assistant_calls(STOCK, WORDS)],
            },
        ),
    ],
)
def test_xlam_rows_become_tool_calling_chat_rows(row, chat):
    from xlam_tools import to_chat

    assert to_chat(row) == chat


@pytest.mark.e2e
def test_xlam_experiment_trains_on_xlam_rows(tmp_path):
    cities = ["Paris", "Oslo", "Lima", "Rome", "Cairo", "Seoul", "Quito", "Dakar"]
    rows = [
        xlam_row(
            f"Price of {c} Motors over {n} days, and words of {c}",
            XLAM_TOOLS,
            [
                {"name": "get_stock", "arguments": {"symbol": c.upper(), "days": n}},
                {"name": "filter_words", "arguments": {"words": [c], "options": {}, "extra": n}},
            ],
        )
        for c in cities
        for n in (3, 7)
    ]
    data = write_jsonl(tmp_path / "xlam.jsonl", rows)
    out = tmp_path / "out"
    result = run_script(
        "examples/xlam_tools.py", f"data={data}", *SHORT, f"output_dir={out}", f"data_cache_dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "data_report.json").read_text(encoding="utf-8"))
    assert report["cleaning"]["rows_in"] == len(rows) and report["train_trained_tokens"] > 0
    assert (out / "final" / "model.safetensors").exists()


@pytest.mark.parametrize(
    "reference, answer, credit",
    [
        ('send_message(contact="Hugo", text="love you")', ' send_message(contact="Hugo", text="love you") ', 1.0),
        ('send_message(contact="Hugo", text="love you")', "send_message(contact='Hugo', text='love you')", 0.75),
        ('send_message(contact="Hugo", text="love you")', 'send_message(contact="Hugo", text="love")', 0.5),
        ('send_message(contact="Hugo", text="love you")', 'send_message(contact="Hugo")', 0.5),
        ('send_message(contact="Hugo", text="love you")', 'send_message(contact="Hugo", text="love you", x=1)', 7 / 12),
        ('send_message(contact="Hugo", text="love you")', 'play_music(contact="Hugo")', 0.25),
        ('send_message(contact="Hugo", text="love you")', "set_timer(minutes=4)", 0.0),
        ('send_message(contact="Hugo", text="love you")', "Sure! I'll message Hugo.", 0.0),
        ('send_message(contact="Hugo", text="love you")', "send_message(**kwargs)", 0.0),
        ('send_message(contact="Hugo", text="love you")', 'send_message("Hugo", "love you")', 0.0),
        ("set_timer(minutes=45)", "set_timer(minutes=45.0)", 0.75),  # 45 == 45.0 as values, not as text
        ("I can't do that.", "set_timer(minutes=45)", 0.0),  # a prose reference: exact match or nothing
    ],
)
def test_partial_credit_scores_near_misses_below_the_reference(reference, answer, credit):
    from common.rewards import load_function

    partial_credit = load_function(f"{EXAMPLES}/verify.py:partial_credit", "rewards")
    row = {"messages": [{"role": "user", "content": "Message Hugo"}, {"role": "assistant", "content": reference}]}
    assert partial_credit(row, answer) == pytest.approx(credit)
    assert partial_credit({"prompt": "p", "completion": reference}, answer) == pytest.approx(credit)
