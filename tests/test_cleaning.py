import json
import os
import re

import pytest

import common.prepare
from common.cleaning import CLEAN_DEFAULTS, clean_rows, eval_set_inputs, normalize, scrub
from common.data import DataReport, load_sources
from common.errors import UserError
from common.prepare import read_rows
from tests.conftest import ROOT

CORPUS = f"{ROOT}/tests/data/clean_corpus.jsonl"
EVAL = f"{ROOT}/tests/data/clean_eval.jsonl"


def test_planted_corpus_counts_exactly_and_keeps_every_clean_row():
    report = DataReport()
    rows = load_sources([CORPUS], report)
    kept = clean_rows(rows, dict(CLEAN_DEFAULTS), report, eval_set_inputs([EVAL]))
    assert report.dropped == {
        "cleaning: exact duplicate": 5,
        "cleaning: near duplicate": 4,
        f"cleaning: contaminated by {EVAL}": 3,
        "cleaning: refusal or boilerplate phrase": 2,
        "cleaning: repeated lines": 1,
        "cleaning: symbol ratio": 1,
        "cleaning: empty after normalisation": 1,
    }
    cleaning = report.counts["cleaning"]
    assert cleaning["rows_in"] == 81 and cleaning["rows_out"] == 64
    assert cleaning["pii_texts_scrubbed"] == 4 and cleaning["contaminated"] == {EVAL: 3}
    # the 60 clean rows and the 4 scrubbed ones, in their original order (line numbers 1-60, 73-76)
    assert [int(row.where.rsplit(":", 1)[1]) for row in kept] == [*range(1, 61), *range(73, 77)]
    scrubbed = " ".join(row.data["messages"][1]["content"] for row in kept[60:])
    for placeholder in ("<EMAIL>", "<PHONE>", "<IP>", "<SECRET>"):
        assert placeholder in scrubbed
    assert "@example.com" not in scrubbed and "192.168" not in scrubbed


@pytest.mark.parametrize(
    "text, expected",
    [
        ("cafe\u0301  au\tlait \n\n\n\nok ", "café au lait\n\nok"),  # NFC, spaces, blank lines
        ("\r\nline\r\n", "line"),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("mail bob.smith+x@mail.co.uk now", "mail <EMAIL> now"),
        ("ip 10.0.0.255 and 999.1.1.1", "ip <IP> and 999.1.1.1"),
        ("token hf_" + "a" * 34, "token <SECRET>"),
        ("call (415) 555-0132 or +44 20 7946 0958", "call <PHONE> or <PHONE>"),
        ("version 3.11.2 and 2024 and 12 34", "version 3.11.2 and 2024 and 12 34"),  # numbers are not PII
    ],
)
def test_scrub(text, expected):
    assert scrub(text) == expected


def test_disabled_cleaning_returns_rows_untouched():
    report = DataReport()
    rows = load_sources([CORPUS], report)
    assert clean_rows(rows, {**CLEAN_DEFAULTS, "enabled": False}, report) == rows and not report.dropped


def _params(tmp_path, **clean):
    """What common.prepare.read_rows (the data pipeline, as synth_data.py runs it) reads of PARAMS."""
    return {
        "data": [CORPUS],
        "clean": {**CLEAN_DEFAULTS, **clean},
        "test_data": EVAL,
        "data_cache_dir": str(tmp_path / "cache"),
        "seed": 0,
        "on_bad_rows": "error",
        "num_proc": 0,
        "progress_bar": False,
    }


def test_the_pipeline_prints_the_table_and_decontaminates_against_held_out_files(tmp_path, capsys):
    report = DataReport()
    kept = read_rows(_params(tmp_path), None, report)
    table = capsys.readouterr().out
    assert len(kept) == 64 and report.counts["cleaning"]["contaminated"] == {EVAL: 3}
    assert "cleaning: 81 rows in, 64 kept" in table.splitlines()
    for reason, n in (
        ("exact duplicate", 5),
        ("near duplicate", 4),
        (f"contaminated by {EVAL}", 3),
        ("texts with PII scrubbed (kept)", 4),
    ):
        assert re.search(rf"^  {re.escape(reason)} +{n}$", table, re.M), table
    report = DataReport()
    read_rows(_params(tmp_path, decontaminate_held_out=False), None, report)
    assert "contaminated" not in report.counts["cleaning"] and report.counts["cleaning"]["rows_out"] == 67


def test_cleaned_rows_are_cached_for_reruns_and_other_ranks(tmp_path, monkeypatch, capsys):
    first = DataReport()
    kept = read_rows(_params(tmp_path), None, first)

    def must_not_run(*args):
        raise AssertionError("cleaning ran again instead of reading the cache")

    monkeypatch.setattr(common.prepare._Preparation, "run", must_not_run)
    for rank in ("0", "1"):  # a rerun on the main process, and another rank of the same launch
        monkeypatch.setenv("RANK", rank)
        again = DataReport()
        assert read_rows(_params(tmp_path), None, again) == kept
        assert again.dropped == first.dropped and again.counts == first.counts
    assert "(reused)" in capsys.readouterr().out
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(AssertionError, match="ran again"):  # other settings are another key
        read_rows(_params(tmp_path, threshold=0.9), None, DataReport())
    assert not [p for p in os.listdir(tmp_path / "cache") if ".tmp" in p]


def test_token_length_filters_count_with_the_model_tokenizer(tmp_path):
    from common.models import load_tokenizer

    tokenizer = load_tokenizer("builtin:tiny")
    clean_rows_file = tmp_path / "clean.jsonl"
    with open(CORPUS, encoding="utf-8") as f:  # the clean rows: answers of 150 words
        clean_rows_file.write_text("".join(f.readlines()[:60]), encoding="utf-8")
    rows = load_sources([str(clean_rows_file)], DataReport())
    lengths = sorted(len(tokenizer(r.data["messages"][1]["content"])["input_ids"]) for r in rows)
    middle = lengths[30]
    cases = (
        ({"max_tokens": middle}, f"more tokens than max_tokens={middle}", sum(n > middle for n in lengths)),
        ({"min_tokens": middle}, f"fewer tokens than min_tokens={middle}", sum(n < middle for n in lengths)),
    )
    for settings, reason, dropped in cases:
        report = DataReport()
        params = {**_params(tmp_path, **settings, near_dedup=False), "data": [str(clean_rows_file)]}
        kept = read_rows(params, None, report, tokenizer)
        assert report.dropped == {f"cleaning: {reason}": dropped} and len(kept) == 60 - dropped
    with pytest.raises(UserError, match="need the model's tokenizer"):
        read_rows(_params(tmp_path, max_tokens=10), None, DataReport())


def test_report_is_json():
    report = DataReport()
    clean_rows(load_sources([CORPUS], report), dict(CLEAN_DEFAULTS), report)
    json.dumps(report.as_dict())
