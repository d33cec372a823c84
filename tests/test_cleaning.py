import json
import os
import re

import pytest

import common.prepare
from common.cleaning import (
    CLEAN_DEFAULTS,
    clean_rows,
    cleaning_table,
    eval_set_inputs,
    normalize,
    quality_problem,
)
from common.data import DataReport, Row, load_sources
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
        ("cafe\u0301  au\tlait", "café  au\tlait"),  # NFC; runs of spaces and tabs inside a line stay
        ("def f():\r\n    return 1\r\n", "def f():\n    return 1"),  # CRLF to LF; indentation stays
        ("\n\n    indented first line  \nnext\t \n\n", "    indented first line\nnext"),  # edges, line ends
        ("a\n\n\nb\n \n\n\n\nc", "a\n\n\nb\n\n\nc"),  # two blank lines stay (PEP 8), more become two
        ("x\n```diff\n a  \n \n\n\n\n\n-b\n```\n\n\n\n\ny", "x\n```diff\n a  \n \n\n\n\n\n-b\n```\n\n\ny"),
    ],
    ids=["nfc keeps runs", "crlf keeps indentation", "edges and line ends", "blank runs", "fenced code untouched"],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


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


# Rows shaped like public function-calling sets (xlam, glaive, ToolACE exported to the OpenAI message format):
# tools as JSON schemas, arguments as a JSON string, results as JSON text.
def _tool(name, **properties):
    schema = {
        "type": "object",
        "properties": {k: {"type": v} for k, v in properties.items()},
        "required": [*properties],
    }
    return {"type": "function", "function": {"name": name, "description": name.replace("_", " "), "parameters": schema}}


