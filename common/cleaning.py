"""Cleaning: normalisation, PII scrubbing, quality filters, exact and near deduplication, decontamination.

One `clean` dict in PARAMS drives it for every schema (chat, completion, preference). Each step counts
what it removed and why into the DataReport. Rows keep their order; of duplicates, the first is kept.
"""

import hashlib
import json
import re
import unicodedata
import zlib
from functools import partial

import numpy as np
from datasketch import MinHash, MinHashLSH

from common.chat.reasoning import split_reasoning
from common.chat.tools import arguments_of, map_strings, normalize_tools
from common.data import DataReport, Row, load_sources
from common.errors import UserError
from common.pii import SECRET, scrub

# Defaults, and why:
CLEAN_DEFAULTS = dict(
    enabled=True,
    normalize=True,  # NFC, line ends, trailing spaces, long blank runs; never indentation or tool data (normalize)
    pii=True,  # e-mail, phone, IP and API-key patterns become placeholders
    min_chars=1,  # on the row's trained text (answers, completions, text)
    max_chars=0,  # 0: no limit
    min_tokens=0,  # the same text in the model's tokens; 0: no limit (max_length truncates, this drops)
    max_tokens=0,
    phrases=True,  # drop answers with boilerplate or refusal phrases (BOILERPLATE, REFUSALS, extra_phrases)
    extra_phrases=[],
    max_repeated_lines=0.3,  # Gopher: drop text whose duplicate prose lines are more than 30% of them
    max_symbol_ratio=0.1,  # Gopher: drop text with more than 0.1 '#' or '...' in its prose per word
    exact_dedup=True,
    near_dedup=True,
    shingle=5,  # words per shingle: 5-grams separate paraphrase from copy on texts of ~100+ words
    num_perm=128,  # MinHash permutations: Jaccard estimate error about 1/sqrt(128) = 0.09
    threshold=0.8,  # Jaccard above which two rows are near-duplicates (small edits of one text)
    eval_sets=[],  # local files or hub datasets whose inputs must not appear in training rows
    decontaminate_held_out=True,  # the script's own test_data, eval_data and exact_match_data count as eval_sets
    ngram=13,  # words shared with an eval input that mark contamination (GPT-3's choice)
)
HELD_OUT_KEYS = ("test_data", "exact_match_data", "eval_data")
BOILERPLATE = (  # a general chat model's voice, never a specialist's
    "as an ai language model",
    "as an ai assistant",
    "openai's use case policy",
    "i don't have personal opinions",
)
REFUSALS = (  # worded like these, a row with tools declines what its tools cannot do: that is kept
    "i'm sorry, but i can't",
    "i am sorry, but i cannot",
    "i cannot fulfill",
    "i can't assist with",
    "i'm unable to help",
    "i cannot help with that",
)
SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")  # what dedup folds (_fold), never the text itself
LINE_END_SPACES = " \t\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u200b\u3000"
FENCE = re.compile(r"[ \t]*(`{3,}|~{3,})")  # a Markdown code fence opens or closes a code block
HEADING = re.compile(r" {0,3}#{1,6}(?=[ \t]|$)")  # a Markdown heading's opening marker
HEADING_END = re.compile(r"[ \t]+#+[ \t]*$")  # and its optional closing sequence


TEXT_KEYS = ("messages", "text", "prompt", "completion", "chosen", "rejected")
TRAINED_KEYS = ("messages", "text", "completion", "chosen")  # rejected is trained against; a prompt conditions


def fields(row: dict) -> list[tuple[str, str, bool]]:
    """(path, text, trained) for every text in a row of any schema; trained marks what the model learns to write:
    `text`, `completion`, and the assistant turns of `messages` (those not marked `train: false`) and `chosen`."""
    out = []
    for key in TEXT_KEYS:
        value, trained = row.get(key), key in TRAINED_KEYS
        if isinstance(value, str):
            out.append((key, value, trained))
        elif isinstance(value, list):
            out += [
                (f"{key}.{i}", _turn_text(m), trained and m["role"] == "assistant" and m.get("train") is not False)
                for i, m in enumerate(value)
            ]
    return out


