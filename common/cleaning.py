"""Cleaning: normalisation, PII scrubbing, quality filters, exact and near deduplication, decontamination.

One `clean` dict in PARAMS drives it for every schema (chat, completion, preference). Each step counts
what it removed and why into the DataReport. Rows keep their order; of duplicates, the first is kept.
"""

import hashlib
import json
import re
import unicodedata

from common.data import DataReport, Row

# Defaults, and why:
CLEAN_DEFAULTS = dict(
    enabled=True,
    normalize=True,  # NFC and whitespace runs: the same text typed two ways is one text
    pii=True,  # e-mail, phone, IP and API-key patterns become placeholders
    min_chars=1,  # on the row's trained text (answers, completions, text)
    max_chars=0,  # 0: no limit
    phrases=True,  # drop answers with refusal or boilerplate phrases (REFUSALS, plus extra_phrases)
    extra_phrases=[],
    max_repeated_lines=0.3,  # Gopher: drop text whose duplicate lines are more than 30% of its lines
    max_symbol_ratio=0.1,  # Gopher: drop text with more than 0.1 '#' or '...' per word
    exact_dedup=True,
    near_dedup=True,
    shingle=5,  # words per shingle: 5-grams separate paraphrase from copy on texts of ~100+ words
    num_perm=128,  # MinHash permutations: Jaccard estimate error about 1/sqrt(128) = 0.09
    threshold=0.8,  # Jaccard above which two rows are near-duplicates (small edits of one text)
    eval_sets=[],  # local files or hub datasets whose inputs must not appear in training rows
    ngram=13,  # words shared with an eval input that mark contamination (GPT-3's choice)
)
REFUSALS = (
    "as an ai language model", "as an ai assistant", "i'm sorry, but i can't", "i am sorry, but i cannot",
    "i cannot fulfill", "i can't assist with", "i'm unable to help", "i cannot help with that",
    "openai's use case policy", "i don't have personal opinions",
)
PII = [
    ("<EMAIL>", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("<SECRET>", re.compile(r"\b(?:sk-[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{30,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}"
                            r"|xox[abpr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})\b")),
    ("<IP>", re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")),
    ("<PHONE>", re.compile(r"(?<![\w+(])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)|\d{2,4})[ .-]?\d{3,4}[ .-]?\d{3,4}\b")),
]
SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")


def fields(row: dict) -> list[tuple[str, str, bool]]:
    """(path, text, trained) for every text in a row of any schema; trained marks answers and targets."""
    out = []
    if "messages" in row:
        out += [(f"messages.{i}", m["content"], m["role"] == "assistant") for i, m in enumerate(row["messages"])]
    for key, trained in (("text", True), ("prompt", False), ("completion", True), ("chosen", True), ("rejected", True)):
        value = row.get(key)
        if isinstance(value, str):
            out.append((key, value, trained))
        elif isinstance(value, list):
            out += [(f"{key}.{i}", m["content"], m["role"] == "assistant") for i, m in enumerate(value)]
    return out


def _rewrite(row: dict, fn) -> dict:
    """The row with fn applied to each text; turns left empty are dropped from message lists."""
    row = dict(row)
    for key in ("messages", "prompt", "chosen", "rejected"):
        if isinstance(row.get(key), list):
            turns = [{**m, "content": fn(m["content"])} for m in row[key]]
            row[key] = [m for m in turns if m["content"]]
    for key in ("text", "prompt", "completion", "chosen", "rejected"):
        if isinstance(row.get(key), str):
            row[key] = fn(row[key])
    return row


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def scrub(text: str) -> str:
    for placeholder, pattern in PII:
        text = pattern.sub(placeholder, text)
    return text


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def quality_problem(text: str, settings: dict) -> str | None:
    """Why a trained text fails the filters (Gopher-style rules and phrases), or None."""
    lowered = text.lower()
    if settings["phrases"]:
        for phrase in (*REFUSALS, *(p.lower() for p in settings["extra_phrases"])):
            if phrase in lowered:
                return "refusal or boilerplate phrase"
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) >= 3 and 1 - len(set(lines)) / len(lines) > settings["max_repeated_lines"]:
        return "repeated lines"
    words = max(1, len(_words(text)))
    if (text.count("#") + text.count("...") + text.count("…")) / words > settings["max_symbol_ratio"]:
        return "symbol ratio"
    return None


def clean_rows(rows: list[Row], settings: dict, report: DataReport, eval_inputs: dict | None = None) -> list[Row]:
    """The rows that survive every enabled step, rewritten (normalised, scrubbed); counts go into the report.

    eval_inputs maps an eval-set name to its input texts (see eval_set_inputs) for decontamination.
    """
    if not settings["enabled"]:
        return rows
    counts = report.counts.setdefault("cleaning", {"rows_in": len(rows)})
    kept = []
    for row in rows:
        data = _rewrite(row.data, normalize) if settings["normalize"] else row.data
        if settings["pii"]:
            scrubbed = _rewrite(data, scrub)
            changed = sum(a[1] != b[1] for a, b in zip(fields(data), fields(scrubbed)))
            counts["pii_texts_scrubbed"] = counts.get("pii_texts_scrubbed", 0) + changed
            data = scrubbed
        reason = _row_problem(data, settings)
        if reason:
            report.drop(f"cleaning: {reason}")
            continue
        kept.append(Row(data, row.where))
    if settings["exact_dedup"]:
        kept = _exact_dedup(kept, report)
    if settings["near_dedup"]:
        kept = _near_dedup(kept, settings, report)
    if eval_inputs:
        kept = _decontaminate(kept, eval_inputs, settings["ngram"], report)
    counts["rows_out"] = len(kept)
    return kept


def _row_problem(data: dict, settings: dict) -> str | None:
    texts = fields(data)
    trained = "\n".join(text for _, text, is_trained in texts if is_trained)
    if not trained.strip() or ("messages" in data and not any(m["role"] == "assistant" for m in data["messages"])):
        return "empty after normalisation"
    if len(trained) < settings["min_chars"]:
        return f"shorter than min_chars={settings['min_chars']}"
    if settings["max_chars"] and len(trained) > settings["max_chars"]:
        return f"longer than max_chars={settings['max_chars']}"
    return quality_problem(trained, settings)


def _exact_dedup(rows: list[Row], report: DataReport) -> list[Row]:
    seen, kept = set(), []
    for row in rows:
        key = hashlib.sha1(json.dumps([t for _, t, _ in fields(row.data)]).encode()).digest()
        if key in seen:
            report.drop("cleaning: exact duplicate")
            continue
        seen.add(key)
        kept.append(row)
    return kept


def _near_dedup(rows: list[Row], settings: dict, report: DataReport) -> list[Row]:
    """MinHash LSH over word shingles of the whole row; a row close to an earlier kept row is dropped."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=settings["threshold"], num_perm=settings["num_perm"])
    kept = []
    for i, row in enumerate(rows):
        words = _words(" ".join(t for _, t, _ in fields(row.data)))
        n = settings["shingle"]
        shingles = {" ".join(words[j : j + n]).encode() for j in range(max(1, len(words) - n + 1))}
        signature = MinHash(num_perm=settings["num_perm"])
        signature.update_batch(list(shingles))
        if lsh.query(signature):
            report.drop("cleaning: near duplicate")
            continue
        lsh.insert(str(i), signature, check_duplication=False)
        kept.append(row)
    return kept


def input_texts(row: dict) -> list[str]:
    """The inputs of an eval row (user and system turns, prompts, plain text): what a model must not have seen."""
    return [text for _, text, trained in fields(row) if not trained or "text" in row]


def _grams(text: str, n: int) -> set[str]:
    """Word n-grams; a text shorter than n words is one gram, so short eval prompts are matched whole."""
    words = _words(normalize(text))
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def _decontaminate(rows: list[Row], eval_inputs: dict, n: int, report: DataReport) -> list[Row]:
    grams = {name: set().union(*(_grams(t, n) for t in texts)) for name, texts in eval_inputs.items()}
    kept, per_set = [], {name: 0 for name in eval_inputs}
    for row in rows:
        row_grams = set().union(*(_grams(t, n) for _, t, _ in fields(row.data)))
        hit = next((name for name, g in grams.items() if row_grams & g), None)
        if hit:
            per_set[hit] += 1
            report.drop(f"cleaning: contaminated by {hit}")
            continue
        kept.append(row)
    report.counts.setdefault("cleaning", {})["contaminated"] = per_set
    return kept


def eval_set_inputs(eval_sets: list, report: DataReport) -> dict:
    """{name: input texts} of each named evaluation set (a local file or a hub dataset id)."""
    from common.data import load_sources

    return {str(source): [t for row in load_sources([source], DataReport(), "clean.eval_sets") for t in input_texts(row.data)]
            for source in eval_sets}
