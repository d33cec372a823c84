import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONPATH": ROOT,
}
ENV.pop("WANDB_PROJECT", None)
# Settings that make the built-in tiny model train in seconds.
FAST = ["num_epochs=1", "max_steps=6", "logging_steps=2", "save_steps=3", "eval_steps=3", "progress_bar=false"]


def run(args, cwd=ROOT, env=None, timeout=600):
    """Run a command from the repository root; returns the CompletedProcess with text output."""
    return subprocess.run(args, cwd=cwd, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def run_script(script, *params, env=None, timeout=600):
    return run([sys.executable, os.path.join(ROOT, script), *params], env=env, timeout=timeout)


def run_in_process(script, *params):
    """`python script params...` in this process: the same entry points (resolve, then main) without an
    interpreter start, for tables of runs that stop before training. Returns a CompletedProcess."""
    import contextlib
    import importlib
    import io

    from common.params import resolve

    module = importlib.import_module(script.removesuffix(".py"))
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            module.main(resolve(module.PARAMS, list(params)))
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess([script, *params], code, out.getvalue(), err.getvalue())


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def trained_spans(tokenizer, row):
    """The decoded runs of tokens that carry a loss in a data_preview.jsonl row."""
    spans, current = [], []
    for token, label in zip(row["input_ids"], row["labels"]):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    return spans + ([tokenizer.decode(current)] if current else [])


def assert_one_line_exit_2(result, message, out):
    """The bad-input contract: exit status 2, one `error:` line holding message, no traceback, no final/."""
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (out / "final").exists()


def weights(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def kill_and_resume(tmp_path, script, data_file, *extra):
    """SIGKILL a run after its second checkpoint, resume it, and compare with a run that was never stopped.

    100 rows in batches of 8: 13 steps an epoch, so the kill and the resume fall in a later epoch.
    """
    import torch

    with open(os.path.join(ROOT, data_file)) as f:
        data = write_jsonl(tmp_path / "small.jsonl", [line.strip() for line in f][:100])
    settings = [f"data={data}", "max_steps=24", "save_steps=8", "logging_steps=4", "eval_fraction=0",
                "test_data=", "progress_bar=false", "batch_size=8", *extra]
    straight = tmp_path / "straight"
    assert run_script(script, *settings, f"output_dir={straight}").returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, script, *settings, f"output_dir={killed}"], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint-16" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    again = run_script(script, *settings, f"output_dir={killed}")
    assert again.returncode == 2 and "resume=true" in again.stderr  # refuses to silently start over
    resumed = run_script(script, *settings, f"output_dir={killed}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = weights(straight / "final"), weights(killed / "final")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)
    steps = [m["step"] for m in read_jsonl(killed / "metrics.jsonl") if "loss" in m]
    assert steps == [4, 8, 12, 16, 20, 24]  # no step logged twice


@pytest.fixture(scope="session")
def default_sft_chat_run(tmp_path_factory):
    """`accelerate launch sft_chat.py` on the embedded default, run once for every test that needs it:
    (final/ path, the CompletedProcess, seconds)."""
    out = tmp_path_factory.mktemp("default_sft_chat") / "out"
    start = time.time()
    result = run(["accelerate", "launch", "sft_chat.py", f"output_dir={out}", "progress_bar=false"])
    return out / "final", result, time.time() - start


@pytest.fixture(scope="session")
def default_sft_chat(default_sft_chat_run):
    final, result, _ = default_sft_chat_run
    assert result.returncode == 0, result.stderr[-3000:]
    return str(final)


@pytest.fixture(scope="session")
def sft_model(tmp_path_factory):
    """A briefly trained sft_chat.py output: its tokenizer carries the chat tokens and template."""
    out = tmp_path_factory.mktemp("sft") / "out"
    result = run_script("sft_chat.py", *FAST, f"output_dir={out}", "test_data=", "max_steps=20")
    assert result.returncode == 0, result.stderr[-3000:]
    return str(out / "final")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