def _turn_text(message: dict) -> str:
    """A turn's text, with its tool calls written out (a call is an answer as much as text is)."""
    calls = [
        f"{c['function']['name']}({json.dumps(arguments_of(c), ensure_ascii=False)})"
        for c in message.get("tool_calls") or []
    ]
    return "\n".join([message.get("content") or "", *calls]).strip()


def _rewrite(row: dict, fn, whole=None) -> dict:
    """The row with fn applied to each text it trains or conditions on (an assistant turn's reasoning_content too);
    whole, when given, instead of fn on a text that is a whole field (`text`, `prompt`, `completion`, `chosen` or
    `rejected` as a string). Turns left empty are dropped from message lists. What calls pass (their arguments) and
    what tools returned (tool turns, never dropped) stay exactly as they are: a change there trains a wrong call or
    a wrong reading of a result."""
    row, whole = dict(row), whole or fn
    for key in ("messages", "prompt", "chosen", "rejected"):
        if isinstance(row.get(key), list):
            turns = [
                m
                if m["role"] == "tool"
                else {
                    **m,
                    "content": fn(m.get("content") or ""),
                    **(
                        {"reasoning_content": fn(m["reasoning_content"])}
                        if isinstance(m.get("reasoning_content"), str)
                        else {}
                    ),
                }
                for m in row[key]
            ]
            row[key] = [m for m in turns if m["role"] == "tool" or m["content"] or m.get("tool_calls")]
    for key in ("text", "prompt", "completion", "chosen", "rejected"):
        if isinstance(row.get(key), str):
            row[key] = whole(row[key])
    return row


def normalize(text: str, edges: bool = False) -> str:
    """The text with what carries no meaning made canonical, and nothing else: Unicode NFC, CRLF and CR line ends
    to LF, whitespace at the end of each line dropped, more than two blank lines in a row made two, and blank lines
    at the start and end dropped. Leading indentation and runs of spaces and tabs inside a line are kept (Python and
    YAML blocks, aligned comments, padded Markdown tables), and inside a fenced code block (``` or ~~~) every line
    stays as it is. edges: keep the whitespace that starts and ends the text too (a whole `prompt` or `completion`
    field: they are joined with no separator, so a space or newline where they meet is data). Dedup folds runs of
    spaces itself (_fold), so the same text typed two ways is still one text to it."""
    text = _canonical(text)
    if edges:
        core = text.strip()
        start, end = len(text) - len(text.lstrip()), len(text.rstrip())
        return text[:start] + normalize(core) + text[end:] if core else ""
    lines, blanks = [], 0
    for line, place in zip(text.split("\n"), _fences(text), strict=True):
        if place != "code":
            line = line.rstrip(LINE_END_SPACES)
            blanks = blanks + 1 if not line else 0
            if blanks > 2:
                continue
        lines.append(line)
    while lines and not lines[-1].strip():
        lines.pop()
    start = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    return "\n".join(lines[start:])


def _canonical(text: str) -> str:
    """Unicode NFC, and CRLF and CR line ends as LF: the same text typed two ways as one."""
    return unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")


def _fences(text: str) -> list[str]:
    """Each line's place among Markdown code fences: "prose", "opening" (a fence that opens a code block) or
    "code" (inside a block, its closing fence too). A block closes at a fence of the same character, as long or
    longer, with nothing after it; one never closed runs to the end (CommonMark)."""
    places, fence = [], None
    for line in text.split("\n"):
        found = FENCE.match(line)
        if fence is None:
            fence = found[1] if found else None
            places.append("opening" if found else "prose")
            continue
        if found and found[1][0] == fence[0] and len(found[1]) >= len(fence) and not line[found.end() :].strip():
            fence = None
        places.append("code")
    return places


