"""PII in free text: e-mail addresses, phone numbers, IPv4 addresses and secrets, found by shape and replaced by
`<EMAIL>`, `<PHONE>`, `<IP>`, `<SECRET>`.

The shapes are strict on purpose: a placeholder put in place of an account number, an id, an amount or a version
trains a wrong answer, so text that is not clearly PII stays as it is.
- e-mail: name@domain.tld, the top-level domain made of letters (`react@18.2.0` is a package version).
- phone: `+` and a country code then 8 to 15 digits in all (E.164), optionally grouped by spaces, dots, hyphens or a
  parenthesised area code; or a parenthesised area code and a local number, `(415) 555-0132`; or three groups
  joined by spaces, dots or hyphens, the last of four digits, 10 or 11 digits in all (`415-555-0132`,
  `020 7946 0958`, `1-800-555-0199`). Never a digit run without separators (`00125648`, `23329000000`), a group
  inside a longer token (`CMP-20230201`, a UUID's tail), thousands groups (`23 329 000 000`: last group of
  three) or a 7-digit local number (`555-0132`: as plain as a range of numbers).
- IPv4: four dotted numbers of 0-255 that are not part of a longer dotted number (`1.2.3.4.5`) and do not follow
  a version word (`v`, `version`, `latest_version`, `ver`, `release`, `build`, `firmware`, `name/`).
- secret: API keys (OpenAI `sk-`, Hugging Face `hf_`, AWS `AKIA`, GitHub, Slack, Google) and PEM private key
  blocks. Passwords have no shape of their own and are not looked for.
"""

import re
from functools import partial

SECRET = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{30,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}"
    r"|xox[abpr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})\b"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----",
    re.S,
)
EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
IP = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?!\w|\.\d)")
# words just before a dotted number that make it a version; `version` may end a longer name (latest_version)
VERSION_BEFORE = re.compile(r"(?:\bv|versions?|\bver|release|build|firmware|[a-z]/)[\s:=\"'.]*\Z", re.I)
PHONE = re.compile(
    r"(?<![\w+(./-])(?:"
    r"\+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){2,6}"  # +country code and groups
    r"|\(\d{2,5}\)[ .-]?\d{3,4}[ .-]?\d{4}"  # (area) local
    r"|(?:1[ .-])?\d{2,5}[ .-]\d{3,4}[ .-]\d{4}"  # three separated groups, the last of four digits
    r")(?!\w|[.,-]\d)"
)


def _phone(found: re.Match) -> bool:
    digits = sum(c.isdigit() for c in found[0])
    return 8 <= digits <= 15 if found[0].startswith("+") else "(" in found[0] or digits in (10, 11)


def _ip(found: re.Match) -> bool:
    return not VERSION_BEFORE.search(found.string[max(0, found.start() - 12) : found.start()])


KINDS = (("<SECRET>", SECRET, None), ("<EMAIL>", EMAIL, None), ("<IP>", IP, _ip), ("<PHONE>", PHONE, _phone))


def scrub(text: str, keep: str = "") -> str:
    """The text with PII replaced by placeholders; a match that occurs in keep (what the row's tools pass and
    return) stays."""
    for placeholder, pattern, check in KINDS:
        text = pattern.sub(partial(_replace, placeholder, check, keep), text)
    return text


def _replace(placeholder: str, check, keep: str, found: re.Match) -> str:
    return placeholder if found[0] not in keep and (check is None or check(found)) else found[0]
