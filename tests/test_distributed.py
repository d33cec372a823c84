"""Scale-out presets on CPU: the shipped configs/accelerate files themselves, two processes over gloo
(DeepSpeed with DS_ACCELERATOR=cpu, which the scripts set when there is no GPU)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ENV, ROOT, read_jsonl, run, weights, write_jsonl

pytestmark = pytest.mark.e2e  # every test here runs a script end to end


def launch(preset, *args, extra=()):
    return [
        "accelerate",
        "launch",
        "--config_file",
        f"configs/accelerate/{preset}.yaml",
        "--num_processes",
        "2",
        *extra,
        *args,
    ]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    chat = write_jsonl(folder / "chat.jsonl", read_jsonl(f"{ROOT}/data/examples/chat_train.jsonl")[:64])
    pairs = write_jsonl(folder / "pairs.jsonl", read_jsonl(f"{ROOT}/data/examples/preference_train.jsonl")[:32])
    return {
        "sft_chat.py": [f"data={chat}"],
        "dpo.py": [f"data={pairs}", "exact_match_data="],
        "grpo.py": [
            f"data={chat}",
            "num_generations=4",
            "max_completion_length=16",
            "clean.enabled=false",
            "rewards=[tests/data/length_reward.py:reward]",
        ],
    }


SHORT = [
    "max_steps=4",
    "save_steps=2",
    "logging_steps=1",
    "eval_fraction=0",
    "test_data=",
    "progress_bar=false",
    "batch_size=8",
]


def descendants(pid: int) -> list[int]:
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    return [d for c in map(int, children) for d in (*descendants(c), c)]


def gathered_checkpoint(folder):
    """The full fp32 weights reassembled from a DeepSpeed checkpoint's shards."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(folder))


def model_of(script, sft_model, tmp_path):
    return {
        "dpo.py": [f"model={sft_model}", f"ref_cache_dir={tmp_path / 'cache'}"],
        "grpo.py": [f"model={sft_model}"],
    }.get(script, [])


def zero3_args(script, small, model):
    """The ZeRO-3 runs' settings: 8 steps, a sharded checkpoint every 2."""
    return [
        *small[script],
        *model,
        "max_steps=8",
        "save_steps=2",
        "logging_steps=2",
        "test_data=",
        "progress_bar=false",
        "batch_size=8",
        *([] if script == "grpo.py" else ["eval_fraction=0"]),  # grpo.py has no eval split
    ]


@pytest.fixture(scope="module")
def zero3_straight(tmp_path_factory, small, sft_model):
    """Each script's uninterrupted ZeRO-3 run, made once for the preset test and the resume test:
    script -> (output_dir, the CompletedProcess)."""
    runs = {}

    def get(script):
        if script not in runs:
            folder = tmp_path_factory.mktemp("zero3_straight")
            out = folder / "out"
            args = zero3_args(script, small, model_of(script, sft_model, folder))
            runs[script] = out, run(launch("zero3", script, *args, f"output_dir={out}"))
        return runs[script]

    return get


@pytest.mark.slow
@pytest.mark.xdist_group("zero3_straight")  # the worker that made a script's straight run reuses it
@pytest.mark.parametrize(
    "script, preset",
    [
        ("sft_chat.py", "zero2"),
        ("sft_chat.py", "zero3"),
        ("dpo.py", "zero2"),
        ("dpo.py", "zero3"),
        ("grpo.py", "zero3"),
    ],
)
def test_zero_presets_shard_and_save_the_gathered_model(tmp_path, small, sft_model, zero3_straight, script, preset):
    if preset == "zero3":
        (out, result), steps = zero3_straight(script), 8
    else:
        out, steps = tmp_path / "out", 4
        model = model_of(script, sft_model, tmp_path)
        short = [a for a in SHORT if not (script == "grpo.py" and a.startswith("eval_fraction"))]
        result = run(launch(preset, script, *small[script], *model, *short, f"output_dir={out}"))
    assert result.returncode == 0, result.stderr[-4000:]
    stage = int(preset[-1])
    assert f"distributed: DEEPSPEED world_size=2 device=cpu:0 zero_stage={stage}" in result.stdout
    held = {int(r): (int(h), int(t)) for r, h, t in re.findall(r"zero3: rank (\d) holds (\d+) of (\d+)", result.stdout)}
    if stage == 3:  # each rank holds its half of every partitioned tensor, not a copy of the model
        assert sorted(held) == [0, 1] and all(2 * h == t for h, t in held.values()), result.stdout[-2000:]
    else:
        assert not held
    final = weights(out / "final")
    gathered = gathered_checkpoint(out / f"checkpoint-{steps}")  # the last step's shards, reassembled by DeepSpeed
    for name, tensor in final.items():
        torch.testing.assert_close(tensor, gathered[name], atol=1e-6, rtol=0, msg=name)
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out / "final")
    assert loaded.num_parameters() == sum(t.numel() for t in final.values() if t.dim()) - (
        final["lm_head.weight"].numel() if "lm_head.weight" in final and loaded.config.tie_word_embeddings else 0
    )