def _call(name, arguments, id="call_0"):
    return {"id": id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def _tool_row(request, call, result, reply, tools=None, system=None):
    """One request, one call, its result and the reply."""
    return {
        "tools": tools
        or [_tool(call["function"]["name"], **dict.fromkeys(json.loads(call["function"]["arguments"]), "string"))],
        "messages": [
            *([{"role": "system", "content": system}] if system else []),
            {"role": "user", "content": request},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"], "content": result},
            {"role": "assistant", "content": reply},
        ],
    }


def _clean(*rows, **settings):
    report = DataReport()
    kept = clean_rows([Row(row, f"x:{i}") for i, row in enumerate(rows)], {**CLEAN_DEFAULTS, **settings}, report)
    return [row.data for row in kept], report


def _as_cleaned(row, replace=None):
    """The row as cleaning writes it: the same, with texts replaced (calls and tool results are never rewritten)."""
    row = json.loads(json.dumps(row))
    for message in row.get("messages", []):
        for before, after in (replace or {}).items():
            message["content"] = message["content"].replace(before, after)
    return row


SMS = _tool_row(
    "My number is (415) 555-0132. Text Ana at +44 20 7946 0958 that I'm running late.",
    _call("send_sms", {"to": "+44 20 7946 0958", "text": "Running late, sorry!"}),
    '{"status": "delivered", "message_sid": "SM87a1c2d3"}',
    "Done: I texted +44 20 7946 0958 that you're running late.",
)


@pytest.mark.parametrize(
    "row, scrubbed",
    [
        (
            _tool_row(
                "What's the balance on account 00125648?",
                _call("get_account_balance", {"account_number": "00125648"}),
                '{"account_number": "00125648", "balance": 1520.33, "currency": "USD"}',
                "Account 00125648 has a balance of $1,520.33.",
            ),
            {},
        ),
        (
            _tool_row(
                "Where is my order 550e8400-e29b-41d4-a716-446655440000?",
                _call("track_order", {"order_id": "550e8400-e29b-41d4-a716-446655440000"}),
                '{"order_id": "550e8400-e29b-41d4-a716-446655440000", "status": "shipped", "carrier": "UPS"}',
                "Order 550e8400-e29b-41d4-a716-446655440000 has shipped with UPS.",
            ),
            {},
        ),
        (
            _tool_row(
                "How did campaign CMP-20230201 perform?",
                _call("get_campaign_stats", {"campaign_id": "CMP-20230201"}),
                '{"campaign_id": "CMP-20230201", "impressions": 184220, "clicks": 5531}',
                "CMP-20230201 had 184,220 impressions and 5,531 clicks.",
            ),
            {},
        ),
        (
            _tool_row(
                "What was ACME's revenue in fiscal 2023?",
                _call("get_financials", {"ticker": "ACME", "year": "2023"}),
                '{"ticker": "ACME", "revenue": 23329000000, "net_income": 4120000000}',
                "ACME's revenue in fiscal 2023 was $23.33B, with net income of $4.12B.",
            ),
            {},
        ),
        (
            _tool_row(
                "I'm on version 1.2.3.4 of the desktop agent. Is there an update?",
                _call("check_for_update", {"product": "desktop agent", "current_version": "1.2.3.4"}),
                '{"latest_version": "1.2.4.0", "notes": "Fixes a crash on startup."}',
                "Yes: 1.2.4.0 is out and fixes a crash on startup.",  # an IP's shape, but the tool returned it
            ),
            {},
        ),
        (
            _tool_row(
                "Email john.smith@acme.com that the meeting moved to 3pm.",
                _call("send_email", {"to": "john.smith@acme.com", "subject": "Meeting moved", "body": "Now at 3pm."}),
                '{"status": "sent", "message_id": "<20230201.5566@mail.acme.com>"}',
                "Sent: john.smith@acme.com now knows the meeting is at 3pm.",
            ),
            {},
        ),
        (SMS, {"(415) 555-0132": "<PHONE>"}),  # PII no tool uses is still scrubbed
    ],
    ids=["account number", "uuid", "campaign id", "revenue", "version", "e-mail", "phone, and another one"],
)
def test_scrubbing_leaves_what_tools_pass_and_return_and_the_values_they_use(row, scrubbed):
    kept, report = _clean(row)
    assert kept == [_as_cleaned(row, scrubbed)]
    assert report.counts["cleaning"]["pii_texts_scrubbed"] == len(scrubbed)


PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----"


@pytest.mark.parametrize(
    "row",
    [
        _tool_row(
            "Point the order webhook at https://hooks.acme.dev/orders with my key sk-proj-4fG7hJ9kL2mN5pQ8rS1tU3vW",
            _call(
                "create_webhook",
                {"url": "https://hooks.acme.dev/orders", "api_key": "sk-proj-4fG7hJ9kL2mN5pQ8rS1tU3vW"},
            ),
            '{"webhook_id": "wh_2291", "active": true}',
            "The webhook wh_2291 is active.",
        ),
        _tool_row(
            "Add this deploy key to acme/api.",
            _call("add_deploy_key", {"repo": "acme/api", "key": PEM}),
            '{"id": 88121, "read_only": true}',
            "Added deploy key 88121 (read-only) to acme/api.",
        ),
        _tool_row(
            "Create a token for the CI runner.",
            _call("create_token", {"scope": "repo"}),
            '{"token": "ghp_' + "x7Yq" * 9 + '", "expires": "2024-03-01"}',
            "Your token is ready; it expires on 2024-03-01.",
        ),
    ],
    ids=["API key in a call", "private key in a call", "token in a result"],
)
def test_a_secret_in_what_a_tool_passes_or_returns_drops_the_row_and_says_so(row):
    kept, report = _clean(row, SMS)
    assert kept == [_as_cleaned(SMS, {"(415) 555-0132": "<PHONE>"})]
    assert report.dropped == {"cleaning: secret in a tool call or tool result": 1}
    table = cleaning_table(report.counts["cleaning"], report.dropped, None)
    assert re.search(r"^  secret in a tool call or tool result +1$", table, re.M), table


TICKET = (
    "Hi support, since the update on Monday our warehouse scanners keep dropping off the network every few minutes. "
    "The handhelds show a full signal, but each time they reconnect the pick list is gone and the team has to scan "
    "the whole aisle again, which costs us about an hour per shift. We already restarted the access points and the "
    "scanners, and the problem started the same day the new firmware was pushed to the fleet. Can you open a ticket "
    "for the Leeds site and flag it so that someone from the network team looks at it before the weekend rush?"
)
TICKET_TOOLS = [_tool("create_ticket", site="string", summary="string", priority="string")]


def _ticket(request=TICKET, priority="high", tools=TICKET_TOOLS, system=None, reply="Ticket T-4411 is open."):
    arguments = {"site": "Leeds", "summary": "Scanners drop off the network after the update", "priority": priority}
    return _tool_row(request, _call("create_ticket", arguments), '{"ticket": "T-4411"}', reply, tools, system)


def _with_reasoning(row, reasoning, as_think_block=False):
    row = json.loads(json.dumps(row))
    answer = row["messages"][-1]
    if as_think_block:
        answer["content"] = f"<think>\n{reasoning}\n</think>\n\n{answer['content']}"
    else:
        answer["reasoning_content"] = reasoning
    return row


def _untrained_call(row):
    """The same row with its call turn marked train: false: the reply after the result alone is trained."""
    row = json.loads(json.dumps(row))
    next(m for m in row["messages"] if m["role"] == "assistant")["train"] = False
    return row


def _copy(row, **columns):
    """The same row as another export writes it: other call ids, its own id column."""
    return {**json.loads(json.dumps(row).replace("call_0", "call_9f3k")), **columns}


@pytest.mark.parametrize(
    "first, second, dropped",
    [
        (_ticket(), _copy(_ticket(), id="row-17"), "exact duplicate"),
        (_ticket(), _ticket(tools=[*TICKET_TOOLS, _tool("close_ticket", ticket="string")]), None),
        (_ticket(), _ticket(system="You are the help desk of Acme Logistics."), None),
        (_with_reasoning(_ticket(), "The ticket is open."), _with_reasoning(_ticket(), "T-4411 it is."), None),
        (
            _with_reasoning(_ticket(), "Say its id."),
            _with_reasoning(_ticket(), "Say its id.", as_think_block=True),
            "exact duplicate",
        ),
        (_ticket(), _ticket(TICKET.replace("about an hour", "almost an hour")), "near duplicate"),
        (_ticket(), _ticket(priority="urgent"), None),  # the same request, another call: not a duplicate
        (
            _ticket(),
            _ticket(
                priority="urgent",
                tools=[_tool("create_ticket", site="string", summary="string", priority="string", team="string")],
            ),
            None,
        ),
        (_ticket(), _untrained_call(_ticket()), None),  # the same conversation, another turn trained
    ],
    ids=[
        "a copy with other ids",
        "other tools",
        "a system prompt",
        "other reasoning",
        "reasoning written two ways",
        "a one-word edit",
        "another call",
        "other tools and another call",
        "a turn marked train: false",
    ],
)
def test_dedup_compares_everything_trained_or_conditioning_it(first, second, dropped):
    kept, report = _clean(first, second)
    assert kept == [_as_cleaned(row) for row in ([first] if dropped else [first, second])]
    assert report.dropped == ({f"cleaning: {dropped}": 1} if dropped else {})


HAIKU = "Write a haiku about autumn leaves."
GOOD_HAIKU = "Crimson leaves let go,\ndrifting on the cooling wind,\nthe maple stands bare."
AS_AN_AI = "As an AI language model, I don't experience autumn, but here is a haiku:\nLeaves fall.\nIt is cold."
REPEATED = "Step 1: open the app.\nStep 1: open the app.\nStep 1: open the app.\nStep 2: tap Settings."
DECLINE = "I'm sorry, but I can't book flights: none of my tools can do that. I can check a flight's status for you."
FLIGHTS = [_tool("get_flight_status", flight_number="string", date="string")]


def _pair(chosen, rejected, prompt=HAIKU, tools=None):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **({"tools": tools} if tools else {})}


