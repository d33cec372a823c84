"""Data: reading sources (files, folders, hub ids), checking rows against a schema, eval splits, the report.

Every row keeps where it came from (`file:line`), so a bad row is reported in one line that names it.
"""

import json
import os
import random
from dataclasses import dataclass, field

import datasets

from common.errors import RowProblem, UserError
from common.layouts import merge_note, read_row

FILE_TYPES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class Row:
    data: dict
    where: str


@dataclass
class DataReport:
    """Counts written to output_dir/data_report.json: what was read, dropped and why, and token totals."""

    sources: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def note_reading(self, path: str, summary: dict, empty_turns: int) -> None:
        """How a source's rows were read (common.layouts.merge_note's summary) and the empty turns removed."""
        if summary.get("layouts") or summary.get("ignored_columns") or summary.get("ignored_turn_keys"):
            self.counts.setdefault("reading", {})[path] = summary
        if empty_turns:
            key = "empty_assistant_turns_removed"
            self.counts[key] = self.counts.get(key, 0) + empty_turns

    def as_dict(self) -> dict:
        return {"sources": self.sources, "dropped": self.dropped, **self.counts}

    def write(self, output_dir: str) -> None:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "data_report.json"), "w", encoding="utf-8") as f:
            json.dump(self.as_dict(), f, indent=2)


def load_sources(sources, report: DataReport, key: str = "data", seed: int = 0) -> list[Row]:
    """Rows of every source in order, in memory (held-out sets; training data goes through common.prepare), read
    as common.prepare reads them (common/layouts.py), how in report.counts["reading"]. An entry is a path, a hub
    dataset id, or {path, split, fields, ignore, weight}; with weights, the sources are mixed."""
    loaded, weights = [], []
    for spec, weight in source_specs(sources, key):
        rows, summary, empty_turns = [], {}, 0
        for row in _read(spec["path"], spec.get("split")):
            try:
                data, note = read_row(row.data, spec, None)
            except RowProblem as e:
                raise UserError(f"{row.where}: {e}") from None
            rows.append(Row(data, row.where))
            summary, empty_turns = merge_note(summary, note), empty_turns + note["empty_turns"]
        report.note_reading(spec["path"], summary, empty_turns)
        report.sources[spec["path"]] = len(rows)
        loaded.append((spec["path"], rows))
        weights.append(weight)
    if all(w is None for w in weights):
        return [row for _, rows in loaded for row in rows]
    return mix(loaded, weights, seed, report)


def source_specs(sources, key: str = "data") -> list[tuple[dict, object]]:
    """(spec, weight) of each source named by a PARAMS key: a path, a hub dataset id, or {path, split, fields,
    ignore, weight}; the weight as _weight reads it. fields maps the script's names to the source's columns,
    ignore lists columns the user knows the script drops (common/layouts.py)."""
    if isinstance(sources, (str, dict)):
        sources = [sources]
    if not sources:
        raise UserError(f"{key} is empty: name at least one data file")
    specs = []
    for source in sources:
        if not isinstance(source, (str, dict)):
            raise UserError(f"{key}: a source is a path or a mapping like {{path: ..., weight: ...}}, got {source!r}")
        spec = {"path": source} if isinstance(source, str) else dict(source)
        unknown = set(spec) - {"path", "split", "fields", "ignore", "weight"}
        if unknown or not isinstance(spec.get("path"), str):
            raise UserError(
                f"{key}: a source must be a path or a dict with path, split, fields, ignore, weight; got {source!r}"
            )
        fields, ignore = spec.get("fields"), spec.get("ignore")
        if fields is not None and not (isinstance(fields, dict) and all(isinstance(v, str) for v in fields.values())):
            raise UserError(
                f"{key}: fields of {spec['path']} maps the script's names to your columns, like "
                f"{{messages: conversations, role: from}}; got {fields!r}"
            )
        spec["ignore"] = [ignore] if isinstance(ignore, str) else ignore or []
        if not (isinstance(spec["ignore"], list) and all(isinstance(c, str) for c in spec["ignore"])):
            raise UserError(f"{key}: ignore of {spec['path']} is a list of column names, like [label]; got {ignore!r}")
        specs.append((spec, _weight(spec.get("weight"), key, spec["path"])))
    return specs


