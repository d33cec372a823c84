"""The bad-input matrix of all four scripts: every case is one clear `error:` line naming the file and
line or the key, exit status 2, no traceback, nothing in final/. A new case is one line in CASES.

The runs go through the scripts' own entry points (resolve, then main) in this process, so the table
costs no interpreter starts; they stop before any training.
"""

import contextlib

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from common.models import BUILTIN, load_tokenizer
from tests.conftest import FAST, assert_one_line_exit_2, free_port, run_in_process, teacher_server, write_jsonl

CHAT = {
    "messages": [
        {"role": "user", "content": "Play Adele"},
        {"role": "assistant", "content": 'play_music(artist="Adele")'},
    ]
}
COMPLETION = {"prompt": "Play Adele", "completion": 'play_music(artist="Adele")'}
PAIR = {"prompt": "Play Adele", "chosen": 'play_music(artist="Adele")', "rejected": 'play_music(artist="Sade")'}
LONG_PROMPT = {
    "messages": [{"role": "user", "content": "Play " * 20}, {"role": "assistant", "content": "play_music()"}]
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "play_music",
            "parameters": {"type": "object", "properties": {"artist": {"type": "string"}}},
        },
    }
]
ASK = {"role": "user", "content": "Play Adele"}
TOOL_ROWS = [  # (what is wrong, messages, the reason given)
    (
        "tool_calls not a list",
        [ASK, {"role": "assistant", "content": "", "tool_calls": {"name": "play_music"}}],
        "messages[1] tool_calls must be a list",
    ),
    (
        "arguments not JSON",
        [
            ASK,
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "play_music", "arguments": "{artist: Adele}"}}
                ],
            },
        ],
        "messages[1] tool_calls[0] arguments of 'play_music' are not valid JSON",
    ),
    (
        "result before any call",
        [ASK, {"role": "tool", "content": "ok"}, {"role": "assistant", "content": "Done."}],
        "messages[1] is a tool result with no assistant tool call before it",
    ),
    (
        "unknown function",
        [
            ASK,
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"type": "function", "function": {"name": "stop_music", "arguments": {}}}],
            },
        ],
        "messages[1] tool_calls[0] calls 'stop_music', which is not in the row's tools",
    ),
]
ADELE_CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [{"type": "function", "function": {"name": "play_music", "arguments": {"artist": "Adele"}}}],
}
TOOL_PAIRS = [  # (what is wrong, pair, the reason given)
    (
        "tool_calls not a list",
        {
            "prompt": [ASK],
            "chosen": [ADELE_CALL],
            "rejected": [{"role": "assistant", "content": "", "tool_calls": {"name": "play_music"}}],
        },
        "rejected[0] tool_calls must be a list",
    ),
    (
        "arguments not JSON",
        {
            "prompt": [ASK],
            "chosen": [ADELE_CALL],
            "rejected": [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"type": "function", "function": {"name": "play_music", "arguments": "{artist: Sade}"}}
                    ],
                }
            ],
        },
        "rejected[0] tool_calls[0] arguments of 'play_music' are not valid JSON",
    ),
    (
        "result before any call",
        {"prompt": [ASK, {"role": "tool", "content": "ok"}], "chosen": "Done.", "rejected": "Failed."},
        "prompt[1] is a tool result with no assistant tool call before it",
    ),
    (
        "unknown function",
        {
            "prompt": [ASK],
            "chosen": [ADELE_CALL],
            "rejected": [
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"type": "function", "function": {"name": "stop_music", "arguments": {}}}],
                }
            ],
        },
        "rejected[0] tool_calls[0] calls 'stop_music', which is not in the row's tools",
    ),
]
GOOD = {
    "sft_chat.py": CHAT,
    "sft_completion.py": COMPLETION,
    "dpo.py": PAIR,
    "synth_data.py": CHAT,
    "grpo.py": CHAT,
    "distill.py": CHAT,
}


