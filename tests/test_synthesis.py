import json

import pytest

from common.chat.tools import answer_message
from common.errors import UserError
from common.prompts import prompt_of, prompt_problem
from common.rewards import load_function
from common.synthesis import best_and_worst, judge_rubric_reply, magpie_prefix, novel, self_instruct_prompts
from tests.conftest import ROOT

USER = {"role": "user", "content": "Play Adele"}
CALL = {"role": "assistant", "content": 'play_music(artist="Adele")'}
# The example task's function-calling form (data/examples/tools_*.jsonl)
with open(f"{ROOT}/data/examples/tools_test.jsonl") as f:
    TOOLS = json.loads(f.readline())["tools"]


def tool_call(name="play_music", call_id=None, **arguments):
    return {
        "type": "function",
        **({"id": call_id} if call_id else {}),
        "function": {"name": name, "arguments": arguments},
    }


def calls(*tool_calls, content=""):
    return {"role": "assistant", "content": content, "tool_calls": list(tool_calls)}


def text(content):
    return {"role": "assistant", "content": content}


ADELE = calls(tool_call(artist="Adele"))
RESULT = {"role": "tool", "content": '{"status": "playing"}'}


@pytest.mark.parametrize(
    "row, system, expected",
    [
        ({"messages": [USER, CALL]}, "", [USER]),  # the last assistant turn is the reference, not the prompt
        ({"messages": [USER]}, "Be brief.", [{"role": "system", "content": "Be brief."}, USER]),
        ({"prompt": "Play Adele", "completion": "x"}, "", [USER]),
        (
            {"prompt": [{"role": "system", "content": "s"}, USER]},
            "Be brief.",
            [{"role": "system", "content": "s"}, USER],
        ),
        ({"tools": TOOLS, "messages": [USER, ADELE, RESULT, text("Now playing Adele.")]}, "", [USER, ADELE, RESULT]),
    ],
)
def test_prompt_of(row, system, expected):
    assert prompt_of(row, system) == expected


@pytest.mark.parametrize(
    "row, problem",
    [
        ({"messages": [USER, CALL]}, None),
        ({"text": "x"}, "row has neither 'messages' nor 'prompt'"),
        ({"messages": [CALL]}, "the prompt must end with a non-empty user turn or a tool result"),
        ({"prompt": "  "}, "the prompt must end with a non-empty user turn or a tool result"),
        (["x"], "row must be a JSON object"),
        # rows with tools: a request alone, a reference call, a prompt that ends with the call's result
        ({"tools": TOOLS, "messages": [USER]}, None),
        ({"tools": json.dumps(TOOLS), "prompt": "Play Adele"}, None),
        ({"tools": TOOLS, "messages": [USER, ADELE]}, None),
        ({"tools": TOOLS, "messages": [USER, ADELE, RESULT]}, None),
        ({"tools": "[{", "messages": [USER]}, "'tools' is a string but not valid JSON"),
        (
            {"tools": TOOLS, "messages": [USER, calls(tool_call("play_radio"))]},
            "messages[1] tool_calls[0] calls 'play_radio', which is not in the row's tools",
        ),
        (
            {"messages": [USER, ADELE]},
            "messages[1] tool_calls[0] calls 'play_music', which is not in the row's tools (the row has no tools)",
        ),
        (
            {
                "tools": TOOLS,
                "messages": [
                    USER,
                    {
                        **ADELE,
                        "tool_calls": [{"type": "function", "function": {"name": "play_music", "arguments": "{"}}],
                    },
                ],
            },
            "messages[1] tool_calls[0] arguments of 'play_music' are not valid JSON",
        ),
        (
            {"tools": TOOLS, "messages": [USER, {**ADELE, "tool_calls": {"name": "play_music"}}]},
            "messages[1] tool_calls must be a list",
        ),
        (
            {"tools": TOOLS, "messages": [USER, RESULT]},
            "messages[1] is a tool result with no assistant tool call before it",
        ),
    ],
)
def test_prompt_problem(row, problem):
    found = prompt_problem(row)
    assert found == problem if problem is None else found.startswith(problem), found


@pytest.mark.parametrize(
    "answers, scores, expected",
    [
        (
            [text("a"), text("b"), text("c")],
            [1.0, 0.0, 1.0],
            (text("a"), text("b")),
        ),  # best first among ties, worst last
        ([text("a"), text("b")], [1.0, 1.0], None),  # nothing to prefer
        ([text("same"), text(" same ")], [1.0, 0.0], None),  # the same text both sides
        ([text("x"), text("y"), text("z")], [0.2, 0.9, -3.0], (text("y"), text("z"))),
        ([ADELE, calls(tool_call(artist="Sade"))], [1.0, 0.0], (ADELE, calls(tool_call(artist="Sade")))),
        # the same call, its arguments in another form: nothing to prefer
        (
            [
                ADELE,
                calls({"type": "function", "function": {"name": "play_music", "arguments": '{"artist": "Adele"}'}}),
            ],
            [1.0, 0.0],
            None,
        ),
        ([ADELE, text("play_music")], [1.0, 0.0], (ADELE, text("play_music"))),
    ],
)
def test_best_and_worst(answers, scores, expected):
    assert best_and_worst(answers, scores) == expected