def mixed_indices(per_source: list[list], specs: list[tuple[dict, object]], seed: int, report: DataReport) -> list:
    """The items of every source in order, or mixed by the sources' weights when any has one (see mix)."""
    if all(weight is None for _, weight in specs):
        return [item for part in per_source for item in part]
    return mix(
        [(spec["path"], part) for (spec, _), part in zip(specs, per_source, strict=False)],
        [w for _, w in specs],
        seed,
        report,
    )


def _weight(weight, key: str, path: str):
    """None (all rows), ("rows", n), ("repeat", factor) or ("fraction", f), from 1000, "2x" or 0.7."""
    if weight is None:
        return None
    if isinstance(weight, str) and weight.endswith("x"):
        try:
            factor = float(weight[:-1])
        except ValueError:
            factor = -1.0
        if factor > 0:
            return ("repeat", factor)
    elif isinstance(weight, int) and not isinstance(weight, bool) and weight >= 1:
        return ("rows", weight)
    elif isinstance(weight, float) and 0 < weight <= 1:
        return ("fraction", weight)
    raise UserError(
        f"{key}: weight of {path} must be a fraction in (0, 1], a row count >= 1, or an oversampling "
        f"factor like '2x'; got {weight!r}"
    )


def mix(loaded: list[tuple[str, list[Row]]], weights: list, seed: int, report: DataReport) -> list[Row]:
    """Sources mixed by weight, deterministic under seed; the realised mix goes into the report.

    Counts and factors are taken as given. Fractions are shares of the whole mix: with only fractions, the
    mix is as large as it can be without repeating a row; beside fixed sources, fractions scale to them.
    """
    rng = random.Random(seed)

    def fixed_count(rows, w):
        return len(rows) if w is None else w[1] if w[0] == "rows" else round(w[1] * len(rows))

    fixed = {
        i: fixed_count(rows, w)
        for i, ((_, rows), w) in enumerate(zip(loaded, weights, strict=False))
        if w is None or w[0] != "fraction"
    }
    shares = {i: w[1] for i, w in enumerate(weights) if w and w[0] == "fraction"}
    total_share = sum(shares.values())
    if total_share > 1 + 1e-9 or (fixed and total_share >= 1):
        raise UserError(f"data: fraction weights add up to {total_share:g}; they must leave room for the other sources")
    if fixed:
        total = sum(fixed.values()) / (1 - total_share)
    else:
        total = min(len(loaded[i][1]) / share for i, share in shares.items()) / total_share
    counts = {**fixed, **{i: round(share * total) for i, share in shares.items()}}
    mixed, realised = [], {}
    for i, (path, rows) in enumerate(loaded):
        taken = _take(rows, counts[i], rng)
        mixed.extend(taken)
        realised[path] = {"available": len(rows), "taken": len(taken)}
    for entry in realised.values():
        entry["share"] = round(entry["taken"] / max(1, len(mixed)), 4)
    report.counts["mix"] = realised
    return mixed


def _take(rows: list[Row], n: int, rng: random.Random) -> list[Row]:
    """n rows: whole repeats of the source, then a seeded sample without replacement for the rest."""
    if not rows:
        return []
    repeats, rest = divmod(n, len(rows))
    return rows * repeats + [rows[i] for i in sorted(rng.sample(range(len(rows)), rest))]


