"""Preparation in Arrow: the same examples on one core or several, once (a cache keyed by data, tokenizer and
settings), atomic, bad rows named by file:line, and the SFT truncation and packing counts."""

import json
import os
from functools import partial

import pytest

import common.prepare
from common.cleaning import CLEAN_DEFAULTS
from common.data import DataReport
from common.errors import RowProblem, UserError
from common.models import load_tokenizer
from common.prepare import Recipe, prepare
from tests.conftest import prepare_params


def _given(examples: list, row: dict):
    """The test's example for a row {"i": n} (a row with "bad" is one the template cannot render)."""
    if "bad" in row:
        raise RowProblem(row["bad"])
    return [{"input_ids": list(examples[row["i"]][0]), "labels": list(examples[row["i"]][1])}], {"{split}_seen": 1}


def _problem(row: dict):
    return None if isinstance(row.get("i"), int) else "row has no 'i'"


def write_rows(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(row if isinstance(row, str) else json.dumps(row) + "\n" for row in rows)
    return str(path)


def prepared(tmp_path, examples, report=None, rows=None, **overrides):
    """The prepared data of (input_ids, labels) examples, one row each, under prepare_params's settings."""
    os.makedirs(tmp_path, exist_ok=True)
    data = write_rows(tmp_path / "rows.jsonl", rows or [{"i": i} for i in range(len(examples))])
    recipe = Recipe("test", _problem, partial(_given, examples), packing=overrides.get("packing", False))
    return prepare(
        prepare_params(tmp_path, [data], **overrides), recipe, load_tokenizer("builtin:tiny"), report or DataReport()
    )


def examples_of(n: int) -> list:
    return [(list(range(i % 40 + 2)), [-100] + list(range(1, i % 40 + 2))) for i in range(n)]


@pytest.mark.parametrize("packing", [False, True])
def test_several_processes_prepare_exactly_what_one_does(tmp_path, monkeypatch, packing):
    monkeypatch.setattr(common.prepare, "ROWS_PER_PROCESS", 50)
    examples = examples_of(600)
    one = prepared(tmp_path / "one", examples, max_length=32, packing=packing, batch_size=8)
    two = prepared(tmp_path / "two", examples, max_length=32, packing=packing, batch_size=8, num_proc=2)
    assert one.train.to_list() == two.train.to_list() and len(one.train)
    if packing:
        assert sorted(n for row in one.train["seq_lengths"] for n in row) == sorted(
            min(32, len(e[0])) for e in examples
        )


def test_a_rerun_reuses_the_prepared_data_and_a_changed_input_does_not(tmp_path, monkeypatch):
    examples = examples_of(30)
    first_report = DataReport()
    first = prepared(tmp_path, examples, first_report, max_length=32)
    assert first_report.counts["train_seen"] == 30 and first_report.counts["train_truncated"] == 0
    ran = []
    original = common.prepare._Preparation.run
    monkeypatch.setattr(common.prepare._Preparation, "run", lambda self: ran.append(1) or original(self))
    again_report = DataReport()
    again = prepared(
        tmp_path, examples, again_report, max_length=32, learning_rate=1.0, num_proc=2
    )  # training-only keys
    assert not ran and again.path == first.path and again.train.to_list() == first.train.to_list()
    assert again_report.counts == first_report.counts | {"prepared_data": first.path}
    assert prepared(tmp_path, examples, max_length=16).path != first.path  # a setting that changes the result
    assert ran == [1]
    changed = prepared(tmp_path, examples, rows=[{"i": i} for i in range(29)], max_length=32)  # the data's content
    assert changed.path != first.path and len(changed.train) == 29
    assert len(os.listdir(tmp_path / "cache")) == 3  # entries only, no temporary folders


def test_a_failed_preparation_leaves_no_cache_entry(tmp_path):
    rows = [{"i": 0}, {"i": 1, "bad": "the chat template rejects this row"}]
    with pytest.raises(UserError, match=r"rows.jsonl:2: the chat template rejects this row"):
        prepared(tmp_path, examples_of(2), rows=rows)
    assert os.listdir(tmp_path / "cache") == []


def test_a_bad_row_deep_in_a_large_file_is_named_by_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr(common.prepare, "ROWS_PER_PROCESS", 1000)
    rows = [{"i": 0}] * 30_000
    rows[24_999] = {"j": 1}
    with pytest.raises(UserError, match=r"rows.jsonl:25000: row has no 'i'$"):
        prepared(tmp_path, examples_of(1), rows=rows, num_proc=2)
    rows[24_999] = "{not json\n"
    with pytest.raises(UserError, match=r"rows.jsonl:25000: malformed JSON"):
        prepared(tmp_path, examples_of(1), rows=rows, num_proc=2)
    report = DataReport()
    rows[24_999] = {"i": 0, "bad": "unrenderable"}
    kept = prepared(tmp_path, examples_of(1), report, rows=rows, num_proc=2, on_bad_rows="skip")
    assert len(kept.train) == 29_999 and report.dropped == {"bad row: unrenderable": 1}


def _drop(row: dict):
    return None


NOTHING_LEFT = [
    # (id, {file: rows}, settings (files named by their stem), the whole error line ({stem}: the file's path))
    (
        "every row bad",
        {"a": [{"j": 1}, {"j": 2}]},
        {"data": ["a"]},
        "no rows left in data: every row of {a} was bad (2; first: {a}:1: row has no 'i')",
    ),
    (
        "bad rows and cleaning",
        {"a": [{"j": 1}, {"i": 0}, {"i": 1}]},
        {"data": ["a"], "clean": dict(CLEAN_DEFAULTS)},
        "no rows left in data: of 3 rows of {a}, bad: 1 (first: {a}:1: row has no 'i'), removed by cleaning: 2 "
        "(empty after normalisation: 2)",
    ),
    (
        "cleaning alone, under on_bad_rows=error",
        {"a": [{"i": 0}]},
        {"data": ["a"], "clean": dict(CLEAN_DEFAULTS), "on_bad_rows": "error"},
        "no rows left in data: of 1 row of {a}, removed by cleaning: 1 (empty after normalisation: 1)",
    ),
    (
        "the row hook",
        {"a": [{"i": 0}, {"i": 1}]},
        {"data": ["a"], "hook": _drop},
        "no rows left in data: of 2 rows of {a}, dropped by the row_hook: 2",
    ),
    (
        "a weighted source",  # mixing takes half of its rows; the other source's rows alone are not that mix
        {"a": [{"i": 0}], "b": [{"j": 1}]},
        {"data": [{"path": "a", "weight": 0.5}, {"path": "b", "weight": 0.5}]},
        "no rows left in data (the source weighted 0.5): every row of {b} was bad (1; first: {b}:1: row has no 'i')",
    ),
    (
        "eval_data",
        {"a": [{"i": 0}], "e": [{"j": 1}]},
        {"data": ["a"], "eval_data": ["e"]},
        "no rows left in eval_data: every row of {e} was bad (1; first: {e}:1: row has no 'i')",
    ),
]


@pytest.mark.parametrize("files, settings, line", [c[1:] for c in NOTHING_LEFT], ids=[c[0] for c in NOTHING_LEFT])
def test_no_rows_left_is_one_line_that_says_what_took_them(tmp_path, files, settings, line):
    paths = {name: write_rows(tmp_path / f"{name}.jsonl", rows) for name, rows in files.items()}

    def located(sources):
        return [{**s, "path": paths[s["path"]]} if isinstance(s, dict) else paths[s] for s in sources]

    settings = {"on_bad_rows": "skip", "eval_data": [], **settings}
    hook = settings.pop("hook", None)
    sources = {key: located(settings.pop(key)) for key in ("data", "eval_data")}
    params = prepare_params(tmp_path, [], **settings) | sources
    recipe = Recipe("test", _problem, partial(_given, examples_of(2)), hook=hook)
    with pytest.raises(UserError) as error:
        prepare(params, recipe, load_tokenizer("builtin:tiny"), DataReport())
    assert str(error.value) == line.format(**paths)
    assert os.listdir(tmp_path / "cache") == []


def test_an_empty_data_file_is_named(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match=rf"^{empty}: no rows in this data file$"):
        prepare(
            prepare_params(tmp_path, [str(empty)]),
            Recipe("test", _problem, partial(_given, [])),
            load_tokenizer("builtin:tiny"),
            DataReport(),
        )


def test_packed_rows_hold_every_kept_example_once_and_no_dropped_one(tmp_path, monkeypatch):
    monkeypatch.setattr(common.prepare, "PACK_CHUNK", 4)  # rows assembled a few at a time, from several buckets
    examples = [
        (list(range(100 * i, 100 * i + 3 + i % 7)), [-100] * (3 + i % 7) if i % 3 == 0 else list(range(3 + i % 7)))
        for i in range(90)
    ]  # every third has nothing to train: dropped, and never packed
    report = DataReport()
    packed = prepared(tmp_path, examples, report, max_length=32, packing=True, batch_size=4).train
    kept = [ids for i, (ids, _) in enumerate(examples) if i % 3]
    rows = packed.to_list()
    documents = []
    for row in rows:
        assert sum(row["seq_lengths"]) == len(row["input_ids"]) == len(row["labels"]) <= 32
        starts = [sum(row["seq_lengths"][:j]) for j in range(len(row["seq_lengths"]))]
        documents += [row["input_ids"][a : a + n] for a, n in zip(starts, row["seq_lengths"], strict=False)]
    assert sorted(documents) == sorted(kept) and report.dropped == {"train: no trained token in the row": 30}
