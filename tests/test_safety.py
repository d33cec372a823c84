"""Safety: secrets never reach an output, nothing from PARAMS or data runs as code, weights are safetensors."""

import ast
import glob
import json
import os
from pathlib import Path

import pytest

from tests.conftest import FAST, ROOT, read_jsonl, run_script, write_jsonl

SCRIPTS = ("sft_chat.py", "sft_completion.py", "dpo.py", "synth_data.py")
PLANTED = {  # shaped like real keys, so a leak would look like one
    "OPENAI_API_KEY": "sk-planted" + "Q7" * 20,
    "HF_TOKEN": "hf_planted" + "Zx" * 16,
    "WANDB_API_KEY": "planted" + "0a" * 20,
}


@pytest.mark.slow
@pytest.mark.e2e
def test_planted_keys_reach_no_output_of_any_script(tmp_path, sft_model, openai_stub):
    """Keys sit in the environment (where the scripts read them) and in a data row; every run logs to wandb
    (offline). Afterwards no file under any output folder, wandb's included, and no console line holds them."""
    handler, url = openai_stub
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    secret_row = f"My key is {PLANTED['OPENAI_API_KEY']} and my token {PLANTED['HF_TOKEN']}"
    chat = write_jsonl(
        inputs / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": f"Play Adele {i}"},
                    {"role": "assistant", "content": 'play_music(artist="Adele")'},
                ]
            }
            for i in range(30)
        ]
        + [{"messages": [{"role": "user", "content": secret_row}, {"role": "assistant", "content": "ok"}]}],
    )
    completion = write_jsonl(
        inputs / "completion.jsonl",
        [{"prompt": f"Play Adele {i}", "completion": "play_music()"} for i in range(30)]
        + [{"prompt": secret_row, "completion": "ok"}],
    )
    pairs = write_jsonl(
        inputs / "pairs.jsonl",
        [{"prompt": f"Play Adele {i}", "chosen": "play_music()", "rejected": "stop()"} for i in range(30)]
        + [{"prompt": secret_row, "chosen": "ok", "rejected": "no"}],
    )
    env = {**PLANTED, "WANDB_MODE": "offline", "WANDB_PROJECT": "planted", "WANDB_DIR": str(outputs / "wandb")}
    cache = f"data_cache_dir={outputs / 'data_cache'}"
    runs = [
        ("sft_chat.py", f"data={chat}", *FAST, "test_data=", cache),
        ("sft_completion.py", f"data={completion}", *FAST, "test_data=", cache),
        (
            "dpo.py",
            f"model={sft_model}",
            f"data={pairs}",
            "max_steps=2",
            "test_data=",
            "exact_match_data=",
            "progress_bar=false",
            f"ref_cache_dir={outputs / 'ref_cache'}",
            cache,
        ),
        (
            "synth_data.py",
            "backend=openai",
            f"base_url={url}",
            f"model={sft_model}",
            f"data={chat}",
            "stages=[responses]",
            "num_samples=1",
            "test_data=",
            "progress_bar=false",
            cache,
        ),
    ]
    consoles = []
    for script, *args in runs:
        out = outputs / script.removesuffix(".py")
        result = run_script(
            script, *args, f"output_dir={out}", "report_to=auto" if script != "synth_data.py" else "seed=1", env=env
        )
        assert result.returncode == 0, f"{script}: {result.stderr[-3000:]}"
        consoles.append(result.stdout + result.stderr)
        if script != "synth_data.py":  # weights are safetensors, in final/ and in every checkpoint
            for folder in [out / "final", *map(Path, glob.glob(str(out / "checkpoint-*")))]:
                assert (folder / "model.safetensors").is_file() and not glob.glob(str(folder / "pytorch_model*"))
            assert not glob.glob(str(out / "final" / "*.bin")) and not glob.glob(str(out / "final" / "*.pt"))
    assert handler.seen_keys and all(
        k == f"Bearer {PLANTED['OPENAI_API_KEY']}" for k in handler.seen_keys
    )  # it was used
    runs = glob.glob(str(outputs / "wandb" / "**" / "*.wandb"), recursive=True)  # wandb's offline run records
    assert sum(b"learning_rate" in Path(r).read_bytes() for r in runs) >= 3  # one per training script, with its config

    files = [f for f in glob.glob(str(outputs / "**" / "*"), recursive=True) if os.path.isfile(f)]
    assert len(files) > 50
    for value in PLANTED.values():
        leaks = [f for f in files if value.encode() in Path(f).read_bytes()]
        assert not leaks, f"{value[:12]}... found in {leaks}"
        assert all(value not in console for console in consoles)
    assert "<SECRET>" in json.dumps(read_jsonl(outputs / "synth_data" / "responses.jsonl"))  # the data row was scrubbed


def python_files():
    return [
        f
        for pattern in ("*.py", "common/*.py", "examples/*.py", "bench/*.py")
        for f in glob.glob(os.path.join(ROOT, pattern))
    ]


def calls(path):
    """(dotted name, keywords) of every call in a file."""
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), {k.arg: k.value for k in node.keywords}


def test_nothing_is_evaluated_as_code():
    """No eval/exec or pickle, YAML through safe_load only, torch.load only of tensors, remote code only
    when the trust_remote_code PARAMS switch passes it on (never a literal True)."""
    for path in python_files():
        for name, keywords in calls(path):
            assert name not in (
                "eval",
                "exec",
                "pickle.load",
                "pickle.loads",
                "yaml.load",
                "yaml.unsafe_load",
                "yaml.full_load",
            ), f"{path}: {name}()"
            if name == "torch.load":
                weights_only = keywords.get("weights_only")
                assert isinstance(weights_only, ast.Constant) and weights_only.value is True, f"{path}: torch.load"
            value = keywords.get("trust_remote_code")
            assert not (isinstance(value, ast.Constant) and value.value is True), f"{path}: trust_remote_code=True"


@pytest.mark.parametrize("script", SCRIPTS)
def test_remote_code_is_off_unless_params_turn_it_on(script):
    import importlib

    params = importlib.import_module(script.removesuffix(".py")).PARAMS
    assert params["trust_remote_code"] is False
