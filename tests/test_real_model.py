"""A real pretrained model through the scripts: SmolLM2-135M-Instruct, made offline by ../shared/real_models/ once
and cached in ~/.cache (the folder `model=smollm2-135m` names). Its own lane: `python -m pytest -n 0 -m real_model`."""

import os
import re
import subprocess

import pytest

from common.params import NAMED_MODELS
from tests.conftest import ROOT, read_jsonl, run, write_jsonl
from tests.test_sft_chat import plain_eval

pytestmark = [pytest.mark.real_model, pytest.mark.e2e, pytest.mark.slow]

FOLDER, MAKER = NAMED_MODELS["smollm2-135m"]


@pytest.fixture(scope="session")
def smollm2():
    """The model's folder, made by the shared script on first use; skipped only when the registry is unreachable."""
    folder = os.path.expanduser(FOLDER)
    maker = os.path.normpath(os.path.join(ROOT, MAKER))
    made = subprocess.run(["bash", maker, folder], capture_output=True, text=True, timeout=900)
    if made.returncode != 0:
        probe = subprocess.run(
            ["pip", "download", "--no-deps", "-q", "-d", "/tmp/probe", "six==1.16.0"], capture_output=True, text=True
        )
        if probe.returncode != 0:
            pytest.skip(f"the package registry cannot be reached: {probe.stderr.strip().splitlines()[-1:]}")
        raise AssertionError(made.stderr[-3000:])
    return folder


def accuracy(stage, stdout):
    return float(re.search(rf"{stage}: held-out exact match ([\d.]+)%", stdout).group(1))


def test_sft_chat_recipe_lifts_held_out_accuracy_and_plain_transformers_agrees(smollm2, tmp_path):
    """A few dozen steps of the real-model chat recipe on part of the example task: the base model answers almost
    none of the held-out requests in the task's exact form, the trained one most. Its template adds a default
    system prompt to rows without one: training, our evaluation and plain transformers must all render it."""
    test = write_jsonl(tmp_path / "test.jsonl", read_jsonl(f"{ROOT}/data/examples/chat_test.jsonl")[:50])
    result = run(
        [
            "accelerate",
            "launch",
            "sft_chat.py",
            "--config",
            "configs/recipes/smollm2-135m-chat.yaml",
            f"output_dir={tmp_path / 'out'}",
            f"data_cache_dir={tmp_path / 'cache'}",
            "data=[{path: data/examples/chat_train.jsonl, weight: 160}]",
            f"test_data={test}",
            "progress_bar=false",
        ],
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    before, after = accuracy("before", result.stdout), accuracy("after", result.stdout)
    assert before <= 10.0 and after >= 80.0, result.stdout[-2000:]
    checked = plain_eval(tmp_path / "out" / "final", test)
    assert abs(checked["exact_match"] * 100 - after) < 1e-6 and checked["stopped"] == 1.0
