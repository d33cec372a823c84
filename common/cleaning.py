"""Cleaning: normalisation, PII scrubbing, quality filters, exact and near deduplication, decontamination.

One `clean` dict in PARAMS drives it for every schema (chat, completion, preference). Each step counts
what it removed and why into the DataReport. Rows keep their order; of duplicates, the first is kept.
"""

import dataclasses
import hashlib
import json
import os
import re
import unicodedata

from common.data import DataReport, Row
from common.distributed import is_main, wait_for_everyone
from common.errors import UserError
from common.tool_calls import arguments_of, map_strings

# Defaults, and why:
CLEAN_DEFAULTS = dict(
    enabled=True,
    normalize=True,  # NFC and whitespace runs: the same text typed two ways is one text
    pii=True,  # e-mail, phone, IP and API-key patterns become placeholders
    min_chars=1,  # on the row's trained text (answers, completions, text)
    max_chars=0,  # 0: no limit
    min_tokens=0,  # the same text in the model's tokens; 0: no limit (max_length truncates, this drops)
    max_tokens=0,
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
    decontaminate_held_out=True,  # the script's own test_data, eval_data and exact_match_data count as eval_sets
    ngram=13,  # words shared with an eval input that mark contamination (GPT-3's choice)
    cache_dir="outputs/clean_cache",  # cleaned rows keyed by data and settings: reruns and other ranks reuse them
)
HELD_OUT_KEYS = ("test_data", "exact_match_data", "eval_data")
CACHE_VERSION = 2  # part of the cache key: raise it when a step changes what it keeps
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
    for key, trained in (("messages", True), ("text", True), ("prompt", False), ("completion", True), ("chosen", True),
                         ("rejected", True)):
        value = row.get(key)
        if isinstance(value, str):
            out.append((key, value, trained))
        elif isinstance(value, list):
            out += [(f"{key}.{i}", _turn_text(m), m["role"] == "assistant") for i, m in enumerate(value)]
    return out


def _turn_text(message: dict) -> str:
    """A turn's text, with its tool calls written out (a call is an answer as much as text is)."""
    calls = [f"{c['function']['name']}({json.dumps(arguments_of(c), ensure_ascii=False)})" for c in message.get("tool_calls") or []]
    return "\n".join([message.get("content") or "", *calls]).strip()


def _rewrite(row: dict, fn) -> dict:
    """The row with fn applied to each text (an assistant turn's reasoning_content and the string values of its
    calls' arguments too, so a value copied from the request stays equal to it); turns left empty are dropped from
    message lists."""
    row = dict(row)
    for key in ("messages", "prompt", "chosen", "rejected"):
        if isinstance(row.get(key), list):
            turns = [{**m, "content": fn(m.get("content") or ""),
                      **({"reasoning_content": fn(m["reasoning_content"])} if isinstance(m.get("reasoning_content"), str) else {}),
                      **({"tool_calls": [map_strings(c, fn) for c in m["tool_calls"]]} if m.get("tool_calls") else {})}
                     for m in row[key]]
            row[key] = [m for m in turns if m["content"] or m.get("tool_calls")]
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


def _scrubbed(data: dict) -> tuple[dict, int]:
    """The row with PII scrubbed, and how many of its texts changed."""
    scrubbed = _rewrite(data, scrub)
    return scrubbed, sum(a[1] != b[1] for a, b in zip(fields(data), fields(scrubbed)))


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


def clean_once(rows: list[Row], params: dict, report: DataReport, tokenizer=None) -> list[Row]:
    """clean_rows with params["clean"], run by the main process only and cached in clean.cache_dir under a key of
    the rows, the settings and the eval sets' inputs: other ranks, and reruns on the same data, read the cache.
    tokenizer counts tokens for min_tokens and max_tokens."""
    settings = params["clean"]
    if not settings["enabled"]:
        return rows
    by_tokens = settings["min_tokens"] or settings["max_tokens"]
    if by_tokens and tokenizer is None:
        raise UserError("clean.min_tokens and clean.max_tokens need the model's tokenizer (not loaded for this stage)")
    eval_sets = list(settings["eval_sets"])
    if settings["decontaminate_held_out"]:
        for key in HELD_OUT_KEYS:
            value = params.get(key)
            eval_sets += [value] if isinstance(value, str) and value else value if isinstance(value, list) else []
    eval_inputs = eval_set_inputs(eval_sets)  # every rank reads them, so a missing file stops every rank alike
    steps = {k: v for k, v in settings.items() if k != "cache_dir"}
    counter = [tokenizer.name_or_path, len(tokenizer)] if by_tokens else None
    content = json.dumps([CACHE_VERSION, steps, counter, eval_inputs, [[r.data, r.where] for r in rows]], sort_keys=True)
    path = os.path.join(settings["cache_dir"], hashlib.sha256(content.encode()).hexdigest()[:32] + ".json")
    cached = os.path.isfile(path)
    if is_main() and not cached:
        fresh = DataReport()
        kept = clean_rows(rows, settings, fresh, eval_inputs, tokenizer)
        result = {"dropped": fresh.dropped, "cleaning": fresh.counts["cleaning"], "rows": [[r.data, r.where] for r in kept]}
        os.makedirs(settings["cache_dir"], exist_ok=True)
        with open(f"{path}.tmp{os.getpid()}", "w", encoding="utf-8") as f:
            json.dump(result, f)
        os.replace(f"{path}.tmp{os.getpid()}", path)  # a killed run leaves no half-written cache entry
    wait_for_everyone()
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    for reason, n in result["dropped"].items():
        report.drop(reason, n)
    report.counts["cleaning"] = {**result["cleaning"], "cache": path}
    if is_main():
        print(cleaning_table(result["cleaning"], result["dropped"], path if cached else None), flush=True)
    return [Row(data, where) for data, where in result["rows"]]