def rows(name, *bad, key="data"):
    """A data file whose line 1 is a good row for the script and whose next lines are `bad`."""
    return lambda p, script: [f"{key}={write_jsonl(p / name, [GOOD[script], *bad])}"]


def skipped(name, *bad, key="data"):
    """A data file of bad rows alone, read with on_bad_rows=skip: nothing is left to run on."""
    return lambda p, script: [f"{key}={write_jsonl(p / name, list(bad))}", "on_bad_rows=skip"]


def written(path, text) -> str:
    path.write_text(text)
    return str(path)


def file(name, text, key="data"):
    return lambda p, script: [f"{key}={written(p / name, text)}"]


def config(text):
    return lambda p, script: ["--config", written(p / "c.yaml", text)]


CASES = [
    # (script, id, args: a list or callable(tmp_path, script) -> list, the message the error line holds)
    # PARAMS: every key type, nested keys, choices, bounds, config files
    *[
        (s, "unknown key", ["learnig_rate=1e-3"], "unknown PARAMS key 'learnig_rate'; did you mean learning_rate")
        for s in ("sft_chat.py", "sft_completion.py", "dpo.py")
    ],
    ("sft_chat.py", "int given text", ["batch_size=many"], "batch_size must be int"),
    ("sft_completion.py", "int given a float", ["max_length=12.5"], "max_length must be int"),
    ("dpo.py", "float given text", ["beta=strong"], "beta must be float"),
    ("sft_chat.py", "bool given text", ["resume=maybe"], "resume must be bool"),
    ("sft_completion.py", "a source that is a number", ["data=5"], "data: a source is a path or a mapping"),
    ("sft_chat.py", "dict given a number", ["lora=5"], "lora must be dict"),
    ("sft_chat.py", "unknown nested key", ["lora.rank=8"], "unknown PARAMS key 'lora.rank'; did you mean lora.r"),
    ("sft_chat.py", "nested bool given text", ["lora.enabled=sometimes"], "lora.enabled must be bool"),
    ("sft_chat.py", "bad choice", ["chat_format=chatml"], "chat_format='chatml' is not one of"),
    *[
        (s, "bad reasoning mode", ["reasoning=hide"], "reasoning='hide' is not one of 'keep', 'drop'")
        for s in ("sft_chat.py", "dpo.py")
    ],
    (
        "sft_chat.py",
        "chat_template with special tokens",
        ["chat_template=t.jinja"],
        "chat_template applies to chat_format=native",
    ),
    (
        "sft_chat.py",
        "missing chat_template file",
        ["chat_format=native", "chat_template=/nonexistent/t.jinja"],
        "chat_template file not found: /nonexistent/t.jinja",
    ),
    (
        "sft_chat.py",
        "chat_template that does not compile",
        lambda p, s: ["chat_format=native", f"chat_template={written(p / 't.jinja', '{% for m in messages %}')}"],
        "does not compile",
    ),
    (
        "sft_chat.py",
        "native on a model without a template",
        ["chat_format=native"],
        "chat_format=native needs a chat template",
    ),
    ("sft_chat.py", "int below its bound", ["batch_size=0"], "batch_size=0 must be >= 1"),
    ("sft_completion.py", "fraction out of range", ["eval_fraction=1.5"], "eval_fraction=1.5 must be in [0, 1)"),
    ("sft_chat.py", "not key=value", ["stray"], "unexpected argument 'stray'"),
    ("dpo.py", "missing config file", ["--config", "/nonexistent.yaml"], "config file not found: /nonexistent.yaml"),
    (
        "sft_chat.py",
        "unknown key in a config file",
        config("learning_rat: 1.0\n"),
        "c.yaml: unknown PARAMS key 'learning_rat'",
    ),
    ("sft_completion.py", "malformed config file", config("a: [1, 2\n"), "c.yaml"),
    ("synth_data.py", "config file that is not a mapping", config("- 1\n- 2\n"), "c.yaml"),
    (
        "sft_chat.py",
        "unknown cleaning step",
        ["clean.dedup=true"],
        "unknown PARAMS key 'clean.dedup'; did you mean clean.",
    ),
    ("sft_chat.py", "threshold above 1", ["clean.threshold=1.5"], "clean.threshold=1.5 must be in [0, 1]"),
    ("sft_completion.py", "threshold below 0", ["clean.threshold=-0.1"], "clean.threshold=-0.1 must be in [0, 1]"),
    (
        "dpo.py",
        "repeated-line share above 1",
        ["clean.max_repeated_lines=2"],
        "clean.max_repeated_lines=2.0 must be in [0, 1]",
    ),
    *[
        (s, "missing eval set", ["clean.eval_sets=[/nonexistent/bench.jsonl]"], "clean.eval_sets: data file not found")
        for s in ("sft_chat.py", "sft_completion.py", "dpo.py")
    ],
    ("dpo.py", "unknown loss", ["loss_type=[sigmoid,sigmoidd]"], "loss_type='sigmoidd' is not one of 'sigmoid'"),
    ("dpo.py", "smoothing out of range", ["label_smoothing=0.5"], "label_smoothing=0.5 must be in [0, 0.5)"),
    ("sft_completion.py", "unknown key of another script", ["chat_format=native"], "unknown PARAMS key 'chat_format'"),
    (
        "sft_completion.py",
        "bad template",
        ["template=Q: {question}"],
        "template: not a str.format pattern with only {prompt}",
    ),
    ("sft_completion.py", "template without prompt", ["template=Answer:"], "template: must contain {prompt}"),
    ("synth_data.py", "unknown stage", ["stages=[answers]"], "stages='answers' is not one of"),
    ("synth_data.py", "stages out of order", ["stages=[clean,responses]"], "must be a non-empty subset of"),
    ("synth_data.py", "unknown backend", ["backend=tgi"], "backend='tgi' is not one of 'hf', 'vllm', 'openai'"),
    (
        "synth_data.py",
        "missing API key",
        ["backend=openai", "base_url=https://api.example.com/v1", "model=m"],
        "needs an API key in the environment variable OPENAI_API_KEY",
    ),
    (
        "synth_data.py",
        "unreachable endpoint",
        lambda p, s: ["backend=openai", f"base_url=http://127.0.0.1:{free_port()}/v1", "model=m"],
        "cannot reach the endpoint http://127.0.0.1:",
    ),
    (
        "synth_data.py",
        "missing verifier",
        ["verifier=nowhere/verify.py:check"],
        "verifier: file not found: nowhere/verify.py",
    ),
    ("synth_data.py", "judge without model", ["judge=llm"], "judge=llm needs judge_model"),
    ("synth_data.py", "similarity out of range", ["max_similarity=1.5"], "max_similarity=1.5 must be in (0, 1]"),
    # files and folders
    *[(s, "missing data file", ["data=/nonexistent/train.jsonl"], "data file not found") for s in GOOD],
    (
        "sft_chat.py",
        "missing model folder",
        lambda p, s: [*rows("g.jsonl")(p, s), "model=./no/such/model"],
        "model folder not found: ./no/such/model",
    ),
    ("synth_data.py", "missing model folder", ["model=./no/such/model"], "model folder not found: ./no/such/model"),
    (
        "sft_chat.py",
        "missing eval file",
        lambda p, s: [*rows("g.jsonl")(p, s), "eval_data=/nonexistent/eval.jsonl"],
        "data file not found",
    ),
    ("sft_chat.py", "missing test file", ["test_data=/nonexistent/test.jsonl"], "test_data file not found"),
    (
        "sft_chat.py",
        "everything truncated",
        lambda p, s: [f"data={write_jsonl(p / 't.jsonl', [LONG_PROMPT])}", "max_length=8"],
        "no training rows left",
    ),
    *[(s, "unknown file type", file("d.txt", "hello\n"), "d.txt") for s in ("sft_chat.py", "dpo.py")],
    *[
        (s, "every row bad, skipped", skipped("b.jsonl", {"foo": 1}, ["x"]), "b.jsonl was bad (2; first: ")
        for s in GOOD
    ],
    (
        "sft_chat.py",
        "every eval row bad, skipped",
        lambda p, s: [*rows("g.jsonl")(p, s), *skipped("e.jsonl", {"foo": 1}, key="eval_data")(p, s)],
        "no rows left in eval_data: every row of ",
    ),
    # rows: every schema, the bad row is on line 2
    *[(s, "malformed JSON", rows("m.jsonl", '{"oops'), "m.jsonl:2: malformed JSON") for s in GOOD],
    *[
        (s, "not an object", rows("o.jsonl", '["p", "c"]'), "o.jsonl:2: row must be a JSON object")
        for s in ("sft_completion.py", "sft_chat.py")
    ],
    *[
        (s, "no messages", rows("n.jsonl", {"text": "x"}), "n.jsonl:2: row has no 'messages' field")
        for s in ("sft_chat.py",)
    ],
    ("grpo.py", "no prompt", rows("n.jsonl", {"text": "x"}), "n.jsonl:2: row has neither 'messages' nor 'prompt'"),
    (
        "grpo.py",
        "prompt ends with the answer",
        rows("a.jsonl", {"messages": [{"role": "assistant", "content": "hi"}]}),
        "a.jsonl:2: the prompt must end with a non-empty user turn or a tool result",
    ),
    # distill.py: the teacher, the student, their vocabularies, the prompt budget
    ("distill.py", "no prompt", rows("n.jsonl", {"text": "x"}), "n.jsonl:2: row has neither 'messages' nor 'prompt'"),
    ("distill.py", "teacher folder missing", ["teacher=./no/such/teacher"], "teacher: model folder not found"),
    (
        "distill.py",
        "teacher folder without weights",
        lambda p, script: [f"teacher={p}"],
        "teacher: cannot load the tokenizer of model",
    ),
    ("distill.py", "teacher with no weights", ["teacher=common/builtin_tiny"], "teacher: cannot load model"),
    (
        "distill.py",
        "another vocabulary",
        ["student_init=builtin:tiny"],
        "the student's tokenizer (builtin:tiny, 954 tokens) and the teacher's",
    ),
    ("distill.py", "prune: not a number", ["student_init=prune:half"], "prune:N takes a whole number of layers"),
    (
        "distill.py",
        "prune: too many layers",
        ["student_init=prune:4"],
        "the teacher has 4 layers; keep between 1 and 3",
    ),
    ("distill.py", "beta out of range", ["beta=2"], "beta=2.0 must be in [0, 1]"),
    (
        "distill.py",
        "every prompt longer than the budget",
        lambda p, script: [
            f"data={write_jsonl(p / 'long.jsonl', [LONG_PROMPT] * 3)}",
            "clean.enabled=false",
            "max_length=40",
            "max_completion_length=32",
        ],
        "no prompts left in data (prompt longer than max_length - max_completion_length = 8 tokens: 3)",
    ),
    (
        "synth_data.py",
        "row without a prompt",
        rows("x.jsonl", {"text": "hi"}),
        "x.jsonl:2: row has neither 'messages' nor 'prompt'",
    ),
    (
        "sft_chat.py",
        "unknown role",
        rows("r.jsonl", {"messages": [{"role": "bot", "content": "x"}]}),
        "r.jsonl:2: messages[0] has unknown role 'bot'",
    ),
    (
        "sft_chat.py",
        "non-string content",
        rows("c.jsonl", {"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "y"}]}),
        "c.jsonl:2: messages[0] content must be a string",
    ),
    (
        "sft_chat.py",
        "reasoning twice",
        rows(
            "t.jsonl",
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "<think>a</think>b", "reasoning_content": "a"},
                ]
            },
        ),
        "t.jsonl:2: messages[1] has both reasoning_content and a <think> block",
    ),
    (
        "sft_chat.py",
        "reasoning not a string",
        rows(
            "t.jsonl",
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "b", "reasoning_content": ["a"]},
                ]
            },
        ),
        "t.jsonl:2: messages[1] reasoning_content must be a string",
    ),
    (
        "sft_chat.py",
        "no assistant turn",
        rows("a.jsonl", {"messages": [{"role": "user", "content": "x"}]}),
        "a.jsonl:2: conversation has no assistant turn",
    ),
    *[
        (
            "sft_chat.py",
            f"tool row: {what}",
            rows("f.jsonl", {"tools": TOOLS, "messages": messages}),
            f"f.jsonl:2: {reason}",
        )
        for what, messages, reason in TOOL_ROWS
    ],
    *[
        ("dpo.py", f"tool pair: {what}", rows("f.jsonl", {"tools": TOOLS, **pair}), f"f.jsonl:2: {reason}")
        for what, pair, reason in TOOL_PAIRS
    ],
    *[
        (
            "synth_data.py",
            f"tool row: {what}",
            rows("f.jsonl", {"tools": TOOLS, "messages": messages}),
            f"f.jsonl:2: {reason}",
        )
        for what, messages, reason in TOOL_ROWS
    ],
    (
        "sft_chat.py",
        "tools not JSON",
        rows("j.jsonl", {"tools": "[{", "messages": CHAT["messages"]}),
        "j.jsonl:2: 'tools' is a string but not valid JSON",
    ),
    (
        "sft_chat.py",
        "ShareGPT with an unknown speaker",
        rows("s.jsonl", {"conversations": [{"from": "robot", "value": "x"}]}),
        "s.jsonl:2:",
    ),
    # rows from other tools that a text script would silently damage (tests/test_layouts.py has the layouts read)
    (
        "sft_chat.py",
        "image-text row (mllm_demo)",
        rows("i.jsonl", {"messages": CHAT["messages"], "images": ["mllm_demo_data/1.jpg"]}),
        "i.jsonl:2: 'images' is not empty: a multimodal row",
    ),
    (
        "synth_data.py",
        "image placeholder in a seed",
        rows("i.jsonl", {"messages": [{"role": "user", "content": "<image>Who is this?"}]}),
        "i.jsonl:2: messages[0] holds an <image> placeholder",
    ),
    (
        "sft_chat.py",
        "image content part",
        rows(
            "p.jsonl",
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url"}]},
                    {"role": "assistant", "content": "y"},
                ]
            },
        ),
        "p.jsonl:2: messages[0] content[1] is of type 'image_url'",
    ),
    (
        "sft_chat.py",
        "KTO undesirable row",
        rows("k.jsonl", {**CHAT, "label": False}),
        "k.jsonl:2: 'label' is false (a KTO undesirable example)",
    ),
    (
        "sft_chat.py",
        "a weighted turn (axolotl)",
        rows("w.jsonl", {"messages": [ASK, {"role": "assistant", "content": "ok", "weight": 0.5}]}),
        "w.jsonl:2: messages[1] has weight 0.5: a weighted loss is not supported",
    ),
    (
        "sft_chat.py",
        "empty answer between two user turns",
        rows("e.jsonl", {"messages": [ASK, {"role": "assistant", "content": ""}, *CHAT["messages"]]}),
        "e.jsonl:2: messages[1] is an empty assistant turn between two user turns",
    ),
    (
        "sft_completion.py",
        "alpaca history",
        rows("a.jsonl", {"instruction": "p", "input": "", "output": "c", "history": [["q", "a"]]}),
        "a.jsonl:2: 'history' is not empty and this script does not read it",
    ),
    (
        "sft_completion.py",
        "alpaca input a mapping leaves out",
        lambda p, s: [
            f"data=[{{path: {write_jsonl(p / 'a.jsonl', [{'instruction': 'p', 'input': 'i', 'output': 'c'}])}, "
            "fields: {prompt: instruction, completion: output}}]"
        ],
        "a.jsonl:1: 'input' is not empty and this script does not read it",
    ),
    (
        "sft_chat.py",
        "ignore that is not a list of columns",
        lambda p, s: [f"data=[{{path: {write_jsonl(p / 'g.jsonl', [CHAT])}, ignore: 5}}]"],
        "ignore of ",
    ),
    (
        "sft_completion.py",
        "both forms",
        rows("b.jsonl", {"text": "x", "prompt": "p", "completion": "c"}),
        "b.jsonl:2: row has both 'text'",
    ),
    (
        "sft_completion.py",
        "neither form",
        rows("n.jsonl", {"input": "p", "output": "c"}),
        "n.jsonl:2: row has neither 'text' nor",
    ),
    (
        "sft_completion.py",
        "empty completion",
        rows("e.jsonl", {"prompt": "p", "completion": ""}),
        "e.jsonl:2: 'completion' is empty",
    ),
    (
        "sft_completion.py",
        "no completion",
        rows("c.jsonl", {"prompt": "p"}),
        "c.jsonl:2: row has no 'completion' field",
    ),
    (
        "sft_completion.py",
        "non-string prompt",
        rows("s.jsonl", {"prompt": ["p"], "completion": "c"}),
        "s.jsonl:2: 'prompt' must be a string",
    ),
    (
        "sft_completion.py",
        "non-string text",
        rows("t.jsonl", {"text": 5}),
        "t.jsonl:2: 'text' must be a string, got int",
    ),
    (
        "dpo.py",
        "missing chosen",
        rows("c.jsonl", {"prompt": "p", "rejected": "r"}),
        "c.jsonl:2: row has no 'chosen' field",
    ),
    (
        "dpo.py",
        "missing rejected",
        rows("r.jsonl", {"prompt": "p", "chosen": "c"}),
        "r.jsonl:2: row has no 'rejected' field",
    ),
    (
        "dpo.py",
        "identical",
        rows("i.jsonl", {"prompt": "p", "chosen": "same", "rejected": " same"}),
        "i.jsonl:2: 'chosen' and 'rejected' are identical",
    ),
    (
        "dpo.py",
        "empty chosen",
        rows("e.jsonl", {"prompt": "p", "chosen": "", "rejected": "r"}),
        "e.jsonl:2: 'chosen' is empty",
    ),
    (
        "dpo.py",
        "empty rejected message",
        rows(
            "m.jsonl",
            {
                "prompt": "p",
                "chosen": [{"role": "assistant", "content": "c"}],
                "rejected": [{"role": "assistant", "content": " "}],
            },
        ),
        "m.jsonl:2: 'rejected' is empty",
    ),
    (
        "dpo.py",
        "mixed forms",
        rows("x.jsonl", {"prompt": "p", "chosen": "c", "rejected": [{"role": "assistant", "content": "r"}]}),
        "x.jsonl:2: 'chosen' and 'rejected' must both be strings or both be message lists",
    ),
    (
        "dpo.py",
        "non-string",
        rows("n.jsonl", {"prompt": "p", "chosen": 3, "rejected": "r"}),
        "n.jsonl:2: 'chosen' must be a string or a list of messages",
    ),
    (
        "dpo.py",
        "prompt ends with assistant",
        rows("a.jsonl", {"prompt": [{"role": "assistant", "content": "x"}], "chosen": "c", "rejected": "r"}),
        "a.jsonl:2: the prompt's last message must be from the user",
    ),
]

