import json

import pytest

from common.cleaning import CLEAN_DEFAULTS
from common.data import DataReport, load_sources, split_eval
from common.errors import UserError
from common.prepare import read_rows
from tests.conftest import write_jsonl

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def has_messages(row):
    return None if "messages" in row else "row has no 'messages' field"


def test_formats_load_the_same_rows(tmp_path):
    import datasets

    rows = [{"text": f"row {i}", "n": i} for i in range(3)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "a.json").write_text(json.dumps(rows))
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "a.parquet"))
    ds.to_csv(str(tmp_path / "a.csv"), index=False)
    ds.save_to_disk(str(tmp_path / "saved"))
    for name in ("a.jsonl", "a.json", "a.parquet", "a.csv", "saved"):
        report = DataReport()
        loaded = load_sources([str(tmp_path / name)], report)
        assert [r.data for r in loaded] == rows, name
        assert report.sources == {str(tmp_path / name): 3}
    assert load_sources(str(tmp_path / "a.jsonl"), DataReport())[1].where == f"{tmp_path}/a.jsonl:2"


def test_sharegpt_and_field_mapping(tmp_path):
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        ],
    )
    assert load_sources([path], DataReport())[0].data == CHAT
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [{"dialog": [{"speaker": "user", "text": "hi"}, {"speaker": "assistant", "text": "hello"}]}],
    )
    spec = {"path": path, "fields": {"messages": "dialog", "role": "speaker", "content": "text"}}
    assert load_sources([spec], DataReport())[0].data == CHAT


CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
OSLO = {"name": "get_weather", "arguments": {"city": "Oslo"}}
TOOLS = json.dumps(
    [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
)


@pytest.mark.parametrize(
    "turn, message",
    [
        (
            {"from": "function_call", "value": json.dumps(CALL)},
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]},
        ),
        (
            {"from": "function_call", "value": json.dumps([CALL, OSLO])},  # parallel calls
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"type": "function", "function": CALL}, {"type": "function", "function": OSLO}],
            },
        ),
        (
            {"from": "function_call", "value": "get_weather(city='Paris')"},  # not JSON: left for the row check
            {"role": "assistant", "content": "", "tool_calls": "get_weather(city='Paris')"},
        ),
        ({"from": "observation", "value": '{"temperature": 18}'}, {"role": "tool", "content": '{"temperature": 18}'}),
        ({"from": "tool", "value": "18 degrees"}, {"role": "tool", "content": "18 degrees"}),
    ],
)
def test_sharegpt_tool_turns_become_openai_messages(tmp_path, turn, message):
    turns = [{"from": "human", "value": "hi"}, turn]
    path = write_jsonl(tmp_path / "s.jsonl", [{"tools": TOOLS, "conversations": turns}])
    row = load_sources([path], DataReport())[0].data
    assert row == {"tools": TOOLS, "messages": [{"role": "user", "content": "hi"}, message]}  # tools kept as is


def test_a_sharegpt_call_that_is_not_json_is_rejected_by_the_row_check(tmp_path):
    from common.chat.rows import validate_messages

    turns = [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "get_weather(city='Paris')"}]
    path = write_jsonl(tmp_path / "s.jsonl", [{"conversations": turns}])

    def problem(row):
        return validate_messages(row["messages"])

    with pytest.raises(UserError) as err:
        read_rows(_params(tmp_path, path), problem, DataReport())
    assert "s.jsonl:1: messages[1] tool_calls must be a list" in str(err.value)


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"messages": []}', "{not json"], "bad.jsonl:2: malformed JSON"),
        (['{"messages": []}', "", '{"text": "x"}'], "bad.jsonl:3: row has no 'messages' field"),
        (["[1, 2]"], "bad.jsonl:1: row must be a JSON object"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(UserError) as err:
        read_rows(_params(tmp_path, path), has_messages, DataReport())
    assert message in str(err.value)


def test_skip_counts_bad_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [CHAT, {"text": "x"}, CHAT, {"text": "y"}])
    report = DataReport()
    assert len(read_rows(_params(tmp_path, path, on_bad_rows="skip"), has_messages, report)) == 2
    assert report.dropped == {"bad row: row has no 'messages' field": 2}


def _params(tmp_path, data, clean=False, **more):
    """What common.prepare.read_rows reads of a script's PARAMS."""
    settings = dict(data=data, clean={**CLEAN_DEFAULTS, "enabled": clean}, data_cache_dir=str(tmp_path / "cache"))
    return {**settings, "seed": 0, "on_bad_rows": "error", "num_proc": 0, "progress_bar": False, **more}