def _fold(text: str) -> str:
    """A text as dedup compares it: normalised, runs of spaces and tabs inside a line made one space, each line's
    end trimmed, runs of blank lines made one, the whole trimmed. Leading indentation stays (it is a Python or YAML
    block's extent), so two programs that differ in it are two texts; the same prose typed two ways is one."""
    text = _canonical(text)
    lines = []
    for line in text.split("\n"):
        body = line.lstrip(" \t")
        lines.append(line[: len(line) - len(body)] + SPACES.sub(" ", body).strip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _tool_data(row: dict) -> list[str]:
    """What the row's calls pass (their arguments' string values) and what its tools returned (tool turns)."""
    out = []
    for key in ("messages", "prompt", "chosen", "rejected"):
        for m in row.get(key) if isinstance(row.get(key), list) else []:
            if m["role"] == "tool":
                out.append(m.get("content") or "")
            for call in m.get("tool_calls") or []:
                map_strings(call, out.append)  # collects every string value (the mapped call is not needed)
    return out


def _scrubbed(data: dict) -> tuple[dict, int, str | None]:
    """The row with PII scrubbed, how many of its texts changed, and why the row is dropped instead, or None.
    What calls pass and tools returned is never rewritten: a placeholder there would train a wrong call or a wrong
    reading of a result. A PII value found there is the row's data, so it stays wherever the row has it (the request
    and the reply then still agree with the call); a secret there drops the row."""
    tool_data = _tool_data(data)
    if any(SECRET.search(text) for text in tool_data):
        return data, 0, "secret in a tool call or tool result"
    scrubbed = _rewrite(data, partial(scrub, keep="\n".join(tool_data)))
    return scrubbed, sum(a[1] != b[1] for a, b in zip(fields(data), fields(scrubbed), strict=False)), None


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def quality_problem(text: str, settings: dict, has_tools: bool = False) -> str | None:
    """Why a trained text fails the filters (Gopher-style rules and phrases), or None. The Gopher rules read prose:
    lines outside fenced code blocks, for repetition only those with a letter or digit, and for symbols without a
    Markdown heading's markers (words are counted in the whole text). has_tools: the row has tools, so a refusal
    phrase declines a request its tools cannot serve, which a specialist must learn."""
    lowered = text.lower()
    if settings["phrases"]:
        phrases = (*BOILERPLATE, *(() if has_tools else REFUSALS), *(p.lower() for p in settings["extra_phrases"]))
        if any(phrase in lowered for phrase in phrases):
            return "refusal or boilerplate phrase"
    prose = [line for line, place in zip(text.split("\n"), _fences(text), strict=True) if place == "prose"]
    # Repetition is judged on prose: code repeats lines by nature (`}`, `end`, a fence), and so does markup (`---`)
    lines = [line for line in prose if any(c.isalnum() for c in line)]
    if len(lines) >= 3 and 1 - len(set(lines)) / len(lines) > settings["max_repeated_lines"]:
        return "repeated lines"
    # Symbols too: `#` starts a Python comment in code and a heading in Markdown, neither of them noise
    symbols = sum(_symbols(line) for line in prose)
    if symbols / max(1, len(_words(text))) > settings["max_symbol_ratio"]:
        return "symbol ratio"
    return None


def _symbols(line: str) -> int:
    """The `#` and ellipses of a prose line, a Markdown heading's markers left out."""
    heading = HEADING.match(line)
    if heading:
        line = HEADING_END.sub("", line[heading.end() :])
    return line.count("#") + line.count("...") + line.count("…")


def _dedup_view(row: dict) -> tuple[str, str, bytes]:
    """What dedup compares of a row: everything trained or conditioning it as one canonical JSON text (exact dedup);
    its texts as one text (near dedup: the system prompt, requests, tool results, each answer's reasoning, content
    and calls); and a digest of what near duplicates must share exactly: the tools, system prompts and calls (a tool
    list or system prompt is long and shared, so as words it would hide a different condition; a call differing in
    one argument is a different answer), and which turns are marked `train: false`. Ids and columns outside the
    schema are left out: copies of a row differ in them. Texts and argument strings are compared folded (_fold), so
    the same text typed with other runs of spaces is the same; near dedup reads words, which whitespace never
    changes."""
    tools = normalize_tools(row.get("tools"))
    parts, texts, shared = {"tools": tools}, [], [tools]
    for key in TEXT_KEYS:
        value = row.get(key)
        if isinstance(value, str):
            parts[key] = _fold(value)
            texts.append(value)
        elif isinstance(value, list):
            parts[key] = []
            for i, m in enumerate(value):
                # reasoning_content and a leading <think> block are one thing written two ways
                reasoning, content = split_reasoning(m) if m["role"] == "assistant" else ("", m.get("content") or "")
                reasoning, folded = reasoning.strip(), _fold(content)
                turn_calls = [map_strings(c, _fold)["function"] for c in m.get("tool_calls") or []]
                turn_calls = [[f["name"], f["arguments"]] for f in turn_calls]
                untrained = m.get("train") is False
                parts[key].append([m["role"], m.get("name") or "", _fold(reasoning), folded, turn_calls, untrained])
                texts += [reasoning, _turn_text({"content": content, "tool_calls": m.get("tool_calls")})]
                shared += ([folded] if m["role"] == "system" else turn_calls) + ([[key, i]] if untrained else [])
    exact = json.dumps(parts, ensure_ascii=False, sort_keys=True)
    return exact, " ".join(t for t in texts if t), hashlib.blake2b(json.dumps(shared).encode(), digest_size=16).digest()


def eval_sets_of(params: dict) -> list:
    """The sources decontamination checks against: clean.eval_sets, and the script's own held-out files."""
    settings = params["clean"]
    eval_sets = list(settings["eval_sets"])
    if settings["decontaminate_held_out"]:
        for key in HELD_OUT_KEYS:
            value = params.get(key)
            eval_sets += [value] if isinstance(value, str) and value else value if isinstance(value, list) else []
    return eval_sets


def cleaning_table(counts: dict, dropped: dict, reused: str | None) -> str:
    """The short table a script prints: rows in and out, then each reason with its count."""
    lines = [
        f"cleaning: {counts['rows_in']} rows in, {counts['rows_out']} kept" + (f" (reused {reused})" if reused else "")
    ]
    removed = [
        (reason.removeprefix("cleaning: "), n) for reason, n in dropped.items() if reason.startswith("cleaning: ")
    ]
    removed += [(f"contaminated by {name}", 0) for name, n in counts.get("contaminated", {}).items() if not n]
    for reason, n in [*removed, ("texts with PII scrubbed (kept)", counts.get("pii_texts_scrubbed", 0))]:
        lines.append(f"  {reason:<48} {n:>7}")
    return "\n".join(lines)


def scrub_only(settings: dict) -> dict:
    """Clean settings that only scrub PII and keys (when settings do): what synth_data.py does to its seed rows
    before any of them is sent to an endpoint (which may be a hosted API) or copied into its outputs."""
    off = dict(normalize=False, min_chars=0, max_chars=0, min_tokens=0, max_tokens=0, phrases=False)
    off |= dict(max_repeated_lines=1.0, max_symbol_ratio=1e9, exact_dedup=False, near_dedup=False, eval_sets=[])
    return {**settings, **off, "decontaminate_held_out": False}


def clean_rows(
    rows: list[Row], settings: dict, report: DataReport, eval_inputs: dict | None = None, tokenizer=None
) -> list[Row]:
    """The rows that survive every enabled step, rewritten (normalised, scrubbed); counts go into the report.

    eval_inputs maps an eval-set name to its input texts (see eval_set_inputs) for decontamination. The same
    per-row steps and selection run over Arrow batches in common.prepare; this is the in-memory form.
    """

    if not settings["enabled"]:
        return rows
    checks = RowCleaner(settings, eval_inputs, tokenizer)
    results = [checks(row.data) for row in rows]
    counts = report.counts.setdefault("cleaning", {"rows_in": len(rows)})
    counts["pii_texts_scrubbed"] = counts.get("pii_texts_scrubbed", 0) + sum(r["pii"] for r in results)
    for r in results:
        if r["reason"]:
            report.drop(f"cleaning: {r['reason']}")
    kept = select_rows(
        np.array([not r["reason"] for r in results], dtype=bool),
        np.array([r["exact"] for r in results], dtype=np.int64),
        np.array([r["bands"] for r in results], dtype=np.int64).reshape(len(rows), -1),
        np.array([r["contaminated"] for r in results], dtype=np.int32),
        checks,
        report,
    )
    return [Row(results[i]["row"], rows[i].where) for i in kept]


class RowCleaner:
    """The per-row half of cleaning, for any number of rows at a time: a row rewritten (normalised, scrubbed), why
    a filter drops it, and the hashes and eval-set hit that select_rows decides duplicates and contamination from.
    Picklable, so preparation runs it on every core."""

    def __init__(self, settings: dict, eval_inputs: dict | None = None, tokenizer=None):

        self.settings, self.tokenizer = settings, tokenizer
        self.eval_names = list(eval_inputs or {})
        self.grams, self.lengths = _eval_grams(eval_inputs or {}, settings["ngram"])
        lsh = MinHashLSH(threshold=settings["threshold"], num_perm=settings["num_perm"])
        self.bands = lsh.hashranges  # datasketch's LSH bands: rows sharing one band's hashes are candidates
        default = MinHash(num_perm=settings["num_perm"])
        self.permutations, self.scheme = default.permutations, default.scheme  # made once, not per row

    def __call__(self, data: dict) -> dict:
        settings = self.settings
        row = _rewrite(data, normalize, partial(normalize, edges=True)) if settings["normalize"] else data
        pii, reason = 0, None
        if settings["pii"]:
            row, pii, reason = _scrubbed(row)
        prompt_only = not any(trained for _, _, trained in fields(data))  # requests alone (synth_data.py, grpo.py)
        reason = reason or _row_problem(row, settings, prompt_only, self.tokenizer)
        out = {
            "row": row,
            "reason": reason or "",
            "pii": pii,
            "exact": 0,
            "bands": [0] * len(self.bands),
            "contaminated": -1,
        }
        if reason:
            return out
        exact, text, shared = _dedup_view(row)
        out["exact"] = _key(hashlib.sha1(exact.encode()).digest())
        if settings["near_dedup"]:
            out["bands"] = self._band_keys(text, shared)
        if self.grams:
            out["contaminated"] = self._contaminated([t for _, t, _ in fields(row)])
        return out

    def _band_keys(self, text: str, shared: bytes) -> list[int]:
        """A key per LSH band of the text's MinHash, salted with what near duplicates must share exactly."""

        words, n = _words(text), self.settings["shingle"]
        shingles = {" ".join(words[j : j + n]).encode() for j in range(max(1, len(words) - n + 1))}
        signature = MinHash(num_perm=self.settings["num_perm"], permutations=self.permutations, scheme=self.scheme)
        signature.update_batch(list(shingles))
        return [
            _key(hashlib.blake2b(shared + signature.hashvalues[a:b].tobytes(), digest_size=8).digest())
            for a, b in self.bands
        ]

    def _contaminated(self, texts: list[str]) -> int:
        """The index of the first eval set sharing an n-gram with the row (see _eval_grams), or -1."""

        n, found = self.settings["ngram"], []
        for words in (_words(unicodedata.normalize("NFC", t)) for t in texts):
            keys = _word_keys(words)
            if 0 < len(words) < n:
                found.append(_gram_keys(keys, len(words)))
            found += [_gram_keys(keys, length) for length in self.lengths]
        row_grams = np.concatenate(found) if found else np.zeros(0, dtype=np.uint64)
        return next((i for i, name in enumerate(self.eval_names) if np.isin(row_grams, self.grams[name]).any()), -1)


def _key(digest: bytes) -> int:
    """63 bits of a digest: an int64 in Arrow and numpy (a collision in 2**63 is no practical concern)."""
    return int.from_bytes(digest[:8], "little") >> 1


def select_rows(passed, exact, bands, contaminated, cleaner: RowCleaner, report: DataReport):
    """Indices of the rows kept, in order, from RowCleaner's per-row results as numpy arrays: rows that passed the
    filters, then the first of each exact duplicate, then rows sharing no LSH band with an earlier kept row (a
    near duplicate, as datasketch's MinHashLSH query finds it), then rows no eval set contaminates. Memory: the
    hashes, about 8 * (bands + 1) bytes a row, and the group ids of the rows that share a band."""

    settings, counts = cleaner.settings, report.counts.setdefault("cleaning", {"rows_in": len(passed)})
    kept = np.flatnonzero(passed)
    if settings["exact_dedup"]:
        first = np.sort(np.unique(exact[kept], return_index=True)[1])
        if len(kept) - len(first):
            report.drop("cleaning: exact duplicate", len(kept) - len(first))
        kept = kept[first]
    if settings["near_dedup"] and len(kept):
        near = _near_duplicates(bands[kept])
        if near.any():
            report.drop("cleaning: near duplicate", int(near.sum()))
        kept = kept[~near]
    if cleaner.eval_names:
        hits = contaminated[kept]
        per_set = {name: int((hits == i).sum()) for i, name in enumerate(cleaner.eval_names)}
        for name, n in per_set.items():
            if n:
                report.drop(f"cleaning: contaminated by {name}", n)
        counts["contaminated"] = per_set
        kept = kept[hits < 0]
    counts["rows_out"] = len(kept)
    return kept


def _row_problem(data: dict, settings: dict, prompt_only: bool, tokenizer=None) -> str | None:
    """Why the row's trained text (see fields) fails a filter, or None. prompt_only: a row of requests with no answer
    (as synth_data.py writes them, as grpo.py reads them), judged on its requests."""
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
    return quality_problem(trained, settings, bool(normalize_tools(data.get("tools"))))


def _near_duplicates(bands):
    """Which rows share a band key with an earlier row that is not itself a near duplicate. Only rows in a band
    group of two or more are walked in order; every other row is kept without a look."""

    groups = [np.unique(bands[:, j], return_inverse=True)[1].ravel() for j in range(bands.shape[1])]
    crowded = np.zeros(len(bands), dtype=bool)
    for inverse in groups:
        crowded |= np.bincount(inverse)[inverse] > 1
    near = np.zeros(len(bands), dtype=bool)
    taken = [set() for _ in groups]
    for i in np.flatnonzero(crowded).tolist():
        keys = [int(inverse[i]) for inverse in groups]
        if any(key in seen for key, seen in zip(keys, taken, strict=False)):
            near[i] = True
            continue
        for key, seen in zip(keys, taken, strict=False):
            seen.add(key)
    return near


def input_texts(row: dict) -> list[str]:
    """The inputs of an eval row (user turns, prompts, plain text): what a model must not have seen. System
    turns are left out: a system prompt shared by the whole set is instructions, not a test item."""
    texts = [row[key] for key in ("text", "prompt") if isinstance(row.get(key), str)]
    for key in ("messages", "prompt"):
        if isinstance(row.get(key), list):
            texts += [m["content"] for m in row[key] if isinstance(m, dict) and m.get("role") == "user"]
    return texts


SHORT_INPUT_WORDS = 4  # an eval input shorter than ngram but this long is looked for inside training texts


def _eval_grams(eval_inputs: dict, n: int) -> tuple[dict, set]:
    """{name: keys of the n-grams of its inputs} and the gram lengths to look for. A row shares an n-gram with an
    eval input, or an input shorter than n words counts whole: found as a word sequence inside a training text
    when it has SHORT_INPUT_WORDS or more, else only as an equal text."""

    grams, lengths = {}, {n}
    for name, texts in eval_inputs.items():
        found = [np.zeros(0, dtype=np.uint64)]
        for words in filter(None, (_words(unicodedata.normalize("NFC", t)) for t in texts)):
            found.append(_gram_keys(_word_keys(words), min(n, len(words))))
            if len(words) >= SHORT_INPUT_WORDS:
                lengths.add(min(n, len(words)))
        grams[name] = np.unique(np.concatenate(found))
    return grams, lengths


def _word_keys(words: list[str]):
    """A 64-bit key per word (two checksums; stable across processes, unlike hash())."""

    return np.fromiter(
        ((zlib.crc32(w.encode()) << 32) | zlib.adler32(w.encode()) for w in words), dtype=np.uint64, count=len(words)
    )


def _gram_keys(keys, length: int):
    """A key for each run of `length` words: a polynomial hash of their keys, wrapping in 64 bits. Equal word
    sequences get equal keys; different ones collide with a chance of about 2**-64."""

    count = len(keys) - length + 1
    out = np.zeros(max(0, count), dtype=np.uint64)
    for k in range(length if count > 0 else 0):
        out = out * np.uint64(1099511628211) + keys[k : k + count]
    return out


def eval_set_inputs(eval_sets: list) -> dict:
    """{name: input texts} of each named evaluation set (a local file, a hub dataset id, or a source dict)."""

    inputs = {}
    for source in eval_sets:
        name = str(source.get("path")) if isinstance(source, dict) else str(source)
        try:
            rows = load_sources([source], DataReport(), "clean.eval_sets")
        except UserError as e:
            raise UserError(f"clean.eval_sets: {e}") from None
        inputs[name] = [text for row in rows if isinstance(row.data, dict) for text in input_texts(row.data)]
    return inputs