# What each script needs besides the case's own arguments to stop before training, quickly.
BASE = {
    "sft_chat.py": lambda p, model: [*FAST],
    "sft_completion.py": lambda p, model: [*FAST],
    "dpo.py": lambda p, model: [
        f"model={model}",
        "test_data=",
        "exact_match_data=",
        "max_steps=1",
        f"ref_cache_dir={p / 'cache'}",
    ],
    "synth_data.py": lambda p, model: [f"model={model}", "progress_bar=false", "test_data="],
    "grpo.py": lambda p, model: [f"model={model}", "progress_bar=false", "test_data=", "max_steps=1"],
    "distill.py": lambda p, model: [f"teacher={model}", "progress_bar=false", "test_data=", "max_steps=1"],
}


@pytest.mark.parametrize(
    "script, args, message", [(c[0], *c[2:]) for c in CASES], ids=[f"{c[0]}: {c[1]}" for c in CASES]
)
def test_bad_input_is_one_line_and_exit_2(request, tmp_path, monkeypatch, script, args, message):
    monkeypatch.setenv("OPENAI_API_KEY", "")
    args = args(tmp_path, script) if callable(args) else args
    model = (
        request.getfixturevalue("sft_model") if script in ("dpo.py", "synth_data.py", "grpo.py", "distill.py") else None
    )
    base = [
        a
        for a in BASE[script](tmp_path, model)
        if not any(a.startswith(key) and any(x.startswith(key) for x in args) for key in ("model=", "teacher="))
    ]
    out = tmp_path / "out"
    result = run_in_process(script, *base, *args, f"output_dir={out}")
    assert_one_line_exit_2(result, message, out)
    assert not any((out / name).exists() for name in ("preferences.jsonl", "responses.jsonl", "instructions.jsonl"))