@pytest.mark.parametrize(
    "source", ["missing.jsonl", "./nowhere/data.parquet", {"path": 3}, {"path": "a.jsonl", "seed": 2}]
)
def test_bad_sources(source):
    with pytest.raises(UserError):
        load_sources([source], DataReport())


def test_hub_dataset_offline_is_one_clear_error():
    with pytest.raises(UserError, match="cannot load dataset 'someone/some-data'"):
        load_sources(["someone/some-data"], DataReport())


def test_eval_split_is_seeded_and_disjoint():
    rows = list(range(100))
    train, held = split_eval(rows, 0.1, seed=1)
    assert len(held) == 10 and sorted(train + held) == rows
    assert split_eval(rows, 0.1, seed=1) == (train, held) and split_eval(rows, 0.1, seed=2)[1] != held
    assert split_eval(rows, 0.0, seed=1) == (rows, [])


@pytest.mark.parametrize("n, fraction, held", [(2, 0.75, 1), (3, 0.9, 2), (4, 0.01, 1), (1, 0.5, 0)])
def test_eval_split_leaves_a_row_to_train_on(n, fraction, held):
    train, evals = split_eval(list(range(n)), fraction, seed=0)
    assert len(evals) == held and len(train) == n - held


def _sources(tmp_path, sizes=(1000, 1000)):
    return [
        write_jsonl(tmp_path / f"s{i}.jsonl", [{"text": f"s{i} row {j}"} for j in range(n)])
        for i, n in enumerate(sizes)
    ]


@pytest.mark.parametrize("sizes", [(1000, 1000), (5000, 800)])
def test_fractions_mix_in_ratio_and_repeat_under_a_seed(tmp_path, sizes):
    a, b = _sources(tmp_path, sizes)
    spec = [{"path": a, "weight": 0.7}, {"path": b, "weight": 0.3}]
    report = DataReport()
    rows = load_sources(spec, report, seed=1)
    share = sum(r.data["text"].startswith("s0") for r in rows) / len(rows)
    assert abs(share - 0.7) < 0.01 and report.counts["mix"][a]["share"] == pytest.approx(0.7, abs=0.01)
    assert len({r.where for r in rows}) == len(rows)  # the largest mix that repeats no row
    assert [r.where for r in load_sources(spec, DataReport(), seed=1)] == [r.where for r in rows]
    assert [r.where for r in load_sources(spec, DataReport(), seed=2)] != [r.where for r in rows]


def test_counts_and_oversampling(tmp_path):
    a, b, c = _sources(tmp_path, (100, 50, 30))
    report = DataReport()
    rows = load_sources([{"path": a, "weight": 40}, {"path": b, "weight": "2.5x"}, c], report, seed=0)
    assert {k: v["taken"] for k, v in report.counts["mix"].items()} == {a: 40, b: 125, c: 30}
    assert len(rows) == 195


def test_cleaning_sees_every_source_before_the_mix(tmp_path):
    a = write_jsonl(
        tmp_path / "a.jsonl", [{"text": f"alpha document number {i} about topic {i * 7}"} for i in range(20)]
    )
    b = write_jsonl(
        tmp_path / "b.jsonl",
        [{"text": f"alpha document number {i} about topic {i * 7}"} for i in range(10)]
        + [{"text": f"beta note {i} on subject {i * 3}"} for i in range(10)],
    )
    report = DataReport()
    rows = read_rows(_params(tmp_path, [a, {"path": b, "weight": "2x"}], clean=True), None, report)
    # b's 10 copies of a's rows go (dedup spans sources); its other 10 rows are then doubled, not deduplicated
    assert report.dropped == {"cleaning: exact duplicate": 10}
    assert report.counts["mix"][b]["taken"] == 20 and len(rows) == 40


@pytest.mark.parametrize("weight", [0, -1, 1.5, "x", "0x", True, "lots"])
def test_bad_weights(tmp_path, weight):
    a, _ = _sources(tmp_path, (10, 10))
    with pytest.raises(UserError, match="weight of .* must be a fraction"):
        load_sources([{"path": a, "weight": weight}], DataReport())


def test_fractions_must_leave_room(tmp_path):
    a, b = _sources(tmp_path, (10, 10))
    with pytest.raises(UserError, match="fraction weights add up to 1.2"):
        load_sources([{"path": a, "weight": 0.6}, {"path": b, "weight": 0.6}], DataReport())
