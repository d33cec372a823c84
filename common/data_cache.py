"""The prepared-data cache: the key of a run's prepared data, the entry stored whole, and its reuse.

An entry is a folder under data_cache_dir named by a hash of everything the prepared data depends on: the content
of every data file (and of the held-out sets decontamination reads), the tokenizer with its chat template, the code
that prepares it (common/ and the module of any function a recipe brings from elsewhere, a row hook's), and the
settings that change it (PREPARE_KEYS and the recipe's own keys). A setting that does not change the data
(learning_rate, num_epochs, ...) never re-keys it. The main process writes an entry in a temporary folder and
renames it; other ranks and reruns memory-map its Arrow files.
"""

import glob
import hashlib
import inspect
import json
import os
import shutil

from datasets import Dataset

from common.data import source_specs
from common.errors import UserError

PREP_VERSION = 2  # part of the key: raise it when the saved layout changes
# The settings every preparation reads; a recipe adds its own (Recipe.keys)
PREPARE_KEYS = ("data", "eval_data", "eval_fraction", "max_length", "seed", "on_bad_rows", "clean")
COMMON = os.path.dirname(os.path.abspath(__file__))


def cache_key(params: dict, name: str, keys: tuple, functions: list, tokenizer, eval_sets: list) -> str:
    """The entry's name: a hash of the settings named by PREPARE_KEYS and keys, the data files' content, the
    tokenizer (None: no tokenizer is used) and the code (see the module doc)."""
    digest = hashlib.sha256()
    settings = {k: params.get(k) for k in (*PREPARE_KEYS, *keys)}
    digest.update(json.dumps([PREP_VERSION, name, settings, eval_sets], sort_keys=True, default=str).encode())
    for value, key in (
        (params["data"], "data"),
        (params.get("eval_data"), "eval_data"),
        (eval_sets, "clean.eval_sets"),
    ):
        for spec, _ in source_specs(value, key) if value else []:
            digest.update(fingerprint(spec["path"]).encode())
    if tokenizer is not None:
        backend = tokenizer.backend_tokenizer.to_str() if tokenizer.is_fast else repr(tokenizer)
        digest.update(backend.encode())
        added = sorted(tokenizer.get_added_vocab().items())
        digest.update(json.dumps([tokenizer.chat_template, added], default=str).encode())
    for path in code_files(functions):
        if path is None:  # code without a file to key on (defined interactively): never reuse
            digest.update(os.urandom(16))
            continue
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:32]


def code_files(functions: list) -> list:
    """The source files of common/ and of the modules outside it that define the given functions (an experiment
    file's row hook); None for a function that has none. A script's own file is not among them unless one of its
    functions prepares data, so editing its PARAMS does not re-key the data."""
    files = set(glob.glob(os.path.join(COMMON, "**", "*.py"), recursive=True))
    for function in functions:
        function = getattr(function, "func", function)  # a functools.partial
        if function is not None:
            files.add(getattr(inspect.getmodule(function), "__file__", None))
    return sorted(files, key=str)


def fingerprint(path: str) -> str:
    """The content of a file or a saved dataset's files; a hub id stands for itself (it is read offline from the
    local hub cache, which changes only with a download)."""
    files = [path] if os.path.isfile(path) else sorted(glob.glob(os.path.join(path, "**", "*"), recursive=True))
    digest = hashlib.sha256(path.encode())
    for name in files:
        if os.path.isfile(name):
            with open(name, "rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
    return digest.hexdigest()


def is_stored(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "meta.json"))


def say_new_entry(folder: str) -> None:
    """One line when the cache holds entries but none for this run (other data or settings, or an older version
    of the code): it is prepared again, and the other entries stay."""
    others = [f for f in glob.glob(os.path.join(os.path.dirname(folder), "*")) if is_stored(f)]
    if others:
        print(
            f"prepared data: no entry in {os.path.dirname(folder)} for this data, tokenizer, code and settings "
            f"({len(others)} other entries kept); preparing it",
            flush=True,
        )


def store(folder: str, make) -> object:
    """make(tmp) writes an entry's files into tmp/ (with a tmp/work folder for its scratch files) and returns
    (meta, result); the entry is written whole in a temporary folder beside the final one, then renamed, so a
    killed run leaves no half-written entry and a finished one is never rewritten. Returns result."""
    tmp = f"{folder}.tmp{os.getpid()}"
    for stale in glob.glob(f"{folder}.tmp*"):  # a killed run's leftovers: its process is gone
        if not os.path.exists(f"/proc/{stale.rsplit('.tmp', 1)[1]}"):
            shutil.rmtree(stale, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "work"))
    try:
        meta, result = make(tmp)
        shutil.rmtree(os.path.join(tmp, "work"))
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not is_stored(folder):
                raise  # else a run beside this one stored the same key first: the same data, keep theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def read_meta(folder: str) -> dict:
    """An entry's meta.json, on any rank; one line when the main process's entry is not visible here."""
    if not is_stored(folder):
        raise UserError(
            f"data_cache_dir: {folder} was prepared by the main process but is not visible here; on several "
            "machines put data_cache_dir on a filesystem they all share"
        )
    with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
        return json.load(f)


def open_split(folder: str, split: str):
    """The entry's memory-mapped split ("train" or "eval"), or None when it has none."""
    path = os.path.join(folder, f"{split}.arrow")
    return Dataset.from_file(path) if os.path.isfile(path) else None
