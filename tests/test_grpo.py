"""grpo.py end to end: what rewards receive, that they drive learning, equal groups, resume, LoRA, two processes,
bad input, real chat templates."""

import re
import signal
import subprocess
import time

import pytest
import torch

from tests.conftest import (
    ENV,
    ROOT,
    assert_one_line_exit_2,
    read_jsonl,
    run,
    run_in_process,
    run_script,
    weights,
    write_jsonl,
)
from tests.real_tokenizers import shared_folder

SCRIPT = "grpo.py"
# A few small steps: 4 prompts of 4 completions each, short completions.
FAST = [
    "max_steps=2",
    "logging_steps=1",
    "save_steps=2",
    "progress_bar=false",
    "batch_size=16",
    "num_generations=4",
    "max_completion_length=16",
    "test_data=",
    "clean.enabled=false",
]
REWARDS = """
import json, os

def record(row, completion):
    with open(os.environ["REWARD_LOG"], "a") as f:
        f.write(json.dumps({"row": row, "completion": completion}) + "\\n")
    return float(len(completion) % 3)

def constant(row, completion):
    return True

def inverted(row, completion):
    from data.examples.verify import verify
    return not verify(row, completion)

def says_yes(row, completion):
    return "yes"

def breaks(row, completion):
    if "Paris" in json.dumps(row):
        raise KeyError("city")
    return 1.0
"""


@pytest.fixture()
def rewards(tmp_path):
    path = tmp_path / "rewards.py"
    path.write_text(REWARDS)
    return str(path)


@pytest.fixture()
def prompts(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", read_jsonl(f"{ROOT}/data/examples/chat_train.jsonl")[:16])


@pytest.mark.e2e
def test_rewards_receive_the_source_row_and_the_bare_completion(tmp_path, sft_model, rewards, prompts):
    out, log = tmp_path / "out", tmp_path / "calls.jsonl"
    result = run_script(
        SCRIPT,
        *FAST,
        f"model={sft_model}",
        f"data={prompts}",
        f"rewards=[{rewards}:record]",
        f"output_dir={out}",
        env={"REWARD_LOG": str(log)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    calls, source = read_jsonl(log), read_jsonl(prompts)
    assert len(calls) == 2 * 16  # every completion of both steps, once
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    special = [t for t in tokenizer.all_special_tokens + list(tokenizer.get_added_vocab()) if t]
    for i in range(0, len(calls), 4):  # a group: one prompt's four completions, each with the row as read
        group = calls[i : i + 4]
        assert all(c["row"] == group[0]["row"] for c in group) and group[0]["row"] in source
        prompt = group[0]["row"]["messages"][-2]["content"]
        for call in group:
            assert isinstance(call["completion"], str) and prompt not in call["completion"]
            assert not any(token in call["completion"] for token in special), call["completion"]
    metrics = [m for m in read_jsonl(out / "metrics.jsonl") if "reward" in m]
    assert [m["step"] for m in metrics] == [1, 2]
    for key in ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "clip_ratio/region_mean"):
        assert all(key in m for m in metrics), key
    assert (out / "loss.png").exists()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "final").generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3)


