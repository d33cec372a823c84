import json
import os
import subprocess
import sys

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


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
