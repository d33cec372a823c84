"""PII shapes (common/pii.py): what is PII becomes a placeholder, and ids, amounts and versions stay as they are."""

import pytest

from common.pii import scrub

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(
    "text, expected",
    [
        # PII
        ("mail bob.smith+x@mail.co.uk now", "mail <EMAIL> now"),
        ("ip 10.0.0.255 and 999.1.1.1", "ip <IP> and 999.1.1.1"),
        ("the server is 192.168.10.24.", "the server is <IP>."),
        ("token hf_" + "a" * 34, "token <SECRET>"),
        (f"key:\n{PEM}\nend", "key:\n<SECRET>\nend"),
        ("call (415) 555-0132 or +44 20 7946 0958", "call <PHONE> or <PHONE>"),
        ("call +1 415-555-0132, +14155550132 or +1 (415) 555-0132", "call <PHONE>, <PHONE> or <PHONE>"),
        (
            "call 415-555-0132, 415.555.0132, 1-800-555-0199 or 020 7946 0958",
            "call <PHONE>, <PHONE>, <PHONE> or <PHONE>",
        ),
        # not PII: plain numbers, ids, amounts, versions, dates
        ("version 3.11.2 and 2024 and 12 34", "version 3.11.2 and 2024 and 12 34"),
        ("account 00125648 holds 1520.33", "account 00125648 holds 1520.33"),
        ("order 550e8400-e29b-41d4-a716-446655440000", "order 550e8400-e29b-41d4-a716-446655440000"),
        ("campaign CMP-20230201 and INV-2023-0201-5566", "campaign CMP-20230201 and INV-2023-0201-5566"),
        (
            "revenue 23329000000 (23 329 000 000, 23.329.000.000)",
            "revenue 23329000000 (23 329 000 000, 23.329.000.000)",
        ),
        ("on v1.2.3.4, version 10.0.19041.1, version: 1.2.3.4", "on v1.2.3.4, version 10.0.19041.1, version: 1.2.3.4"),
        ("build 4.18.2.1 of nginx/1.2.3.4, schema 1.2.3.4.5", "build 4.18.2.1 of nginx/1.2.3.4, schema 1.2.3.4.5"),
        ('{"latest_version": "1.2.4.0"}', '{"latest_version": "1.2.4.0"}'),
        ("npm i react@18.2.0 on 2023-02-01 at 10:30", "npm i react@18.2.0 on 2023-02-01 at 10:30"),
        ("extension 555-0132, card 4111 1111 1111 1111", "extension 555-0132, card 4111 1111 1111 1111"),
    ],
)
def test_scrub(text, expected):
    assert scrub(text) == expected


def test_what_the_tools_use_stays_and_the_rest_is_scrubbed():
    tool_data = '{"to": "ana@example.com"}\n{"latest_version": "1.2.4.0"}'
    text = "Sent to ana@example.com (cc bob@example.com, (415) 555-0132); 1.2.4.0 is out"
    assert scrub(text, keep=tool_data) == "Sent to ana@example.com (cc <EMAIL>, <PHONE>); 1.2.4.0 is out"