def _chat(*turns, tools=None):
    messages = [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(turns)]
    return {"messages": messages, **({"tools": tools} if tools else {})}


@pytest.mark.parametrize(
    "row, dropped",
    [
        (_pair(GOOD_HAIKU, AS_AN_AI), None),  # UltraFeedback: the rejected side is the one that sounds like a chatbot
        (_pair(AS_AN_AI, GOOD_HAIKU), "refusal or boilerplate phrase"),
        (_pair(GOOD_HAIKU, "Leaves fall.\nLeaves fall.\nLeaves fall."), None),
        (_pair(REPEATED, GOOD_HAIKU, "How do I turn on dark mode?"), "repeated lines"),
        (
            _pair(
                [{"role": "assistant", "content": "Tap Appearance, then Dark."}],
                [{"role": "assistant", "content": "Tap Display."}],
                [
                    {"role": "user", "content": "How do I open the settings?"},
                    {"role": "assistant", "content": REPEATED},  # an earlier turn: the prompt, not trained
                    {"role": "user", "content": "And then dark mode?"},
                ],
            ),
            None,
        ),
        (_chat("Book me a flight to Lisbon on Friday.", DECLINE, tools=FLIGHTS), None),
        (_chat("Book me a flight to Lisbon on Friday.", DECLINE), "refusal or boilerplate phrase"),
        (
            _chat("Is BA492 on time?", "As an AI language model, I cannot know.", tools=FLIGHTS),
            "refusal or boilerplate phrase",
        ),
        (
            _pair(
                [{"role": "assistant", "content": "I don't have a tool for that. " + DECLINE}],
                [
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [_call("get_flight_status", {"flight_number": "LIS"})],
                    }
                ],
                [{"role": "user", "content": "Book me a flight to Lisbon on Friday."}],
                FLIGHTS,
            ),
            None,
        ),
        # every assistant turn of a chat row is trained (sft_chat.py's loss_on=all_assistant), an early one too
        (_chat("How do I open the settings?", REPEATED, "And dark mode?", "Tap Appearance."), "repeated lines"),
        (
            {
                "messages": [
                    {"role": "user", "content": "How do I open the settings?"},
                    {"role": "assistant", "content": REPEATED, "train": False},  # context, not trained
                    {"role": "user", "content": "And dark mode?"},
                    {"role": "assistant", "content": "Tap Appearance."},
                ]
            },
            None,
        ),
    ],
    ids=[
        "rejected says as an AI",
        "chosen says as an AI",
        "rejected repeats lines",
        "chosen repeats lines",
        "the prompt's assistant turn repeats lines",
        "a declined tool request",
        "a refusal without tools",
        "boilerplate with tools",
        "a pair declining a tool request",
        "an early trained turn repeats lines",
        "a turn marked train: false repeats lines",
    ],
)
def test_filters_read_what_is_trained_as_good(row, dropped):
    kept, report = _clean(row)
    assert len(kept) == (0 if dropped else 1)
    assert report.dropped == ({f"cleaning: {dropped}": 1} if dropped else {})


