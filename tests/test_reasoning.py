"""Reasoning in assistant turns: read from reasoning_content or a leading <think> block, kept or dropped, and kept
away from the judge and the exact-match check."""

import pytest

from common.chat.reasoning import reasoning_problem, split_reasoning, strip_reasoning, with_reasoning

TURNS = [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4", "reasoning_content": "Two and two."},
    {"role": "user", "content": "and 3+3?"},
    {"role": "assistant", "content": "<think>\nThree and three.\n</think>\n\n6"},
]


@pytest.mark.parametrize(
    "message, expected",
    [
        ({"content": "4", "reasoning_content": "Two and two."}, ("Two and two.", "4")),
        ({"content": "<think>\nThree and three.\n</think>\n\n6"}, ("\nThree and three.\n", "6")),
        ({"content": "  <think></think>6"}, ("", "6")),
        ({"content": "6 <think>not at the start</think>"}, ("", "6 <think>not at the start</think>")),
        ({"content": "<think>unclosed 6"}, ("", "<think>unclosed 6")),
    ],
)
def test_split_reasoning(message, expected):
    assert split_reasoning(message) == expected


def test_keep_moves_reasoning_into_the_field_and_drop_removes_it_everywhere():
    kept = with_reasoning(TURNS, "keep")
    assert [m.get("reasoning_content") for m in kept] == [None, "Two and two.", None, "Three and three."]
    assert [m["content"] for m in kept] == ["2+2?", "4", "and 3+3?", "6"]
    dropped = with_reasoning(TURNS, "drop")
    assert all("reasoning_content" not in m for m in dropped) and [m["content"] for m in dropped] == [
        "2+2?",
        "4",
        "and 3+3?",
        "6",
    ]


def test_reasoning_problems():
    assert "both" in reasoning_problem({"content": "<think>a</think>b", "reasoning_content": "a"})
    assert "must be a string" in reasoning_problem({"content": "b", "reasoning_content": 3})
    assert reasoning_problem({"content": "b", "reasoning_content": "a"}) is None


def test_exact_match_and_the_judge_see_the_answer_without_its_reasoning(tmp_path):
    import synth_data
    from common.data import Row
    from common.evaluate import is_exact_match

    assert strip_reasoning("<think>\n\n</think>\n\nplay()") == "play()"
    assert is_exact_match("<think>\nmaybe\n</think>\n\nplay()", "play()")
    verifier = tmp_path / "v.py"
    verifier.write_text("def verify(row, answer):\n    return answer == 'play()'\n")
    params = {**synth_data.PARAMS, "verifier": f"{verifier}:verify"}
    answers = [
        [
            {"role": "assistant", "content": "<think>\nThe user wants music.\n</think>\n\nplay()"},
            {"role": "assistant", "content": "stop()"},
        ]
    ]
    rows = [Row({"prompt": "Play"}, "p.jsonl:1")]
    assert synth_data.score(params, None, [[]], [None], answers, rows, None) == [[1.0, 0.0]]
    assert synth_data.score({**params, "keep_reasoning": True}, None, [[]], [None], answers, rows, None) == [[0.0, 0.0]]
