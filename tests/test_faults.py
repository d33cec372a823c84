"""Fault injection: SIGKILL each script at the points where a crash can hurt, restart it, and check that the
result equals an uninterrupted run and that no half-written file ever looked finished.

The faults come from tests/faults/sitecustomize.py (FAULT=...). `python -m pytest -m faults` runs the whole
table; the default test command runs the cases marked `ci` (one of each kind of fault), because the whole
table takes about 5 minutes on two cores. README "What happens when things go wrong" has the results table.
"""

import glob
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, read_jsonl, run_script, weights, write_jsonl

# one worker, so the uninterrupted runs (the straight fixture) are made once
pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.xdist_group("faults")]
FAULTS_PATH = os.path.join(ROOT, "tests", "faults")
DATA = {
    "sft_chat.py": "data/examples/chat_train.jsonl",
    "sft_completion.py": "data/examples/completion_train.jsonl",
    "dpo.py": "data/examples/preference_train.jsonl",
}

ci = pytest.mark.ci  # the cases the default test command runs
FAULTS = [
    ("prepare", "during data preparation"),
    ("step:5", "between checkpoints"),
    ("save", "during a checkpoint save"),
    ("state:6", "torn trainer_state.json"),
    ("replace:*/final", "during the final export"),
]
CACHE_FAULTS = {
    "sft_chat.py": [("replace:*data_cache*", "writing the prepared data")],
    "dpo.py": [("replace:*ref_cache*", "writing the reference cache")],
}
IN_CI = {("sft_chat.py", "step:5"), ("sft_chat.py", "state:6")}
TRAINING_FAULTS = [
    pytest.param(
        script, fault, id=f"{script.removesuffix('.py')}: {what}", marks=[ci] if (script, fault) in IN_CI else []
    )
    for script in DATA
    for fault, what in [*FAULTS, *CACHE_FAULTS.get(script, [])]
]


def settings(script, out, sft_model):
    with open(os.path.join(ROOT, DATA[script])) as f:
        data = write_jsonl(out.parent / f"{out.name}_data.jsonl", [line.strip() for line in f][:100])
    extra = [f"model={sft_model}", "exact_match_data=", f"ref_cache_dir={out}_ref_cache"] if script == "dpo.py" else []
    return [
        f"data={data}",
        f"output_dir={out}",
        f"data_cache_dir={out}_data_cache",
        "max_steps=9",
        "save_steps=3",
        "logging_steps=3",
        "eval_fraction=0",
        "test_data=",
        "progress_bar=false",
        "batch_size=8",
        "grad_accum=1",
        *extra,
    ]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, sft_model):
    """Each script's uninterrupted run, made once: {script: final/ weights}."""
    runs = {}

    def get(script):
        if script not in runs:
            out = tmp_path_factory.mktemp("straight") / "out"
            result = run_script(script, *settings(script, out, sft_model))
            assert result.returncode == 0, result.stderr[-3000:]
            runs[script] = weights(out / "final")
        return runs[script]

    return get


def finished_files_are_whole(out):
    """Every file under its finished name, in the output folder and its caches, parses whole. Temporary names
    (*.tmp*) may be partial; a checkpoint is finished only once trainer_state.json, written last, is there."""
    from safetensors.torch import load_file

    for path in (p for root in glob.glob(f"{out}*") for p in glob.glob(f"{root}/**/*", recursive=True)):
        checkpoint = re.search(r"(.*/checkpoint-\d+)/", path)
        if (
            not os.path.isfile(path)
            or ".tmp" in path
            or checkpoint
            and not os.path.isfile(f"{checkpoint[1]}/trainer_state.json")
        ):
            continue
        if path.endswith(".jsonl"):
            read_jsonl(path)
        elif path.endswith(".json") and not path.endswith("trainer_state.json"):  # a torn one is found on resume
            with open(path) as f:
                json.load(f)
        elif path.endswith(".safetensors"):
            load_file(path)


def kill(script, fault, args):
    env = {"FAULT": fault, "PYTHONPATH": f"{FAULTS_PATH}{os.pathsep}{ROOT}"}
    result = run_script(script, *args, env=env)
    assert result.returncode == -signal.SIGKILL, f"not killed by {fault}: {result.stderr[-3000:]}"