COUNTED = """## Count words in a file

```python
from collections import Counter  # counts hashable items

# read the whole file as text
text = open("book.txt").read()
# split on whitespace, lower-cased
words = text.lower().split()
# the ten most common words
print(Counter(words).most_common(10))
```

## Why Counter

`Counter` is a dict subclass: `counts["the"]` is one word's count."""


@pytest.mark.parametrize(
    "text, dropped",
    [
        ("```\nx = 1\n```", None),  # the two fences are no repeated lines
        ("Before:\n```\nx = 1\n```\nAfter:\n```\nx = 2\n```", None),
        ("func a() {\n\treturn\n}\nfunc b() {\n\treturn\n}", None),  # unfenced: `}` is punctuation alone
        ("Part one\n---\nPart two\n---\nPart three\n---", None),  # rules: punctuation alone
        ("```\nagain\nagain\nagain\n```", None),  # code may repeat itself
        (REPEATED, "repeated lines"),
        ("```sh\nmake\n```\n" + REPEATED, "repeated lines"),  # the prose around code is still judged
        (COUNTED, None),  # a comment on every line and two headings: Markdown and Python, not noise
        ("# Usage #\n\nRun `make`, then `make install`.", None),  # a heading's closing sequence is markup too
        ("Rest parameters:\n```js\nconst f = (...args) => g(...args);\nconst h = (...xs) => k(...xs);\n```", None),
        ("Loving it #summer #beach #sun #fun #tbt", "symbol ratio"),  # hashtags in prose
        ("# # # # # # # # lorem ipsum", "symbol ratio"),  # only the heading's own marker is markup
        ("Well... maybe... I guess... not sure...", "symbol ratio"),
    ],
    ids=[
        "a bare fence pair",
        "two short blocks",
        "closing braces unfenced",
        "horizontal rules",
        "repeated code",
        "repeated prose",
        "repeated prose after code",
        "markdown and python comments",
        "a closed heading",
        "ellipses in code",
        "hashtags",
        "hashes after a heading marker",
        "ellipses in prose",
    ],
)
def test_quality_filters_judge_prose_not_code_or_markup(text, dropped):
    assert quality_problem(text, CLEAN_DEFAULTS) == dropped