@pytest.mark.e2e
def test_a_row_with_tools_gives_the_reward_an_assistant_message(tmp_path, sft_model, rewards):
    data = write_jsonl(tmp_path / "tools.jsonl", read_jsonl(f"{ROOT}/data/examples/tools_test.jsonl")[:4])
    log = tmp_path / "calls.jsonl"
    result = run_script(
        SCRIPT,
        *FAST,
        "max_steps=1",
        f"model={sft_model}",
        f"data={data}",
        f"rewards=[{rewards}:record]",
        f"output_dir={tmp_path / 'out'}",
        env={"REWARD_LOG": str(log)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    calls = read_jsonl(log)
    assert calls and all(c["completion"]["role"] == "assistant" and c["row"]["tools"] for c in calls)


@pytest.mark.e2e
def test_equal_rewards_in_every_group_leave_the_weights_unchanged(tmp_path, sft_model, rewards, prompts):
    out = tmp_path / "out"
    result = run_script(
        SCRIPT,
        *FAST,
        "max_steps=3",
        "save_steps=10",
        f"model={sft_model}",
        f"data={prompts}",
        f"rewards=[{rewards}:constant]",
        f"output_dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [m for m in read_jsonl(out / "metrics.jsonl") if "reward" in m]
    assert all(m["frac_reward_zero_std"] == 1 and m["reward_std"] == 0 and m["grad_norm"] == 0 for m in metrics), (
        metrics
    )
    before, after = weights(sft_model), weights(out / "final")
    for name in after:
        assert torch.equal(before[name], after[name]), name


@pytest.mark.e2e
def test_an_equal_group_adds_nothing_to_a_mixed_groups_gradient(sft_model):
    """Two groups in one batch, one with rewards all equal: the policy gradient is the mixed group's alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    model = AutoModelForCausalLM.from_pretrained(sft_model, dtype=torch.float32)
    args = GRPOConfig(
        output_dir="/tmp/unused",
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=8,
        num_generations=4,
        report_to=[],
        beta=0.0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=args,
        train_dataset=__import__("datasets").Dataset.from_dict({"prompt": ["a"]}),
        processing_class=tokenizer,
    )
    trainer.current_gradient_accumulation_steps = 1
    prompt = tokenizer("<user>Play Adele<eot><assistant>", add_special_tokens=False)["input_ids"]
    completions = [
        tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in [
            'play_music(artist="Adele")<eot>',
            'play_music(artist="Sade")<eot>',
            "x<eot>",
            "set_timer(minutes=5)<eot>",
        ]
    ]
    width = max(map(len, completions))

    def gradient(groups):
        rows = [(c, a) for advantages in groups for c, a in zip(completions, advantages, strict=False)]
        inputs = {
            "prompt_ids": torch.tensor([prompt] * len(rows)),
            "prompt_mask": torch.ones(len(rows), len(prompt), dtype=torch.long),
            "completion_ids": torch.tensor([c + [tokenizer.pad_token_id] * (width - len(c)) for c, _ in rows]),
            "completion_mask": torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c, _ in rows]),
            "advantages": torch.tensor([a for _, a in rows]),
            "num_items_in_batch": torch.tensor(sum(len(c) for c, a in rows if a != 0)),
        }
        model.zero_grad()
        trainer.compute_loss(model, inputs).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    from trl.trainer.utils import nanstd

    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    mixed = ((rewards - rewards.mean()) / (nanstd(rewards) + 1e-4)).tolist()
    equal = [0.0] * 4  # the advantages GRPO gives a group whose rewards are all equal
    alone, together = gradient([mixed]), gradient([mixed, equal])
    assert alone.abs().sum() > 0
    torch.testing.assert_close(together, alone, atol=1e-7, rtol=1e-5)


@pytest.mark.xdist_group("default_sft_chat")  # the worker that makes the shared run uses it
@pytest.mark.e2e
def test_rewards_drive_learning_an_inverted_reward_unlearns(tmp_path, default_sft_chat):
    """The same run paid for right answers keeps the default model's accuracy; paid for wrong ones, it loses it."""
    reward_file = tmp_path / "rewards.py"
    reward_file.write_text(REWARDS)
    accuracy = {}
    for name, reward in (("right", "data/examples/verify.py:verify"), ("inverted", f"{reward_file}:inverted")):
        result = run_script(
            SCRIPT,
            f"model={default_sft_chat}",
            f"rewards=[{reward}]",
            "max_steps=30",
            "learning_rate=1e-3",
            "progress_bar=false",
            f"output_dir={tmp_path / name}",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        before, after = [
            float(line.split("exact match ")[1].split("%")[0])
            for line in result.stdout.splitlines()
            if "held-out exact match" in line
        ]
        accuracy[name] = after
    assert accuracy["inverted"] < accuracy["right"] - 30, accuracy


@pytest.mark.e2e
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, sft_model, rewards, prompts):
    """Generation is seeded: a run killed after its checkpoint and resumed samples the same completions, so it ends
    with the weights of a run never interrupted."""
    args = [*FAST, "max_steps=6", f"model={sft_model}", f"data={prompts}", f"rewards=[{rewards}:record]"]
    env = {**ENV, "REWARD_LOG": str(tmp_path / "calls.jsonl")}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    result = run_script(SCRIPT, *args, f"output_dir={straight}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    proc = subprocess.Popen(
        ["python", SCRIPT, *args, f"output_dir={killed}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while not (killed / "checkpoint-4" / "trainer_state.json").exists():
        assert proc.poll() is None, "the run ended before its checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    resumed = run_script(SCRIPT, *args, f"output_dir={killed}", "resume=true", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b, start = weights(straight / "final"), weights(killed / "final"), weights(sft_model)
    assert any(not torch.equal(a[name], start[name]) for name in a)  # it trained
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.e2e
def test_lora_merges_and_beta_uses_the_adapter_free_model_as_reference(tmp_path, sft_model, rewards, prompts):
    out = tmp_path / "out"
    result = run_script(
        SCRIPT,
        *FAST,
        f"model={sft_model}",
        f"data={prompts}",
        "lora.enabled=true",
        "lora.r=4",
        "beta=0.04",
        "learning_rate=1e-2",
        f"rewards=[{rewards}:record]",
        f"output_dir={out}",
        env={"REWARD_LOG": str(tmp_path / "calls.jsonl")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert all("kl" in m for m in read_jsonl(out / "metrics.jsonl") if "reward" in m)
    assert not (out / "final" / "adapter_config.json").exists()
    merged, base = weights(out / "final"), weights(sft_model)
    assert merged.keys() == base.keys() and any(not torch.equal(merged[k], base[k]) for k in base)


@pytest.mark.e2e
def test_two_cpu_processes_train_and_save_a_loadable_model(tmp_path, sft_model, rewards, prompts):
    out, log = tmp_path / "out", tmp_path / "calls.jsonl"
    result = run(
        [
            "accelerate",
            "launch",
            "--config_file",
            "configs/accelerate/ddp.yaml",
            "--num_processes",
            "2",
            SCRIPT,
            *FAST,
            f"model={sft_model}",
            f"data={prompts}",
            f"rewards=[{rewards}:record]",
            f"output_dir={out}",
        ],
        env={"REWARD_LOG": str(log)},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "world_size=2" in result.stdout
    assert len(read_jsonl(log)) == 2 * 2 * 16  # each rank scores its own 16 completions a step
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "final").generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "override, message",
    [
        ("rewards=[missing.py:f]", "rewards: file not found: missing.py"),
        ("rewards=[data/examples/verify.py:nope]", "rewards: data/examples/verify.py has no function nope"),
        ("rewards=[no_such_module:f]", "rewards: cannot import no_such_module"),
        ("rewards=[]", "rewards is empty"),
        ("reward_weights=[1.0,2.0]", "reward_weights has 2 weights for 1 rewards"),
        ("loss_type=sigmoid", "loss_type='sigmoid' is not one of"),
        ("beta=-0.1", "beta=-0.1 must be >= 0"),
        ("num_generations=1", "num_generations=1 must be >= 2"),
        ("batch_size=6", "GRPO settings"),
        ("max_completion_length=600", "leaves no room for a prompt"),
        ("batch_size=16384", "1324 prompts, fewer than the 2048 that one step takes"),
        ("num_generation=4", "unknown PARAMS key 'num_generation'"),
    ],
)
def test_bad_settings_stop_before_training_with_one_line(tmp_path, sft_model, override, message):
    out = tmp_path / "out"
    result = run_in_process(SCRIPT, f"model={sft_model}", override, f"output_dir={out}", "progress_bar=false")
    assert_one_line_exit_2(result, message, out)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "reward, message",
    [
        ("says_yes", "returned str 'yes' for row "),
        ("breaks", "raised KeyError: 'city' (row "),
    ],
)
def test_a_bad_reward_stops_with_one_line_naming_it_and_the_row(tmp_path, sft_model, rewards, reward, message):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Weather in Paris?", "city": "Paris"}] * 4)
    out = tmp_path / "out"
    result = run_script(
        SCRIPT, *FAST, f"model={sft_model}", f"data={data}", f"rewards=[{rewards}:{reward}]", f"output_dir={out}"
    )
    assert_one_line_exit_2(result, message, out)
    assert f"reward {rewards}:{reward} " in result.stderr and re.search(
        rf"row {re.escape(data)}:[1-4]\b", result.stderr
    )


@pytest.mark.parametrize("family", ["qwen3", "llama3"])
def test_prompts_follow_a_real_template_with_each_rows_tools(tmp_path, family):
    """The prompts as rendered for training are the model's own template with the row's tools and a generation
    prompt; {"prompt", ...} rows keep their extra fields for the rewards."""
    from transformers import AutoTokenizer

    folder = shared_folder(family, str(tmp_path / "tok"))
    tools_row = read_jsonl(f"{ROOT}/data/examples/tools_test.jsonl")[0]
    rows = [tools_row, {"prompt": "Play Adele", "answer": 'play_music(artist="Adele")'}]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    result = run_in_process(
        SCRIPT,
        f"model={folder}",
        f"data={data}",
        "dry_run=true",
        f"output_dir={tmp_path / 'out'}",
        "progress_bar=false",
        "clean.enabled=false",
        "max_length=2048",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    preview = read_jsonl(tmp_path / "out" / "data_preview.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    expected = [
        tokenizer.apply_chat_template(
            tools_row["messages"][:-1], tools=tools_row["tools"], add_generation_prompt=True, tokenize=False
        ),
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "Play Adele"}], add_generation_prompt=True, tokenize=False
        ),
    ]
    assert [p["prompt"] for p in preview] == expected
    assert [p["row"] for p in preview] == rows
    assert (
        preview[0]["prompt_ids"]
        == tokenizer.apply_chat_template(
            tools_row["messages"][:-1],
            tools=tools_row["tools"],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )["input_ids"]
    )


def test_a_missing_model_folder_stops_with_one_line(tmp_path):
    out = tmp_path / "out"
    assert_one_line_exit_2(
        run_in_process(SCRIPT, f"model={tmp_path / 'none'}/final", f"output_dir={out}"), "model folder not found", out
    )


@pytest.mark.e2e
@pytest.mark.chain
def test_the_default_chain_raises_held_out_exact_match(tmp_path):
    """The README's chain, as it is: the warm-up recipe, then grpo.py with no edits (on demand: -m chain). Measured:
    69.5% -> 78.5%; the project's goal of +20 points is not reached yet (BENCHMARKS.md), so this holds the gain the
    README states."""
    warmup = run(
        [
            "accelerate",
            "launch",
            "sft_chat.py",
            "--config",
            "configs/recipes/grpo-warmup.yaml",
            f"output_dir={tmp_path / 'warmup'}",
            "progress_bar=false",
        ]
    )
    assert warmup.returncode == 0, warmup.stderr[-3000:]
    start = time.time()
    result = run(
        [
            "accelerate",
            "launch",
            "grpo.py",
            f"model={tmp_path / 'warmup' / 'final'}",
            f"output_dir={tmp_path / 'grpo'}",
            "progress_bar=false",
        ],
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    before, after = [
        float(line.split("exact match ")[1].split("%")[0])
        for line in result.stdout.splitlines()
        if "held-out exact match" in line
    ]
    assert 30 <= before <= 75 and after >= before + 8 and time.time() - start < 15 * 60, (before, after)