@pytest.mark.parametrize("script, fault", TRAINING_FAULTS)
def test_killed_training_resumes_to_the_uninterrupted_result(tmp_path, sft_model, straight, script, fault):
    import torch

    out = tmp_path / "out"
    args = settings(script, out, sft_model)
    kill(script, fault, args)
    assert not (out / "final").exists()
    finished_files_are_whole(out)
    if fault.startswith("step"):  # with checkpoints there, a plain rerun refuses to silently start over
        again = run_script(script, *args)
        assert again.returncode == 2 and "resume=true" in again.stderr
    resumed = run_script(script, *args, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if fault.startswith("state"):  # the torn checkpoint is set aside, with a warning, and the one before used
        assert "warning: checkpoint-6 is unusable" in resumed.stderr and "resuming from checkpoint-3" in resumed.stderr
    expected, got = straight(script), weights(out / "final")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0, msg=name)
    steps = [m["step"] for m in read_jsonl(out / "metrics.jsonl") if "loss" in m]
    assert steps == [3, 6, 9]  # no step logged twice


@ci
def test_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path, sft_model, straight):
    import torch

    out = tmp_path / "out"
    args = settings("sft_chat.py", out, sft_model)
    kill("sft_chat.py", "step:8", args)
    weights_file = out / "checkpoint-6" / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[: weights_file.stat().st_size // 2])  # as a bad copy leaves it
    resumed = run_script("sft_chat.py", *args, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "warning: checkpoint-6 is unusable (model.safetensors" in resumed.stderr
    assert (out / "unusable-checkpoint-6").is_dir()  # kept for a look, out of the way
    expected, got = straight("sft_chat.py"), weights(out / "final")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0, msg=name)


@ci
def test_full_disk_during_a_save_fails_cleanly(tmp_path):
    """output_dir on a 20 MB filesystem: the first checkpoint (14 MB) fits, the second does not."""
    out, copy = tmp_path / "small_disk", tmp_path / "after"
    out.mkdir()
    run_args = [
        sys.executable,
        "sft_chat.py",
        f"output_dir={out}",
        "max_steps=9",
        "save_steps=3",
        "test_data=",
        "progress_bar=false",
        f"data_cache_dir={tmp_path / 'cache'}",
        "save_total_limit=5",
    ]
    script = (
        f"mount -t tmpfs -o size=20m tmpfs {out} && {subprocess.list2cmdline(run_args)}; echo exit=$?; "
        f"cp -a {out} {copy}"
    )
    result = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c", script],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
    )
    assert "exit=3" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on the device" in errors[0] and "Traceback" not in result.stderr
    assert not (copy / "final").exists()
    from common.checkpoint import checkpoints, unusable

    found = checkpoints(str(copy))
    assert found and all(unusable(c) is None for c in found)  # what looks finished is whole


def synth_args(out, prompts, url):
    return [
        f"data={prompts}",
        f"output_dir={out}",
        "backend=openai",
        f"base_url={url}",
        "model=stub",
        "concurrency=8",
        "stages=[responses]",
        "num_samples=2",
        "progress_bar=false",
        "test_data=",
        f"data_cache_dir={out}_data_cache",
    ]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param("put:50", id="synth_data: during generation", marks=ci),
        pytest.param("replace:*/responses.jsonl", id="synth_data: while writing"),
    ],
)
def test_killed_synth_data_loses_nothing_and_sends_nothing_twice(tmp_path, openai_stub, fault):
    handler, url = openai_stub
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": f"Play song number {i}"},
                    {"role": "assistant", "content": "play_music()"},
                ]
            }
            for i in range(60)
        ],
    )
    straight = tmp_path / "straight"
    assert run_script("synth_data.py", *synth_args(straight, prompts, url)).returncode == 0
    expected, sent_straight = read_jsonl(straight / "responses.jsonl"), len(handler.seen_keys)
    assert len(expected) == 120 and sent_straight == 120

    out = tmp_path / "out"
    kill("synth_data.py", fault, synth_args(out, prompts, url))
    assert not (out / "responses.jsonl").exists()  # only whole files appear, under their finished names
    finished_files_are_whole(out)
    result = run_script("synth_data.py", *synth_args(out, prompts, url))
    assert result.returncode == 0, result.stderr[-3000:]
    got = read_jsonl(out / "responses.jsonl")
    canon = sorted(json.dumps(r, sort_keys=True) for r in got)
    assert canon == sorted(json.dumps(r, sort_keys=True) for r in expected)  # the same rows, each once
    resent = len(handler.seen_keys) - sent_straight - 120
    assert 0 <= resent <= 8  # at most the requests in flight at the kill were sent again