def cleaning_table(counts: dict, dropped: dict, reused: str | None) -> str:
    """The short table a script prints: rows in and out, then each reason with its count."""
    lines = [f"cleaning: {counts['rows_in']} rows in, {counts['rows_out']} kept" + (f" (reused {reused})" if reused else "")]
    removed = [(reason.removeprefix("cleaning: "), n) for reason, n in dropped.items() if reason.startswith("cleaning: ")]
    removed += [(f"contaminated by {name}", 0) for name, n in counts.get("contaminated", {}).items() if not n]
    for reason, n in [*removed, ("texts with PII scrubbed (kept)", counts.get("pii_texts_scrubbed", 0))]:
        lines.append(f"  {reason:<48} {n:>7}")
    return "\n".join(lines)


def scrub_rows(rows: list[Row], settings: dict, report: DataReport) -> list[Row]:
    """Every text of every row with PII and keys replaced (clean.pii), before the rows go anywhere: synth_data
    sends its seed rows to an endpoint that may be a hosted API, and copies prompts into its outputs."""
    if not (settings["enabled"] and settings["pii"]):
        return rows
    results = [_scrubbed(row.data) for row in rows]
    report.counts["input_texts_scrubbed"] = sum(changed for _, changed in results)
    return [dataclasses.replace(row, data=data) for row, (data, _) in zip(rows, results)]


def clean_rows(rows: list[Row], settings: dict, report: DataReport, eval_inputs: dict | None = None,
               tokenizer=None) -> list[Row]:
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
            data, changed = _scrubbed(data)
            counts["pii_texts_scrubbed"] = counts.get("pii_texts_scrubbed", 0) + changed
        prompt_only = "messages" in row.data and not any(m["role"] == "assistant" for m in row.data["messages"])
        reason = _row_problem(data, settings, prompt_only, tokenizer)
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


def _row_problem(data: dict, settings: dict, prompt_only: bool, tokenizer=None) -> str | None:
    """prompt_only: a row of requests (user turns only, as synth_data.py writes them), judged on its requests."""
    texts = fields(data)
    trained = "\n".join(text for _, text, is_trained in texts if is_trained or prompt_only)
    if not trained.strip():
        return "empty after normalisation"
    if len(trained) < settings["min_chars"]:
        return f"shorter than min_chars={settings['min_chars']}"
    if settings["max_chars"] and len(trained) > settings["max_chars"]:
        return f"longer than max_chars={settings['max_chars']}"
    if tokenizer is not None and (settings["min_tokens"] or settings["max_tokens"]):
        tokens = len(tokenizer(trained, add_special_tokens=False)["input_ids"])
        if tokens < settings["min_tokens"]:
            return f"fewer tokens than min_tokens={settings['min_tokens']}"
        if settings["max_tokens"] and tokens > settings["max_tokens"]:
            return f"more tokens than max_tokens={settings['max_tokens']}"
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
    """The inputs of an eval row (user turns, prompts, plain text): what a model must not have seen. System
    turns are left out: a system prompt shared by the whole set is instructions, not a test item."""
    texts = [row[key] for key in ("text", "prompt") if isinstance(row.get(key), str)]
    for key in ("messages", "prompt"):
        if isinstance(row.get(key), list):
            texts += [m["content"] for m in row[key] if isinstance(m, dict) and m.get("role") == "user"]
    return texts


SHORT_INPUT_WORDS = 4  # an eval input shorter than ngram but this long is looked for inside training texts


def _grams(words: list[str], n: int) -> set[str]:
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def _decontaminate(rows: list[Row], eval_inputs: dict, n: int, report: DataReport) -> list[Row]:
    """Drop rows sharing an n-gram with an eval input. An input shorter than n words counts whole: found as a
    word sequence inside a training text when it has SHORT_INPUT_WORDS or more, else only as an equal text."""
    grams, lengths = {}, {n}
    for name, texts in eval_inputs.items():
        grams[name] = set()
        for words in filter(None, (_words(normalize(t)) for t in texts)):
            grams[name] |= _grams(words, min(n, len(words)))
            if len(words) >= SHORT_INPUT_WORDS:
                lengths.add(min(n, len(words)))
    kept, per_set = [], {name: 0 for name in eval_inputs}
    for row in rows:
        row_grams = set()
        for words in (_words(normalize(t)) for _, t, _ in fields(row.data)):
            if len(words) < n:
                row_grams.add(" ".join(words))
            for length in lengths:
                row_grams |= _grams(words, length)
        hit = next((name for name, g in grams.items() if row_grams & g), None)
        if hit:
            per_set[hit] += 1
            report.drop(f"cleaning: contaminated by {hit}")
            continue
        kept.append(row)
    report.counts.setdefault("cleaning", {})["contaminated"] = per_set
    return kept


def eval_set_inputs(eval_sets: list) -> dict:
    """{name: input texts} of each named evaluation set (a local file, a hub dataset id, or a source dict)."""
    from common.data import load_sources

    inputs = {}
    for source in eval_sets:
        name = str(source.get("path")) if isinstance(source, dict) else str(source)
        try:
            rows = load_sources([source], DataReport(), "clean.eval_sets")
        except UserError as e:
            raise UserError(f"clean.eval_sets: {e}") from None
        inputs[name] = [text for row in rows if isinstance(row.data, dict) for text in input_texts(row.data)]
    return inputs