WIRE = {"type": "function", "id": "call_7", "function": {"name": "play_music", "arguments": '{"artist": "Adele"}'}}


@pytest.mark.parametrize(
    "result, names, expected",
    [
        ({"text": ' play_music(artist="Adele")\n'}, set(), text('play_music(artist="Adele")')),
        # a server's call (JSON text arguments, an id) becomes the row's form: arguments a dict, the id kept
        ({"text": "", "tool_calls": [WIRE]}, {"play_music"}, calls(tool_call(artist="Adele", call_id="call_7"))),
        (
            {"text": "On it.", "tool_calls": [tool_call(artist="Adele")]},
            {"play_music"},
            calls(tool_call(artist="Adele"), content="On it."),
        ),
        # calls a written row could not hold stay as text, so the row passes the checks
        (
            {"text": "", "tool_calls": [{**WIRE, "function": {"name": "play_music", "arguments": '{"artist": "Ad'}}]},
            {"play_music"},
            text('play_music{"artist": "Ad'),
        ),
        (
            {"text": "Sure.", "tool_calls": [tool_call(artist="Adele")]},
            set(),
            text('Sure.\nplay_music{"artist": "Adele"}'),
        ),
    ],
)
def test_answer_message(result, names, expected):
    assert answer_message(result, names) == expected


REQUEST = {"tools": TOOLS, "messages": [{"role": "user", "content": "Weather in Paris today?"}]}
PARIS = calls(tool_call("get_weather", city="Paris", day="today"))


@pytest.mark.parametrize(
    "row, answer, ok",
    [
        # text rows: the reference, ignoring surrounding whitespace
        ({"messages": [USER, CALL]}, ' play_music(artist="Adele")\n', True),
        ({"prompt": "p", "completion": "a()"}, "b()", False),
        # rows with a reference call: the same calls, arguments equal as JSON values
        ({"tools": TOOLS, "messages": [USER, ADELE]}, calls(WIRE), True),
        ({"tools": TOOLS, "messages": [USER, ADELE]}, calls(tool_call(artist="Sade")), False),
        (
            {"tools": TOOLS, "messages": [USER, ADELE]},
            calls(tool_call(artist="Adele"), tool_call(artist="Adele")),
            False,
        ),
        ({"tools": TOOLS, "messages": [USER, ADELE]}, text('play_music{"artist": "Adele"}'), False),
        # a text reference after the call's result: that text, no call
        (
            {"tools": TOOLS, "messages": [USER, ADELE, RESULT, text("Now playing Adele.")]},
            text("Now playing Adele. "),
            True,
        ),
        ({"tools": TOOLS, "messages": [USER, ADELE, RESULT, text("Now playing Adele.")]}, ADELE, False),
        # a request alone: a call to one of the row's tools whose string values are the request's words
        (REQUEST, PARIS, True),
        ({"tools": TOOLS, "prompt": "Weather in Paris today?"}, PARIS, True),
        (REQUEST, calls(tool_call("get_weather", city="Lyon", day="today")), False),
        (REQUEST, calls(tool_call("get_forecast", city="Paris", day="today")), False),
        (REQUEST, text("It is sunny."), False),
    ],
)
def test_example_verifier(row, answer, ok):
    verify = load_function(f"{ROOT}/data/examples/verify.py:verify", "verifier")
    assert verify(row, answer) is ok


@pytest.mark.parametrize("reply, score", [("8", 8.0), ("Score: 7.5/10", 7.5), ("none", float("-inf"))])
def test_judge_rubric_reply(reply, score):
    assert judge_rubric_reply(reply) == score


def test_novel_keeps_only_requests_unlike_seeds_and_each_other():
    seeds = ["set a timer for five minutes please"]
    candidates = [
        "set a timer for five minutes please",
        "what is the weather in Paris tomorrow",
        "what is the weather in Paris tomorrow",
        "",
        "play some jazz by Miles Davis",
        "text mom I am late",
    ]
    assert novel(candidates, seeds, 0.7, 10) == candidates[1:2] + candidates[4:]
    assert novel(candidates, seeds, 0.7, 2) == [candidates[1], candidates[4]]


def test_self_instruct_prompts_are_the_same_under_a_seed():
    seeds = [f"request {i}" for i in range(10)]
    a, b = self_instruct_prompts(seeds, 5, 3, seed=1), self_instruct_prompts(seeds, 5, 3, seed=1)
    assert a == b and a != self_instruct_prompts(seeds, 5, 3, seed=2)
    assert all(p[0]["content"].count("\n- ") == 3 for p in a)


