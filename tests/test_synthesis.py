import pytest

from common.errors import UserError
from common.synthesis import (best_and_worst, judge_rubric_reply, load_function, magpie_prefix, novel, prompt_of,
                              prompt_problem, self_instruct_prompts)
from tests.conftest import ROOT

USER = {"role": "user", "content": "Play Adele"}
CALL = {"role": "assistant", "content": 'play_music(artist="Adele")'}


@pytest.mark.parametrize("row, system, expected", [
    ({"messages": [USER, CALL]}, "", [USER]),  # the last assistant turn is the reference, not the prompt
    ({"messages": [USER]}, "Be brief.", [{"role": "system", "content": "Be brief."}, USER]),
    ({"prompt": "Play Adele", "completion": "x"}, "", [USER]),
    ({"prompt": [{"role": "system", "content": "s"}, USER]}, "Be brief.", [{"role": "system", "content": "s"}, USER]),
])
def test_prompt_of(row, system, expected):
    assert prompt_of(row, system) == expected


@pytest.mark.parametrize("row, problem", [
    ({"messages": [USER, CALL]}, None),
    ({"text": "x"}, "row has neither 'messages' nor 'prompt'"),
    ({"messages": [CALL]}, "the prompt must end with a non-empty user turn"),
    ({"prompt": "  "}, "the prompt must end with a non-empty user turn"),
    (["x"], "row must be a JSON object"),
])
def test_prompt_problem(row, problem):
    assert prompt_problem(row) == problem


@pytest.mark.parametrize("answers, scores, expected", [
    (["a", "b", "c"], [1.0, 0.0, 1.0], ("a", "b")),  # best first among ties, worst last
    (["a", "b"], [1.0, 1.0], None),  # nothing to prefer
    (["same", " same "], [1.0, 0.0], None),  # the same text both sides
    (["x", "y", "z"], [0.2, 0.9, -3.0], ("y", "z")),
])
def test_best_and_worst(answers, scores, expected):
    assert best_and_worst(answers, scores) == expected


@pytest.mark.parametrize("reply, score", [("8", 8.0), ("Score: 7.5/10", 7.5), ("none", float("-inf"))])
def test_judge_rubric_reply(reply, score):
    assert judge_rubric_reply(reply) == score


def test_novel_keeps_only_requests_unlike_seeds_and_each_other():
    seeds = ["set a timer for five minutes please"]
    candidates = ["set a timer for five minutes please", "what is the weather in Paris tomorrow",
                  "what is the weather in Paris tomorrow", "", "play some jazz by Miles Davis", "text mom I am late"]
    assert novel(candidates, seeds, 0.7, 10) == candidates[1:2] + candidates[4:]
    assert novel(candidates, seeds, 0.7, 2) == [candidates[1], candidates[4]]


def test_self_instruct_prompts_are_the_same_under_a_seed():
    seeds = [f"request {i}" for i in range(10)]
    a, b = self_instruct_prompts(seeds, 5, 3, seed=1), self_instruct_prompts(seeds, 5, 3, seed=1)
    assert a == b and a != self_instruct_prompts(seeds, 5, 3, seed=2)
    assert all(p[0]["content"].count("\n- ") == 3 for p in a)


def test_magpie_prefix_is_the_template_up_to_the_user_text():
    from common.chat_format import prepare_tokenizer
    from common.models import load_tokenizer

    tokenizer = load_tokenizer("builtin:tiny")
    prepare_tokenizer(tokenizer, "special_tokens")
    assert magpie_prefix(tokenizer, "") == "<user>"
    assert magpie_prefix(tokenizer, "Be brief.") == "<system>Be brief.<eot><user>"


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "must name a function as module:function"),
    ("data/examples/verify.py:nope", "has no function nope"),
    ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
    ("missing/file.py:f", "file not found: missing/file.py"),
])
def test_load_function_errors(spec, message):
    with pytest.raises(UserError, match=message):
        load_function(spec, "verifier")


def test_load_function_by_path_and_by_module():
    verify = load_function(f"{ROOT}/data/examples/verify.py:verify", "verifier")
    assert verify({"messages": [USER, CALL]}, ' play_music(artist="Adele")\n')
    assert not verify({"prompt": "p", "completion": "a()"}, "b()")
    assert load_function("common.synthesis:novel", "verifier") is novel


def test_hf_backend_folds_the_system_prompt_for_a_template_that_rejects_it(tmp_path):
    """Gemma-2's template raises on a system turn: the teacher sees it in the first user turn, and the written
    row keeps it as a system turn (sft_chat.py folds it the same way when it trains)."""
    from tests.conftest import read_jsonl, run_in_process, write_jsonl
    from tests.real_tokenizers import tiny_model_folder

    model = tiny_model_folder("trl-gemma", tmp_path)
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Play Adele"}])
    out = tmp_path / "out"
    result = run_in_process("synth_data.py", "stages=[responses]", f"model={model}", f"data={data}", "test_data=",
                            "system_prompt=Be brief.", "num_samples=1", "max_new_tokens=2", "progress_bar=false",
                            f"output_dir={out}")
    assert result.returncode == 0, result.stderr
    (row,) = read_jsonl(out / "responses.jsonl")
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
