import json

import pytest

from common.cleaning import CLEAN_DEFAULTS, clean_rows, eval_set_inputs, normalize, scrub
from common.data import DataReport, load_sources
from tests.conftest import ROOT

CORPUS = f"{ROOT}/tests/data/clean_corpus.jsonl"
EVAL = f"{ROOT}/tests/data/clean_eval.jsonl"


def test_planted_corpus_counts_exactly_and_keeps_every_clean_row():
    report = DataReport()
    rows = load_sources([CORPUS], report)
    kept = clean_rows(rows, dict(CLEAN_DEFAULTS), report, eval_set_inputs([EVAL], report))
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


def test_report_is_json():
    report = DataReport()
    clean_rows(load_sources([CORPUS], report), dict(CLEAN_DEFAULTS), report)
    json.dumps(report.as_dict())