def test_the_matrix_is_wide():
    assert len(CASES) >= 40 and {c[0] for c in CASES} == set(GOOD)


# distill.py's teacher server: (what is wrong, the server's flags (None: no server listens), arguments, the reason)
SERVER_CASES = [
    ("server down", None, [], "cannot connect"),
    ("server returns no log-probs", ["--no-logprobs"], [], "returns no log-probs for the prompt"),
    ("server caps log-probs below teacher_top_k", ["--max-logprobs", "5"], [], "greater than max allowed: 5"),
    # refused before any request: no server needs to listen
    ("prune:N with a server", None, ["student_init=prune:2"], "prune:N needs the teacher's weights"),
    ("temperature with a server", None, ["temperature=0.7"], "temperature=0.7: a teacher server"),
]


@pytest.mark.parametrize("flags, args, message", [c[1:] for c in SERVER_CASES], ids=[c[0] for c in SERVER_CASES])
def test_a_bad_teacher_server_is_one_line_and_exit_2(tmp_path, sft_model, flags, args, message):
    base = [f"student_init={sft_model}", "teacher_top_k=20", "progress_bar=false", "test_data=", "max_steps=1"]
    out = tmp_path / "out"
    with contextlib.ExitStack() as stack:
        url = (
            f"http://127.0.0.1:{free_port()}/v1"
            if flags is None
            else stack.enter_context(teacher_server(sft_model, *flags))
        )
        result = run_in_process("distill.py", *base, f"teacher={url}", *args, f"output_dir={out}")
    assert_one_line_exit_2(result, message, out)


def test_a_teacher_server_with_another_vocabulary_is_one_line_and_exit_2(tmp_path, sft_model):
    """The server's tokenizer (the built-in one) lacks the student's chat tokens."""
    teacher = tmp_path / "teacher"
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(BUILTIN["builtin:tiny"])).save_pretrained(teacher)
    load_tokenizer("builtin:tiny").save_pretrained(teacher)
    out = tmp_path / "out"
    with teacher_server(teacher) as url:
        result = run_in_process(
            "distill.py", f"teacher={url}", f"student_init={sft_model}", "test_data=", f"output_dir={out}"
        )
    assert_one_line_exit_2(result, "tokenize text differently", out)
