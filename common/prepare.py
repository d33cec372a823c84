"""Preparation at scale: rows read, checked, cleaned, mixed, split, tokenized and packed in Arrow, once.

Rows stay in Arrow files (datasets) and are processed in batches on every core (num_proc); what stays in memory
is per-row bookkeeping of a few numbers (dedup hashes, indices, lengths), never the rows. The main process
saves the result in data_cache_dir under a key of the data's content, the tokenizer and its template, the code
and every setting that changes the result; other ranks and reruns memory-map it.
"""

import json
import os
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, Sequence, Value

from common.batching import pack_lengths, packed_row_length
from common.chat.tools import tool_names
from common.cleaning import RowCleaner, cleaning_table, eval_set_inputs, eval_sets_of, select_rows
from common.data import DataReport, Row, mixed_indices, parse_row, read_in_batches, source_specs, split_eval
from common.data_cache import cache_key, is_stored, open_split, read_meta, say_new_entry, store
from common.distributed import is_main, wait_for_everyone
from common.errors import Dropped, RowProblem, UserError
from common.layouts import SCHEMAS, merge_note, reading_lines, unread_columns, unread_problem

ROWS_PER_PROCESS = 2000  # fewer rows a process than this, and starting the process costs more than it saves
BATCH = 1000
PACK_CHUNK = 1024  # packed rows assembled at a time: about PACK_CHUNK * max_length tokens in memory


@dataclass
class Recipe:
    """What a script brings to preparation. problem(row) -> reason or None checks a row; examples(row) ->
    ([example dicts], {count: n}) tokenizes a checked row, raising RowProblem (a bad row) or Dropped (a row left out
    by design). Examples with labels are SFT examples: truncated to max_length and, when packing, packed.
    on_tool_names(names) -> value runs before tokenizing (function tokens), with the training rows' tool names."""

    name: str
    problem: object
    examples: object
    on_tool_names: object = None
    packing: bool = False
    hook: object = None
    columns: tuple = ("input_ids", "labels")  # the example fields examples() returns ("where" adds the row's file:line)
    keys: tuple = ()  # PARAMS keys besides common.data_cache.PREPARE_KEYS that change the prepared data


@dataclass
class Prepared:
    train: object  # a memory-mapped datasets.Dataset
    eval: object  # the same, or None without eval rows
    extra: object = None  # what recipe.on_tool_names returned
    path: str = ""  # the cache entry


def prepare(params: dict, recipe: Recipe, tokenizer, report: DataReport) -> Prepared:
    """The training and eval datasets of a run: prepared by the main process into the cache (common/data_cache.py),
    or read from it when they were prepared before."""
    eval_sets = eval_sets_of(params) if params["clean"]["enabled"] else []
    functions = [recipe.problem, recipe.examples, recipe.on_tool_names, recipe.hook]
    key = cache_key(params, recipe.name, recipe.keys, functions, tokenizer, eval_sets)
    folder = os.path.join(params["data_cache_dir"], key)
    fresh = is_main() and not is_stored(folder)
    extra = None
    if fresh:
        say_new_entry(folder)
        extra = store(folder, lambda tmp: _Preparation(tmp, params, recipe, tokenizer).run())
    wait_for_everyone()
    meta = read_meta(folder)
    report.sources.update(meta["report"]["sources"])
    for reason, n in meta["report"]["dropped"].items():
        report.drop(reason, n)
    report.counts.update(meta["report"]["counts"])
    report.counts["prepared_data"] = folder
    if not fresh and recipe.on_tool_names:  # the tokenizer as the examples were made with it
        extra = recipe.on_tool_names(meta["tool_names"], report)
    train, evals = open_split(folder, "train"), open_split(folder, "eval")
    if is_main():
        for line in reading_lines(meta["report"]["counts"].get("reading", {})):
            print(line, flush=True)
        table = meta["cleaning_table"]
        print(f"{table}\n" if table else "", end="")
        examples = meta["report"]["counts"].get("train_rows", len(train))
        print(f"prepared data: {examples} training examples, {folder}{'' if fresh else ' (reused)'}", flush=True)
    return Prepared(train, evals, extra, folder)


def read_rows(params: dict, problem, report: DataReport, tokenizer=None) -> list[Row]:
    """The rows of params["data"], checked by problem(row) -> reason or None (None: any JSON object) and cleaned
    with params["clean"], through the same pipeline and cache as training data, as they are (synth_data.py)."""
    settings = {**params, "eval_data": [], "eval_fraction": 0.0}
    recipe = Recipe("rows", problem or _any_row, _as_row, columns=("row", "where"))
    rows = prepare(settings, recipe, tokenizer, report).train
    return [Row(json.loads(row), where) for row, where in zip(rows["row"], rows["where"], strict=True)]