def test_magpie_prefix_is_the_template_up_to_the_user_text():
    from common.chat.tokenizer import prepare_tokenizer
    from common.models import load_tokenizer

    tokenizer = load_tokenizer("builtin:tiny")
    prepare_tokenizer(tokenizer, "special_tokens")
    assert magpie_prefix(tokenizer, "") == "<user>"
    assert magpie_prefix(tokenizer, "Be brief.") == "<system>Be brief.<eot><user>"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_colon", "must name a function as module:function"),
        ("data/examples/verify.py:nope", "has no function nope"),
        ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
        ("missing/file.py:f", "file not found: missing/file.py"),
    ],
)
def test_load_function_errors(spec, message):
    with pytest.raises(UserError, match=message):
        load_function(spec, "verifier")


def test_load_function_by_path_and_by_module():
    assert load_function(f"{ROOT}/data/examples/verify.py:verify", "verifier").__name__ == "verify"
    assert load_function("common.synthesis:novel", "verifier") is novel


def test_hf_backend_folds_the_system_prompt_for_a_template_that_rejects_it(tmp_path):
    """Gemma-2's template raises on a system turn: the teacher sees it in the first user turn, and the written
    row keeps it as a system turn (sft_chat.py folds it the same way when it trains)."""
    from tests.conftest import read_jsonl, run_in_process, write_jsonl
    from tests.real_tokenizers import tiny_model_folder

    model = tiny_model_folder("trl-gemma", tmp_path)
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Play Adele"}])
    out = tmp_path / "out"
    result = run_in_process(
        "synth_data.py",
        "stages=[responses]",
        f"model={model}",
        f"data={data}",
        "test_data=",
        "system_prompt=Be brief.",
        "num_samples=1",
        "max_new_tokens=2",
        "progress_bar=false",
        f"output_dir={out}",
    )
    assert result.returncode == 0, result.stderr
    (row,) = read_jsonl(out / "responses.jsonl")
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]


@pytest.fixture(scope="module")
def special_tokens_model(tmp_path_factory):
    """A random tiny model with the special-tokens chat format's tokenizer
    (tools in the template, a response parser)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from common.chat.own_format import END_OF_TURN
    from common.chat.tokenizer import prepare_tokenizer
    from common.models import load_tokenizer

    out = tmp_path_factory.mktemp("special_tokens") / "model"
    tokenizer = load_tokenizer("builtin:tiny")
    prepare_tokenizer(tokenizer, "special_tokens")
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=512,
        )
    )
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids(END_OF_TURN)]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "generated, parser, expected",
    [
        (
            '<call>get_weather{"city": "Paris", "day": "today"}<eot>',
            True,
            {"text": "", "tool_calls": [tool_call("get_weather", city="Paris", day="today")]},
        ),
        ("Sunny in Paris.<eot>", True, {"text": "Sunny in Paris."}),
        ("<think>Rain?</think>Sunny.<eot>", True, {"text": "<think>\nRain?\n</think>\n\nSunny."}),
        (
            '<call>get_weather{"city": "Par',
            True,
            {"text": 'get_weather{"city": "Par'},
        ),  # cut short: the parser cannot read it
        (
            '<call>get_weather{"city": "Paris", "day": "today"}<eot>',
            False,
            {"text": 'get_weather{"city": "Paris", "day": "today"}'},
        ),
    ],
)
def test_hf_backend_offers_the_tools_and_parses_the_answer(special_tokens_model, generated, parser, expected):
    """The prompt is rendered with the request's tools; the answer is read up to the end of turn (the padding after it
    ignored) by the tokenizer's response parser, or decoded as plain text without one."""
    import torch

    from common.generation import HFBackend, Request

    backend = HFBackend(
        {"model": special_tokens_model, "trust_remote_code": False, "dtype": "auto", "batch_size": 4, "seed": 0}
    )
    backend.parse = parser
    tokenizer, prompts, results = backend.tokenizer, [], []
    answer = tokenizer(generated, add_special_tokens=False)["input_ids"]
    padding = [tokenizer.pad_token_id] * 3 if generated.endswith("<eot>") else []

    def generate(input_ids, attention_mask, **settings):  # the model "writes" the scripted answer
        prompts.append(tokenizer.decode(input_ids[0]))
        return torch.cat([input_ids, torch.tensor([answer + padding])], 1)

    backend.lm.generate = generate
    request = Request(REQUEST["messages"], 0, TOOLS, key="0" * 64)
    backend.run(
        [request], {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 16}, lambda r, result: results.append(result)
    )
    assert "get_weather(city: string, day: string) Get the weather" in prompts[0]
    assert prompts[0].endswith("<user>Weather in Paris today?<eot><assistant>")
    (result,) = results
    assert result.pop("completion_tokens") == len(answer) and result.pop("prompt_tokens") > 0
    assert result == expected
