"""The prepared-data cache (common/data_cache.py): only the keys a recipe declares (and the shared data keys) re-key
it, a script's own file is not part of the key, and a run that finds other entries but none of its own says so."""

import os

import pytest

import sft_chat
from common.cleaning import CLEAN_DEFAULTS
from common.data_cache import PREPARE_KEYS, cache_key, code_files, store
from common.models import load_tokenizer
from tests.conftest import ROOT, run_in_process, write_jsonl

TOKENIZER = load_tokenizer("builtin:tiny")
DATA = f"{ROOT}/data/examples/chat_train.jsonl"
PARAMS = {"data": [DATA], "eval_data": [], "eval_fraction": 0.05, "max_length": 512, "seed": 42,
          "on_bad_rows": "error", "clean": dict(CLEAN_DEFAULTS), "learning_rate": 1e-3, "loss_on": "all"}  # fmt: skip


def key(params, keys=("loss_on",), functions=(sft_chat.chat_example,)):
    return cache_key(params, "sft_chat", keys, list(functions), TOKENIZER, [])


@pytest.mark.parametrize(
    "change, rekeys",
    [
        ({"learning_rate": 3e-3}, False),  # a training setting
        ({"loss_on": "last"}, True),  # a key the recipe declares
        ({"max_length": 256}, True),  # a shared data key
        ({"clean": {**CLEAN_DEFAULTS, "threshold": 0.9}}, True),
    ],
)
def test_only_data_keys_rekey(change, rekeys):
    assert (key({**PARAMS, **change}) != key(PARAMS)) is rekeys
    assert set(PREPARE_KEYS) <= set(PARAMS)


def test_a_scripts_own_file_is_not_code_the_data_depends_on_but_a_hooks_module_is():
    files = code_files([sft_chat.chat_example, None])
    assert os.path.join(ROOT, "common", "chat", "masks.py") in files
    assert not any(f.endswith("sft_chat.py") for f in files)
    assert os.path.abspath(__file__) in code_files([test_only_data_keys_rekey])  # a row hook defined elsewhere


def test_a_script_rerun_with_other_training_settings_reuses_its_data_and_says_when_it_prepares_anew(tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"messages": [{"role": "user", "content": f"hi {i}"},
                                                                {"role": "assistant", "content": f"ok {i}"}]}
                                                  for i in range(12)])  # fmt: skip
    common = [
        f"data={rows}",
        "dry_run=true",
        "test_data=",
        f"data_cache_dir={tmp_path / 'cache'}",
        "progress_bar=false",
    ]
    first = run_in_process("sft_chat.py", *common, f"output_dir={tmp_path / 'a'}")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "preparing it" not in first.stdout  # an empty cache: nothing to say
    again = run_in_process("sft_chat.py", *common, f"output_dir={tmp_path / 'b'}", "learning_rate=1e-4", "num_epochs=3")
    assert "(reused)" in again.stdout
    other = run_in_process("sft_chat.py", *common, f"output_dir={tmp_path / 'c'}", "loss_on=last_assistant")
    assert "(1 other entries kept); preparing it" in other.stdout and "(reused)" not in other.stdout


def test_an_entry_a_parallel_run_stored_first_is_kept_and_a_failed_rename_still_fails(tmp_path):
    folder = str(tmp_path / "entry")

    def ours(tmp):  # the run beside this one (another process) finishes the same key while this one prepares
        os.makedirs(folder)
        for name, text in (("data", "theirs"), ("meta.json", "{}")):
            with open(os.path.join(folder, name), "w") as f:
                f.write(text)
        return {"by": "ours"}, "ours"

    assert store(folder, ours) == "ours"
    with open(os.path.join(folder, "data")) as f:
        assert f.read() == "theirs"
    assert os.listdir(tmp_path) == ["entry"]  # this run's temporary folder is gone
    os.makedirs(tmp_path / "blocked" / "junk")  # a non-entry folder in the way: the rename error is not hidden
    with pytest.raises(OSError):
        store(str(tmp_path / "blocked"), lambda tmp: ({}, None))