# What other tools write reaches the model as they wrote it: indentation and runs of spaces are meaning in code,
# YAML and tables, and what calls pass and tools return is data. Each row must come out of the cleaner unchanged.
PYTHON = (
    "Here is a function that returns the mean of a list, with a loop you can follow step by step:\n\n"
    "```python\n"
    "def mean(values):\n"
    "    total = 0           # running sum\n"
    "    for value in values:\n"
    "        total += value  # one value at a time\n"
    "    return total / len(values)\n"
    "```"
)
YAML = (
    'services:\n  api:\n    image: acme/api:1.4\n    ports:\n      - "8080:80"\n    environment:\n      LOG:  debug\n'
)
TABLE = (
    "The forecast for tomorrow:\n\n"
    "| city   | sky      | high (°C) |\n"
    "|--------|----------|----------:|\n"
    "| Paris  | sunny    |        21 |\n"
    "| Oslo   | rain     |         9 |"
)
FORECAST = json.dumps({"city": "Oslo", "days": [{"sky": "rain", "high": 9}, {"sky": "cloudy", "high": 11}]}, indent=2)


@pytest.mark.parametrize(
    "row",
    [
        _chat("Write a Python function that returns the mean of a list.", PYTHON),
        {"prompt": "Write the Compose service for our API, logging at debug level:\n", "completion": YAML},
        _chat("What's the weather in Paris and Oslo tomorrow?", TABLE),
        _tool_row(
            "Save a note: Milk,  eggs, then on a new line: and bread.",
            _call("save_note", {"text": "Milk,  eggs\nand bread"}),
            '{"saved": true}',
            "Saved your note.",
        ),
        _tool_row(
            "Forecast for Oslo, two days?", _call("get_forecast", {"city": "Oslo"}), FORECAST, "Rain, then clouds."
        ),
        _tool_row("Clear my cart.", _call("clear_cart", {}), "", "Your cart is empty now."),
    ],
    ids=[
        "python indentation and aligned comments",
        "yaml completion after a prompt ending in a newline",
        "markdown table with padded cells",
        "call argument with two spaces and a newline",
        "pretty-printed json tool result",
        "empty tool result",
    ],
)
def test_default_cleaning_passes_code_tables_calls_and_results_through_unchanged(row):
    kept, report = _clean(row)
    assert kept == [row] and not report.dropped


@pytest.mark.parametrize(
    "row, expected",
    [
        (
            _chat("Fix this:\r\nx =  1\r\n", "Indent it:\r\n```\r\n    x = 1\r\n```"),
            _chat("Fix this:\nx =  1", "Indent it:\n```\n    x = 1\n```"),
        ),
        (_chat("Spell cafe\u0301  for me.", "    cafe\u0301"), _chat("Spell café  for me.", "    café")),
    ],
    ids=["crlf", "nfd"],
)
def test_default_cleaning_normalises_line_ends_and_unicode_and_keeps_the_rest(row, expected):
    kept, _ = _clean(row)
    assert kept == [expected]


@pytest.mark.parametrize(
    "first, second, dropped",
    [
        (
            _chat("How  do I  reset my   password?", "Open  Settings,   then  Account."),
            _chat("How do I reset my password?", "Open Settings, then Account."),
            "exact duplicate",
        ),
        (
            _chat("Sum a list.", PYTHON),
            _chat("Sum a list.", PYTHON.replace("# running", "#     running")),
            "exact duplicate",
        ),
        (
            _chat("Sum a list.", PYTHON),
            _chat("Sum a list.", PYTHON.replace("    return", "        return")),  # returns inside the loop
            "near duplicate",  # another program, not an exact copy; an edit this small is near, like a word's
        ),
    ],
    ids=["runs of spaces", "a comment aligned otherwise", "other indentation: not exact, near"],
)
def test_dedup_folds_runs_of_spaces_in_its_key_and_keeps_the_first_row_as_written(first, second, dropped):
    kept, report = _clean(first, second)
    assert kept == ([first] if dropped else [first, second])
    assert report.dropped == ({f"cleaning: {dropped}": 1} if dropped else {})
