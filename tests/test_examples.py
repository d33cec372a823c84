"""The experiment files in examples/ and the fork-by-copy habit: custom losses are the ones used."""

import json
import math
import os
import shutil
import sys
import uuid

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import ROOT, read_jsonl, run, run_script, write_jsonl

sys.path.insert(0, os.path.join(ROOT, "examples"))
SHORT = ["max_steps=2", "logging_steps=1", "save_steps=100", "eval_fraction=0", "test_data=", "progress_bar=false"]


def first_loss(out):
    return next(m["loss"] for m in read_jsonl(out / "metrics.jsonl") if "loss" in m)


def test_name_weights_cover_the_function_name_of_each_answer():
    from sft_chat_weighted_name import name_weights

    from common.chat_format import prepare_tokenizer
    from common.models import load_tokenizer

    tokenizer = load_tokenizer("builtin:tiny")
    prepare_tokenizer(tokenizer, "special_tokens")
    answer = tokenizer('set_timer(minutes=5)<eot>', add_special_tokens=False)["input_ids"]
    prompt = tokenizer("<user>Set a timer for 5 minutes<eot><assistant>", add_special_tokens=False)["input_ids"]
    labels = torch.tensor([[-100] * len(prompt) + answer + [-100] * len(prompt) + answer])  # two answers, packed
    weights = name_weights(labels, tokenizer, 3.0)[0].tolist()
    name = next(i for i, t in enumerate(answer) if "(" in tokenizer.decode([t])) + 1
    expected = [1.0] * len(prompt) + [3.0] * name + [1.0] * (len(answer) - name)
    assert weights == expected * 2


def test_weighted_name_sft_is_the_loss_used_and_equals_sft_chat_at_weight_1(tmp_path):
    script = "examples/sft_chat_weighted_name.py"
    runs = {"sft_chat": ("sft_chat.py", []), "weight 1": (script, ["name_weight=1"]), "weight 3": (script, ["name_weight=3"])}
    losses = {}
    for name, (path, extra) in runs.items():
        out = tmp_path / name.replace(" ", "_")
        result = run_script(path, *SHORT, *extra, f"output_dir={out}")
        assert result.returncode == 0, result.stderr[-3000:]
        losses[name] = first_loss(out)
    assert losses["weight 1"] == pytest.approx(losses["sft_chat"], abs=1e-4)  # same batch, same loss
    assert losses["weight 3"] > losses["sft_chat"] + 0.5  # the name's tokens count three times
    assert (tmp_path / "weight_3" / "final" / "model.safetensors").exists()


def test_dpop_loss_is_dpo_at_lambda_0_and_penalises_a_falling_chosen_answer():
    from dpo_positive import dpop_loss

    chosen, rejected = torch.tensor([-5.0, -3.0]), torch.tensor([-6.0, -9.0])
    ref_chosen, ref_rejected = torch.tensor([-4.0, -3.5]), torch.tensor([-6.5, -8.0])
    plain, _ = dpop_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1, lam=0.0)
    delta = (chosen - ref_chosen) - (rejected - ref_rejected)
    torch.testing.assert_close(plain, -F.logsigmoid(0.1 * delta))
    positive, penalty = dpop_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1, lam=50.0)
    assert penalty.tolist() == [1.0, 0.0]  # only the first chosen answer fell below the reference
    assert positive[0] > plain[0] + 1.0 and positive[1] == plain[1]


@pytest.mark.parametrize("reference", ["cached", "lora"])
def test_dpo_positive_runs_and_logs_its_penalty(tmp_path, sft_model, reference):
    out = tmp_path / "out"
    pairs = write_jsonl(tmp_path / "pairs.jsonl", read_jsonl(f"{ROOT}/data/examples/preference_train.jsonl")[:32])
    extra = ["lora.enabled=true", "lora.r=4"] if reference == "lora" else [f"ref_cache_dir={tmp_path / 'cache'}"]
    result = run_script("examples/dpo_positive.py", f"model={sft_model}", f"data={pairs}", *SHORT, "exact_match_data=",
                        "batch_size=8", *extra, f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [m for m in read_jsonl(out / "metrics.jsonl") if "loss" in m]
    assert all("dpop/penalty" in m for m in metrics)  # TRL never logs this: the subclass computed the loss
    assert first_loss(out) == pytest.approx(math.log(2), abs=1e-3)  # policy = reference at the first step
    assert (out / "final" / "model.safetensors").exists()


def test_a_copied_script_runs_unchanged(tmp_path):
    copy = os.path.join(ROOT, f"my_sft_{uuid.uuid4().hex[:8]}.py")
    shutil.copy(os.path.join(ROOT, "sft_chat.py"), copy)
    try:
        result = run([sys.executable, copy, *SHORT, f"output_dir={tmp_path / 'out'}"])
    finally:
        os.remove(copy)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "final" / "model.safetensors").exists()


def test_row_hook_maps_another_schema_before_the_checks(tmp_path):
    rows = read_jsonl(f"{ROOT}/data/examples/chat_train.jsonl")[:64]
    data = write_jsonl(tmp_path / "qa.jsonl", [{"q": r["messages"][-2]["content"], "a": r["messages"][-1]["content"]} for r in rows])
    experiment = tmp_path / "experiment.py"
    experiment.write_text(
        "from common.params import resolve\n"
        "from sft_chat import PARAMS, main\n\n\n"
        "def to_chat(row):\n"
        "    if row['a'].startswith('play_music'):\n"
        "        return None\n"
        "    return {'messages': [{'role': 'user', 'content': row['q']}, {'role': 'assistant', 'content': row['a']}]}\n\n\n"
        "if __name__ == '__main__':\n"
        "    main(resolve(PARAMS), row_hook=to_chat)\n"
    )
    out = tmp_path / "out"
    args = [f"data={data}", "dry_run=true", "eval_fraction=0", "test_data=", f"output_dir={out}", f"clean.cache_dir={tmp_path}"]
    result = run([sys.executable, str(experiment), *args])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.load(open(out / "data_report.json"))
    music = sum(r["messages"][-1]["content"].startswith("play_music") for r in rows)
    assert music and report["dropped"]["row_hook returned None"] == music
    assert report["cleaning"]["rows_in"] == 64 - music
    plain = run_script("sft_chat.py", *args)  # without the hook the same rows are not chat rows
    assert plain.returncode == 2 and "qa.jsonl:1: row has no 'messages' field" in plain.stderr