@pytest.mark.slow
@pytest.mark.xdist_group("zero3_straight")
@pytest.mark.parametrize("script", ["sft_chat.py", "dpo.py", "grpo.py"])
def test_zero3_resume_from_a_sharded_checkpoint_matches_an_uninterrupted_run(
    tmp_path, small, sft_model, zero3_straight, script
):
    args = zero3_args(script, small, model_of(script, sft_model, tmp_path))
    straight, result = zero3_straight(script)
    assert result.returncode == 0, result.stderr[-4000:]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        launch("zero3", script, *args, f"output_dir={killed}"),
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while not (killed / "checkpoint-4" / "trainer_state.json").exists():
        assert proc.poll() is None, "the run ended before its checkpoint"
        time.sleep(0.01)
    for pid in [*descendants(proc.pid), proc.pid]:  # both ranks (torch's launcher gives them their own sessions)
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    resumed = run(launch("zero3", script, *args, f"output_dir={killed}", "resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "zero3: rank 1 holds" in resumed.stdout
    a, b = weights(straight / "final"), weights(killed / "final")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)


def test_two_machines_simulated_on_one_train_and_save_once(tmp_path, small):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    machines = ["--num_machines", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
    procs = [
        subprocess.Popen(
            [
                "accelerate",
                "launch",
                "--config_file",
                "configs/accelerate/multinode.yaml",
                "--num_processes",
                "2",
                *machines,
                "--machine_rank",
                str(rank),
                "sft_chat.py",
                *small["sft_chat.py"],
                *SHORT,
                f"output_dir={out}",
            ],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    stdout = outputs[0][0] + outputs[1][0]
    assert "world_size=2" in outputs[0][0] and stdout.count(f"saved {out}/final") == 1
    assert (out / "final" / "model.safetensors").exists() and not (out / "final.tmp").exists()
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl") if "loss" in m] == [1, 2, 3, 4]  # logged once


@pytest.mark.slow
def test_lora_under_zero3_saves_a_complete_adapter_and_the_merged_model(tmp_path, small):
    lora = [*small["sft_chat.py"], *SHORT, "lora.enabled=true", "lora.r=4"]
    runs = {"ddp": ("ddp", []), "zero3": ("zero3", []), "adapter": ("zero3", ["lora.merge=false"])}
    for name, (preset, extra) in runs.items():
        result = run(launch(preset, "sft_chat.py", *lora, *extra, f"output_dir={tmp_path / name}"))
        assert result.returncode == 0, result.stderr[-4000:]
    merged, reference = weights(tmp_path / "zero3" / "final"), weights(tmp_path / "ddp" / "final")
    assert merged.keys() == reference.keys()
    for name in merged:  # the same training under DDP, merged on one full copy
        torch.testing.assert_close(merged[name], reference[name], atol=1e-5, rtol=0, msg=name)
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "zero3" / "final").generate(
        torch.tensor([[1, 2, 3]]), max_new_tokens=3
    )
    adapter = load_file(tmp_path / "adapter" / "final" / "adapter_model.safetensors")
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert len(lora_b) == 4 * 7 and all(t.numel() and t.abs().sum() > 0 for t in lora_b)  # every layer's, trained
    assert all(t.numel() for t in adapter.values())  # no empty shard saved as a weight


def test_deepspeed_is_imported_only_when_a_preset_uses_it():
    code = (
        "import sys, sft_chat, dpo, grpo, synth_data, common.training, common.checkpoint; "
        "print('deepspeed' in sys.modules)"
    )
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0 and result.stdout.strip().endswith("False"), result.stderr[-2000:]