def _read(path: str, split: str | None) -> list[Row]:
    if path.endswith(".jsonl") and os.path.isfile(path):
        return _read_jsonl(path)
    if os.path.isfile(path) and path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg == "Extra data" and _is_object(text.split("\n", 1)[0]):
                return _read_jsonl(path)  # JSON Lines under a .json name, which datasets reads too
            raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        if isinstance(data, dict):
            return [Row(data, f"{path}: row 1")]  # one conversation, as axolotl's fixtures are
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list of rows or one row object")
        return [Row(r, f"{path}: row {i + 1}") for i, r in enumerate(data)]
    name = path if os.path.exists(path) else f"{path}[{split or 'train'}]"
    return [Row(r, f"{name}: row {i + 1}") for i, r in enumerate(_arrow_source(path, split))]


def read_in_batches(path: str, split: str | None, size: int = 10_000):
    """The rows of a source as batches of (JSON text, where), without holding the file: a JSONL file is streamed
    line by line and its lines are parsed later (see parse_row), other sources go through Arrow. A source with
    no rows stops the run with one line that names it."""
    count = 0
    if path.endswith(".jsonl") and os.path.isfile(path):
        batch = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    batch.append((line, f"{path}:{number}"))
                if len(batch) == size:
                    count += len(batch)
                    yield batch
                    batch = []
        count += len(batch)
        if batch:
            yield batch
    elif path.endswith(".json") and os.path.isfile(path):
        rows = _read(path, split)  # a JSON list is read whole; JSONL streams
        for start in range(0, len(rows), size):
            yield [(json.dumps(r.data, ensure_ascii=False), r.where) for r in rows[start : start + size]]
        count = len(rows)
    else:
        ds = _arrow_source(path, split)
        name = f"{path}[{split or 'train'}]" if not os.path.exists(path) else path
        for start in range(0, len(ds), size):
            part = ds[start : start + size]
            rows = [dict(zip(part, values, strict=False)) for values in zip(*part.values(), strict=False)]
            yield [
                (json.dumps(r, ensure_ascii=False, default=str), f"{name}: row {start + i + 1}")
                for i, r in enumerate(rows)
            ]
        count = len(ds)
    if not count:
        raise UserError(f"{path}: no rows in this data file")


def parse_row(text: str, where: str, spec: dict, schema: str | None) -> tuple[object, dict]:
    """A row read by read_in_batches in the schema's form, with what reading it noted (common.layouts.read_row,
    which raises RowProblem for a row it cannot read faithfully); UserError for malformed JSON with the row's file
    and line."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
    return read_row(data, spec, schema)


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _arrow_source(path: str, split: str | None):
    """A parquet, csv or saved-dataset file or folder, or a hub dataset, as a datasets.Dataset."""

    if os.path.isfile(path) and os.path.splitext(path)[1] in FILE_TYPES:
        return datasets.load_dataset(FILE_TYPES[os.path.splitext(path)[1]], data_files=path, split="train")
    if os.path.isdir(path):
        try:
            ds = datasets.load_from_disk(path)
        except (FileNotFoundError, ValueError) as e:
            raise UserError(f"{path}: not a dataset saved with save_to_disk ({e})") from None
        return ds[split or "train"] if isinstance(ds, datasets.DatasetDict) else ds
    if os.path.exists(path) or path.startswith((".", "/")) or os.path.splitext(path)[1]:
        raise UserError(f"data file not found or not a supported type (jsonl, json, parquet, csv, folder): {path}")
    try:
        return datasets.load_dataset(path, split=split or "train")
    except Exception as e:  # the hub raises many types; all mean the same thing to the user
        raise UserError(f"cannot load dataset '{path}' (not a local file; hub: {str(e).splitlines()[0]})") from None


def _read_jsonl(path: str) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(Row(json.loads(line), f"{path}:{number}"))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{number}: malformed JSON ({e.msg} at column {e.colno})") from None
    return rows


def split_eval(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded random eval split of `fraction` of the rows: at least one row when fraction > 0, and at least one
    row left to train on (a large fraction of a few rows would round to all of them)."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(rows) - 1, max(1, int(round(len(rows) * fraction))))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def write_rows(path: str, rows: list[dict]) -> None:
    """Write JSONL rows whole or not at all: to a temporary name, then renamed, so a kill leaves no torn row."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