def _as_row(row: dict) -> tuple[list[dict], dict]:
    return [{"row": json.dumps(row, ensure_ascii=False)}], {}


def _any_row(row: dict) -> str | None:
    return None  # every JSON object is a row (the check refuses the rest)


class _Preparation:
    def __init__(self, folder: str, params: dict, recipe: Recipe, tokenizer):

        if not params["progress_bar"]:
            datasets.disable_progress_bars()
        self.folder, self.work, self.params, self.recipe, self.tokenizer = (
            folder,
            os.path.join(folder, "work"),
            params,
            recipe,
            tokenizer,
        )
        self.report, self.steps = DataReport(), 0
        self.cores = params["num_proc"] or len(os.sched_getaffinity(0))

    def run(self) -> tuple[dict, object]:
        """(meta.json's content, what recipe.on_tool_names returned)."""

        params = self.params
        cleaner = self._cleaner()
        specs = source_specs(params["data"])
        train = self._checked(specs, "data", cleaner)
        indices = self._mixed(train, self._left(train, self._cleaned(train, cleaner), specs, "data"), specs)
        if params.get("eval_data"):
            eval_specs = source_specs(params["eval_data"], "eval_data")
            eval_rows = self._checked(eval_specs, "eval_data", None)
            kept = self._left(eval_rows, self._passed(eval_rows), eval_specs, "eval_data")
            eval_indices = self._mixed(eval_rows, kept, eval_specs)
        else:
            indices, eval_indices = split_eval(indices, params.get("eval_fraction", 0.0), params["seed"])
            eval_rows = train
        train_rows = train.select(indices)
        names = sorted(
            {
                n
                for batch in train_rows.select_columns(["tool_names"]).iter(BATCH)
                for row in batch["tool_names"]
                for n in row
            }
        )
        self.extra = self.recipe.on_tool_names(names, self.report) if self.recipe.on_tool_names else None
        self._examples(train_rows, "train")
        if eval_indices:
            self._examples(eval_rows.select(eval_indices), "eval")
        table = cleaning_table(self.report.counts["cleaning"], self.report.dropped, None) if cleaner else ""
        report = {"sources": self.report.sources, "dropped": self.report.dropped, "counts": self.report.counts}
        return {"report": report, "tool_names": names, "cleaning_table": table}, self.extra

    def _left(self, checked, kept, specs: list, key: str):
        """kept, when rows are left: some in all, and some of each source with a weight (mixing takes a share of
        its rows). Otherwise the run stops with one line saying what took the rows, rather than failing later or
        training on a mix without that source."""

        sources = np.asarray(checked.data.column("source"))
        left = np.bincount(sources[kept], minlength=len(specs))
        for i, (spec, weight) in enumerate(specs):
            if weight is not None and not left[i]:
                where = f"{key} (the source weighted {spec['weight']!r})"
                raise UserError(self._nothing_left(checked, sources == i, where, [spec["path"]]))
        if not len(kept):
            raise UserError(self._nothing_left(checked, sources >= 0, key, [spec["path"] for spec, _ in specs]))
        return kept

    def _nothing_left(self, checked, rows, key: str, paths: list) -> str:
        """One line on why none of the rows (a boolean mask) is left: how many were read, and what took them: bad
        rows (with the first in file order), the row hook, cleaning (with its reasons when it had all the rows)."""

        column, total = checked.data.column, int(rows.sum())
        bad = np.asarray(pc.not_equal(column("bad"), "")) & rows
        first = checked[int(np.argmax(bad))] if bad.any() else None
        first = f"first: {first['where']}: {first['bad']}" if first else ""
        if bad.sum() == total:
            return f"no rows left in {key}: every row of {', '.join(paths)} was bad ({total}; {first})"
        hooked = int((np.asarray(column("hooked_none")) & rows).sum())
        cleaned = total - int(bad.sum()) - hooked
        parts = [f"bad: {int(bad.sum())} ({first})"] if first else []
        parts += [f"dropped by the row_hook: {hooked}"] if hooked else []
        if cleaned:
            reasons = [
                f"{reason.removeprefix('cleaning: ')}: {n}"
                for reason, n in self.report.dropped.items()
                if reason.startswith("cleaning: ") and rows.all()
            ]
            parts.append(f"removed by cleaning: {cleaned}" + (f" ({', '.join(reasons)})" if reasons else ""))
        read = f"{total} row{'s' if total > 1 else ''} of {', '.join(paths)}"
        return f"no rows left in {key}: of {read}, " + ", ".join(parts)

    def _mixed(self, checked, kept, specs: list) -> list[int]:
        """The kept rows' indices, source by source, mixed by the sources' weights."""

        sources = np.asarray(checked.data.column("source"))[kept]
        return mixed_indices(
            [kept[sources == i].tolist() for i in range(len(specs))], specs, self.params["seed"], self.report
        )

    def _map(self, ds, function, name: str, **kwargs):
        """ds.map in batches on up to num_proc processes, its files in the work folder."""
        self.steps += 1
        processes = max(1, min(self.cores, len(ds) // ROWS_PER_PROCESS))
        if processes > 1:  # the forked workers tokenize one row at a time; the warning about it would be noise
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        return ds.map(
            function,
            batched=True,
            batch_size=BATCH,
            num_proc=processes if processes > 1 else None,
            cache_file_name=os.path.join(self.work, f"{self.steps}-{name}.arrow"),
            new_fingerprint=f"{self.steps}-{name}",
            load_from_cache_file=False,
            **kwargs,
        )

    def _cleaner(self):

        settings = self.params["clean"]
        if not settings["enabled"]:
            return None
        by_tokens = settings["min_tokens"] or settings["max_tokens"]
        if by_tokens and self.tokenizer is None:
            raise UserError("clean.min_tokens and clean.max_tokens need the model's tokenizer (not loaded here)")
        return RowCleaner(settings, eval_set_inputs(eval_sets_of(self.params)), self.tokenizer if by_tokens else None)

    def _read(self, specs: list, key: str):
        """One Arrow dataset of every source's rows as JSON text, with where each came from and its source's index."""

        path = os.path.join(self.work, f"{key}.arrow")
        schema = pa.schema([("text", pa.string()), ("where", pa.string()), ("source", pa.int32())])
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for i, (spec, _) in enumerate(specs):
                count = 0
                for batch in read_in_batches(spec["path"], spec.get("split")):
                    count += len(batch)
                    columns = [[text for text, _ in batch], [where for _, where in batch], [i] * len(batch)]
                    writer.write_batch(pa.record_batch(columns, schema=schema))
                self.report.sources[spec["path"]] = count
        return Dataset.from_file(path)

    def _checked(self, specs: list, key: str, cleaner):
        """The rows parsed, hooked, checked and (with a cleaner) rewritten and hashed, one output row per row read.
        Malformed JSON stops the run with its file:line; so does a bad row under on_bad_rows=error."""

        schema = SCHEMAS.get(self.recipe.name)
        check = _Check([spec for spec, _ in specs], schema, self.recipe.problem, self.recipe.hook, cleaner)
        checked = self._map(
            self._read(specs, key), check, f"check-{key}", remove_columns=["text"], features=check.features()
        )
        malformed = pc.not_equal(checked.data.column("malformed"), "")
        if pc.any(malformed).as_py():
            first = pc.index(malformed, True).as_py()
            raise UserError(checked[first]["malformed"])
        self._note_reading(checked, specs)
        hooked_none = int(pc.sum(checked.data.column("hooked_none")).as_py() or 0)
        if hooked_none:
            self.report.drop("row_hook returned None", hooked_none)
        self._bad_rows(checked, "bad")
        return checked

    def _note_reading(self, checked, specs: list) -> None:
        """How each source's rows were read and the columns the script ignores (the rows' distinct notes merged per
        source, for prepare to print once), and the empty assistant turns removed, into the report."""

        notes = checked.data.column("notes")
        summaries = {}
        for text in pc.unique(pc.filter(notes, pc.not_equal(notes, ""))).to_pylist():
            source, note = json.loads(text)
            summaries[source] = merge_note(summaries.get(source, {}), note)
        removed = np.asarray(checked.data.column("empty_turns"))
        sources = np.asarray(checked.data.column("source"))
        for i, (spec, _) in enumerate(specs):
            self.report.note_reading(spec["path"], summaries.get(i, {}), int(removed[sources == i].sum()))

    def _bad_rows(self, ds, column: str):
        """Which rows have a reason in `column`. Under on_bad_rows=error the first, in file order, stops the run with
        its file:line; otherwise each is counted as a bad row under its reason."""

        bad = pc.not_equal(ds.data.column(column), "")
        if pc.any(bad).as_py():
            if self.params["on_bad_rows"] == "error":
                row = ds[pc.index(bad, True).as_py()]
                raise UserError(f"{row['where']}: {row[column]}")
            self._count_drops(ds.data.column(column), bad, "bad row: ")
        return bad

    def _count_drops(self, reasons, mask, prefix: str) -> None:
        """Each reason where mask is set, counted in the report's dropped rows under prefix + reason."""

        for item in pc.value_counts(pc.filter(reasons, mask)).to_pylist():
            self.report.drop(f"{prefix}{item['values']}", item["counts"])

    def _passed(self, checked):
        """Indices of the rows that were read, parsed and passed the checks."""

        ok = pc.and_(pc.equal(checked.data.column("bad"), ""), pc.invert(checked.data.column("hooked_none")))
        return np.flatnonzero(np.asarray(ok))

    def _cleaned(self, checked, cleaner):
        """Indices of the checked rows that cleaning keeps (all of them when it is off)."""

        passed = self._passed(checked)
        if cleaner is None:
            return passed
        self.report.counts["cleaning"] = {"rows_in": len(passed)}
        column = checked.data.column
        reason = pc.take(column("reason"), passed)
        filtered = pc.not_equal(reason, "")
        self._count_drops(reason, filtered, "cleaning: ")
        self.report.counts["cleaning"]["pii_texts_scrubbed"] = int(np.asarray(column("pii"))[passed].sum())
        bands = np.asarray(pc.list_flatten(column("bands"))).reshape(len(checked), -1)[passed]
        kept = select_rows(
            ~np.asarray(filtered),
            np.asarray(column("exact"))[passed],
            bands,
            np.asarray(column("contaminated"))[passed],
            cleaner,
            self.report,
        )
        return passed[kept]

    def _examples(self, rows, split: str) -> None:
        """Tokenize the rows into examples, drop and count what cannot train, pack, and save split.arrow."""

        tokenize = _Tokenize(self.recipe.examples, split, self.params.get("max_length"), self.recipe.columns)
        made = self._map(
            rows, tokenize, f"tokenize-{split}", remove_columns=rows.column_names, features=tokenize.features()
        )
        problem = self._bad_rows(made, "problem")
        dropped = pc.not_equal(made.data.column("dropped"), "")
        self._count_drops(made.data.column("dropped"), dropped, "")
        counts = made.data.column("counts")
        for text in pc.filter(counts, pc.not_equal(counts, "")).to_pylist():
            for name, n in json.loads(text).items():
                name = name.format(split=split)
                self.report.counts[name] = self.report.counts.get(name, 0) + n
        sft = "labels" in self.recipe.columns
        path = os.path.join(self.work if sft and self.recipe.packing else self.folder, f"{split}.arrow")
        self._write_kept(made, path, self.recipe.columns)
        if not sft:
            return
        kept = ~np.asarray(pc.or_(problem, dropped))
        lengths = np.asarray(made.data.column("length"))[kept]
        counts = self.report.counts
        counts[f"{split}_rows"] = len(lengths)
        counts[f"{split}_truncated"] = int(np.asarray(made.data.column("truncated")).sum())  # the dropped ones too
        counts[f"{split}_tokens"] = int(lengths.sum())
        counts[f"{split}_trained_tokens"] = int(np.asarray(made.data.column("trained"))[kept].sum())
        if not self.recipe.packing:
            return

        row_length = (
            packed_row_length(lengths, self.params["max_length"], self.params["batch_size"]) if len(lengths) else 0
        )
        packs = pack_lengths(lengths.tolist(), row_length, self.params["seed"])
        self._write_packed(path, packs, os.path.join(self.folder, f"{split}.arrow"))
        if packs:
            counts[f"{split}_packed_rows"] = len(packs)
            counts[f"{split}_packed_row_length"] = row_length
            counts[f"{split}_packing_fill"] = round(counts[f"{split}_tokens"] / (len(packs) * row_length), 4)

    @staticmethod
    def _write_kept(made, path: str, columns: tuple) -> None:
        """The examples that train, their columns only, streamed from the map's files through read calls rather
        than a memory map, so what the main process holds does not grow with the file."""

        with pa.OSFile(path, "wb") as sink:
            writer = None
            for shard in made.cache_files:
                with pa.OSFile(shard["filename"]) as source:
                    for batch in pa.ipc.open_stream(source):
                        keep = pc.and_(pc.equal(batch.column("problem"), ""), pc.equal(batch.column("dropped"), ""))
                        batch = batch.filter(keep).select(list(columns))
                        writer = writer or pa.ipc.new_stream(sink, batch.schema)
                        writer.write_batch(batch)
            if writer is None:  # no shard had a batch
                writer = pa.ipc.new_stream(sink, pa.schema([(c, pa.list_(pa.int64())) for c in columns]))
            writer.close()

    def _write_packed(self, path: str, packs: list[list[int]], packed_path: str) -> None:
        """The packed rows, PACK_CHUNK rows at a time. The examples are read once, in order, and each is appended to the
        bucket file of its row's chunk; each bucket is then read whole (about chunk * max_length tokens), its
        examples put in row order and joined by Arrow. Memory stays at a bucket, whatever the number of rows."""

        chunk = PACK_CHUNK
        pack_of = np.zeros(sum(len(pack) for pack in packs), dtype=np.int64)
        for p, pack in enumerate(packs):
            pack_of[pack] = p
        buckets = [os.path.join(self.work, f"bucket-{b}.arrow") for b in range(-(-len(packs) // chunk))]
        sinks, writers, start = [pa.OSFile(b, "wb") for b in buckets], [None] * len(buckets), 0
        with pa.OSFile(path) as source:
            for batch in pa.ipc.open_stream(source):
                bucket = pack_of[start : start + len(batch)] // chunk
                for b in np.unique(bucket):
                    writers[b] = writers[b] or pa.ipc.new_stream(sinks[b], batch.schema)
                    writers[b].write_batch(batch.filter(pa.array(bucket == b)))
                start += len(batch)
        for writer, sink in zip(writers, sinks, strict=False):
            writer.close()
            sink.close()
        schema = pa.schema(
            [
                ("input_ids", pa.list_(pa.int64())),
                ("labels", pa.list_(pa.int64())),
                ("seq_lengths", pa.list_(pa.int64())),
            ]
        )
        with pa.OSFile(packed_path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for b, bucket in enumerate(buckets):
                part = packs[b * chunk : (b + 1) * chunk]
                with pa.OSFile(bucket) as source:
                    table = pa.ipc.open_stream(source).read_all()
                in_file_order = np.sort(np.concatenate([np.asarray(pack) for pack in part]))
                order = np.searchsorted(in_file_order, np.concatenate([np.asarray(pack) for pack in part]))
                examples = table.take(pa.array(order))
                sizes = pc.list_value_length(examples.column("input_ids")).to_numpy().astype(np.int64)
                members = np.cumsum([0] + [len(pack) for pack in part])
                offsets = pa.array(np.concatenate([[0], np.cumsum(sizes)])[members].astype(np.int32))
                columns = [
                    pa.ListArray.from_arrays(offsets, pc.list_flatten(examples.column(name).combine_chunks()))
                    for name in ("input_ids", "labels")
                ]
                columns.append(pa.ListArray.from_arrays(pa.array(members.astype(np.int32)), pa.array(sizes)))
                writer.write_batch(pa.record_batch(columns, schema=schema))
                os.remove(bucket)


class _Check:
    """Per batch of read rows: parse and read into the schema (common/layouts.py), hook, check the columns the script
    ignores and the row against the schema, and clean (RowCleaner). Picklable."""

    def __init__(self, specs: list, schema: str | None, problem, hook, cleaner):
        self.specs, self.schema, self.problem, self.hook, self.cleaner = specs, schema, problem, hook, cleaner

    @staticmethod
    def features():

        return Features(
            {
                "where": Value("string"),
                "source": Value("int32"),
                "row": Value("string"),
                "malformed": Value("string"),
                "hooked_none": Value("bool"),
                "bad": Value("string"),
                "reason": Value("string"),
                "pii": Value("int64"),
                "exact": Value("int64"),
                "bands": Sequence(Value("int64")),
                "contaminated": Value("int32"),
                "tool_names": Sequence(Value("string")),
                "notes": Value("string"),
                "empty_turns": Value("int64"),
            }
        )

    def __call__(self, batch: dict) -> dict:

        width = len(self.cleaner.bands) if self.cleaner else 0
        out = {
            k: []
            for k in (
                "row",
                "malformed",
                "hooked_none",
                "bad",
                "reason",
                "pii",
                "exact",
                "bands",
                "contaminated",
                "tool_names",
                "notes",
                "empty_turns",
            )
        }
        for text, where, source in zip(batch["text"], batch["where"], batch["source"], strict=False):
            result = {
                "malformed": "",
                "hooked_none": False,
                "bad": "",
                "reason": "",
                "pii": 0,
                "exact": 0,
                "bands": [0] * width,
                "contaminated": -1,
                "row": "",
                "tool_names": [],
                "notes": "",
                "empty_turns": 0,
            }
            spec, data, note = self.specs[source], None, {}
            try:
                data, note = parse_row(text, where, spec, self.schema)
            except UserError as e:
                result["malformed"] = str(e)
            except RowProblem as e:
                result["bad"] = str(e)
            if data is not None and self.hook is not None:
                data = self.hook(data)
                result["hooked_none"] = data is None
            if isinstance(data, dict):  # the columns are the script's once a row hook has had them
                note["ignored"] = unread_columns(data, self.schema)
            if data is not None and not result["bad"]:
                result["bad"] = (self.problem(data) if isinstance(data, dict) else "row must be a JSON object") or ""
                if isinstance(data, dict) and not result["bad"]:  # a row of the schema that means more than it says
                    result["bad"] = unread_problem(data, note["ignored"], spec["ignore"]) or ""
                if not result["bad"]:
                    if self.cleaner is not None:
                        cleaned = self.cleaner(data)
                        data = cleaned.pop("row")
                        result.update(cleaned)
                    result["row"] = json.dumps(data, ensure_ascii=False)
                    result["tool_names"] = tool_names(data.get("tools"))
            if note.get("layouts") or note.get("ignored") or note.get("turn_keys"):  # the same for most rows
                kept = {k: note[k] for k in ("layouts", "roles", "ignored", "turn_keys") if k in note}
                result["notes"] = json.dumps([source, kept], sort_keys=True)
            result["empty_turns"] = note.get("empty_turns", 0)
            for k, v in result.items():
                out[k].append(v)
        return out


class _Tokenize:
    """Per batch of checked rows: examples (one output row each), or one output row saying why there are none.
    SFT examples (with labels) are truncated to max_length; one left with no trained token is dropped."""

    STATUS = {"problem": "", "dropped": "", "counts": "", "where": ""}
    TEXT = ("prompt", "row", "where")  # example fields that are text, not token ids

    def __init__(self, examples, split: str, max_length: int, columns: tuple):
        self.examples, self.split, self.max_length = examples, split, max_length
        self.columns = {
            **{name: "" if name in self.TEXT else [] for name in columns},
            **({"length": 0, "truncated": False, "trained": 0} if "labels" in columns else {}),
        }

    def features(self):

        kinds = {
            "length": Value("int64"),
            "truncated": Value("bool"),
            "trained": Value("int64"),
            **{name: Value("string") for name in self.TEXT},
        }
        return Features(
            {
                **{k: kinds.get(k, Sequence(Value("int64"))) for k in self.columns},
                **{k: Value("string") for k in self.STATUS},
            }
        )

    def __call__(self, batch: dict) -> dict:
        out, totals = {k: [] for k in (*self.columns, *self.STATUS)}, {}

        def emit(example: dict, **status):
            for k, default in {**self.columns, **self.STATUS}.items():
                out[k].append(status.get(k, example.get(k, default)))

        for text, where in zip(batch["row"], batch["where"], strict=False):
            try:
                made, counts = self.examples(json.loads(text))
            except RowProblem as e:
                emit({}, problem=str(e), where=where)
                continue
            except Dropped as e:
                emit({}, dropped=str(e), where=where)
                continue
            for example in made:
                reason = ""
                if "labels" in example:
                    example, reason = self._sft(example)
                emit(example, dropped=reason, where=where)
            for name, n in counts.items():
                totals[name] = totals.get(name, 0) + n
        if totals and out["counts"]:
            out["counts"][0] = json.dumps(totals)  # the batch's counts, on its first output row
        return out

    def _sft(self, example: dict) -> tuple[dict, str]:
        ids, labels = example["input_ids"], example["labels"]
        truncated = len(ids) > self.max_length

        def trained(labels):  # the first label is never a target after the shift
            return len(labels) - 1 - labels[1:].count(-100)

        if trained(labels) <= 0:
            return {}, f"{self.split}: no trained token in the row"
        ids, labels = ids[: self.max_length], labels[: self.max_length]
        if trained(labels) <= 0:
            return {
                "truncated": True
            }, f"{self.split}: no trained token after truncation to max_length={self.max_length}"
        return {
            "input_ids": ids,
            "labels": labels,
            "length": len(ids),
            "truncated": truncated,
            "trained": trained(labels),
        }, ""
