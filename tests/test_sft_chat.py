"""sft_chat.py end to end, as a user runs it: subprocesses, outputs on disk, exit codes."""

import ast
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.conftest import (
    ENV,
    FAST,
    ROOT,
    read_jsonl,
    run,
    run_script,
    trained_spans,
    weights,
    write_jsonl,
)

SCRIPT = "sft_chat.py"
CALL = "set_timer(minutes=5)"
TRICKY = [
    {
        "messages": [
            {"role": "system", "content": "Answer with one call."},
            {"role": "user", "content": "Set a timer for 5 minutes"},
            {"role": "assistant", "content": CALL},
            {"role": "user", "content": f"Say {CALL} again"},  # assistant text inside a user turn
            {"role": "assistant", "content": CALL},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Play Adele"},
            {"role": "assistant", "content": 'play_music(artist="Adele")'},
        ]
    },
]

# A program that knows nothing of this project: plain transformers, the saved chat template and
# generation_config. It prints exact match on the held-out file and whether every answer ended on eos.
PLAIN_EVAL = textwrap.dedent("""
    import json, sys, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    assert not any("common" == m or m.startswith("common.") for m in sys.modules)
    final, data = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    rows = [json.loads(line) for line in open(data)]
    tok.padding_side = "left"
    hits = stopped = 0
    for i in range(0, len(rows), 50):
        batch = rows[i:i + 50]
        enc = tok.apply_chat_template([r["messages"][:-1] for r in batch], add_generation_prompt=True,
                                      padding=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=60, do_sample=False)
        for row, seq in zip(batch, out[:, enc["input_ids"].shape[1]:].tolist()):
            stopped += any(t in eos for t in seq)
            answer = tok.decode(seq, skip_special_tokens=True).strip()
            hits += answer == row["messages"][-1]["content"].strip()
    print(json.dumps({"exact_match": hits / len(rows), "stopped": stopped / len(rows), "eos": sorted(eos),
                      "eot": tok.convert_tokens_to_ids("<eot>")}))
""")


def plain_eval(final, data):
    """Run PLAIN_EVAL outside the repository, without the project on the path."""
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_EVAL, str(final), os.path.join(ROOT, data)],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.e2e
@pytest.mark.parametrize("packing", [False, True])
def test_dry_run_preview_labels_exactly_assistant_content_and_end_of_turn(tmp_path, packing):
    from transformers import AutoTokenizer

    data = write_jsonl(tmp_path / "tricky.jsonl", TRICKY)
    out = tmp_path / "out"
    result = run_script(
        SCRIPT,
        "dry_run=true",
        f"data={data}",
        f"output_dir={out}",
        "eval_fraction=0",
        f"packing={str(packing).lower()}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[[set_timer(minutes=5)<eot>]]" in result.stdout
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    preview = read_jsonl(out / "data_preview.jsonl")
    spans = [span for row in preview for span in trained_spans(tokenizer, row)]
    assert sorted(spans) == sorted([CALL + "<eot>", CALL + "<eot>", 'play_music(artist="Adele")<eot>'])
    if packing:
        assert len(preview) == 1 and preview[0]["position_ids"].count(0) == 2
    else:
        assert len(preview) == 2 and "position_ids" not in preview[0]
    assert json.loads((out / "data_report.json").read_text())["train_rows"] == 2
    assert not (out / "final").exists() and not list(out.glob("checkpoint-*"))


@pytest.mark.e2e
def test_short_run_writes_every_output_and_logs_to_wandb_offline(tmp_path):
    out = tmp_path / "out"
    result = run_script(
        SCRIPT,
        *FAST,
        f"output_dir={out}",
        "report_to=wandb",
        "test_data=",
        env={"WANDB_PROJECT": "tests", "WANDB_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed: NO world_size=1" in result.stdout
    for name in (
        "params.yaml",
        "data_report.json",
        "metrics.jsonl",
        "loss.png",
        "checkpoint-3",
        "checkpoint-6",
        "final/model.safetensors",
        "final/tokenizer.json",
        "final/generation_config.json",
    ):
        assert (out / name).exists(), name
    assert not (out / "final.tmp").exists()
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics if "loss" in m] == [2, 4, 6]
    assert [m["step"] for m in metrics if "eval_loss" in m] == [3, 6]
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    generation = json.loads((out / "final/generation_config.json").read_text())
    tokenizer_config = json.loads((out / "final/tokenizer_config.json").read_text())
    assert (
        "{% generation %}" in tokenizer_config.get("chat_template", "") or (out / "final/chat_template.jinja").exists()
    )
    checked = plain_eval(out / "final", "data/examples/chat_test.jsonl")
    assert checked["eot"] in generation["eos_token_id"] and checked["eot"] in checked["eos"]


@pytest.mark.xdist_group("default_sft_chat")  # the worker that makes the shared run uses it
@pytest.mark.e2e
@pytest.mark.slow
def test_default_run_reaches_90_percent_and_plain_transformers_agrees(default_sft_chat_run):
    """The README's main command on the embedded default, then the model checked by plain transformers."""
    final, result, elapsed = default_sft_chat_run
    assert result.returncode == 0, result.stderr[-3000:]
    # accelerate launch sets OMP_NUM_THREADS=1 on CPU; the script takes every core it may use back
    assert f"threads={len(os.sched_getaffinity(0))}" in result.stdout
    accuracy = float(re.search(r"after: held-out exact match ([\d.]+)%", result.stdout).group(1)) / 100
    assert accuracy >= 0.90, result.stdout[-2000:]
    checked = plain_eval(final, "data/examples/chat_test.jsonl")
    assert checked["exact_match"] >= 0.90 and abs(checked["exact_match"] - accuracy) < 1e-9
    assert checked["stopped"] == 1.0  # every answer ended on an end-of-turn token by itself
    assert elapsed < 400, f"default run took {elapsed:.0f}s"  # a hang guard; on one core it takes ~240 s


@pytest.mark.e2e
def test_finished_output_dir_is_not_overwritten_unless_asked(tmp_path):
    out = tmp_path / "out"
    (out / "final").mkdir(parents=True)
    (out / "final" / "marker").write_text("keep")
    result = run_script(SCRIPT, f"output_dir={out}", "dry_run=true")
    assert result.returncode == 2 and "holds a finished run" in result.stderr
    assert (out / "final" / "marker").read_text() == "keep"
    result = run_script(SCRIPT, f"output_dir={out}", "dry_run=true", "overwrite=true")
    assert result.returncode == 0 and not (out / "final").exists()


@pytest.mark.e2e
def test_two_cpu_processes_with_the_shipped_preset(tmp_path):
    out = tmp_path / "ddp"
    result = run(
        [
            "accelerate",
            "launch",
            "--config_file",
            "configs/accelerate/ddp.yaml",
            SCRIPT,
            *FAST,
            f"output_dir={out}",
            "test_data=",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world_size=2" in result.stdout and "world_size=1" not in result.stdout
    assert f"threads={max(1, len(os.sched_getaffinity(0)) // 2)}" in result.stdout  # each process its share
    assert (out / "final" / "model.safetensors").exists()


@pytest.mark.e2e
def test_lora_with_packing_trains_new_token_rows_and_saves_a_merged_model(tmp_path):
    out = tmp_path / "lora"
    result = run_script(
        SCRIPT,
        *FAST,
        f"output_dir={out}",
        "lora.enabled=true",
        "lora.r=4",
        "test_data=",
        "learning_rate=1e-2",
        "packing=true",
        "max_length=128",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = weights(out / "final")
    assert not any("lora" in name for name in saved)  # merged into plain weights
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    eot = tokenizer.convert_tokens_to_ids("<eot>")
    user = tokenizer.convert_tokens_to_ids("<user>")
    embed = saved["model.embed_tokens.weight"]
    # New rows start identical (the mean); trained rows moved apart, so the new tokens were trained.
    assert not torch.allclose(embed[eot], embed[user])
    if "lm_head.weight" in saved:  # the built-in model ties its output layer to the embedding
        assert not torch.allclose(saved["lm_head.weight"][eot], saved["lm_head.weight"][user])
    assert plain_eval(out / "final", "data/examples/chat_test.jsonl")["eot"] == eot


REASONING_CHATS = [
    {
        "messages": [
            {"role": "system", "content": "Answer with one call."},
            {"role": "user", "content": f"Set a timer for {m} minutes"},
            {
                "role": "assistant",
                "content": f"set_timer(minutes={m})",
                "reasoning_content": f"{m} minutes is a timer.",
            },
            {"role": "user", "content": "And play Adele"},
            {
                "role": "assistant",
                "content": f'<think>\nA music request.\n</think>\n\nplay_music(artist="Adele", n={m})',
            },
        ]
    }
    for m in range(1, 17)
]


@pytest.mark.slow
@pytest.mark.e2e
def test_native_qwen3_trains_with_the_training_template_and_final_keeps_it(tmp_path):
    """A Qwen3 model (the real tokenizer and template, tiny random weights): reasoning from both fields is trained
    on every turn, final/ holds TRL's Qwen3 training template and stops at <|im_end|>, and plain transformers
    renders a conversation with it exactly as it was trained."""
    from tests.real_tokenizers import TRL_TEMPLATES, tiny_model_folder

    model, out = tiny_model_folder("qwen3", tmp_path), tmp_path / "out"
    data = write_jsonl(tmp_path / "chats.jsonl", REASONING_CHATS)
    result = run_script(
        SCRIPT,
        f"model={model}",
        "chat_format=native",
        f"data={data}",
        "test_data=",
        "eval_fraction=0",
        f"output_dir={out}",
        *FAST,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "chat template: TRL's qwen3 training template (the model's chat template renders as qwen3" in result.stdout
    with open(out / "data_report.json") as f:
        report = json.load(f)
    assert report["assistant_turns_with_reasoning_trained"] == 32
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    assert tokenizer.chat_template == (TRL_TEMPLATES / "qwen3_training.jinja").read_text(encoding="utf-8")
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in final.generation_config.eos_token_id
    from tests.conftest import run_in_process

    result = run_in_process(
        SCRIPT,
        f"model={model}",
        "chat_format=native",
        f"data={data}",
        "test_data=",
        "eval_fraction=0",
        "dry_run=true",
        f"output_dir={tmp_path / 'dry'}",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "<|im_start|>assistant\n[[<think>\n" in result.stdout
        and " minutes is a timer.\n</think>\n\nset_timer(" in result.stdout
    )
    history = REASONING_CHATS[0]["messages"]
    prompt = tokenizer.apply_chat_template(history[:4], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith(
        "<think>\n1 minutes is a timer.\n</think>\n\nset_timer(minutes=1)<|im_end|>\n"
        "<|im_start|>user\nAnd play Adele<|im_end|>\n<|im_start|>assistant\n"
    )
    batch = tokenizer(prompt, return_tensors="pt")
    assert final.generate(**batch, max_new_tokens=3, do_sample=False).shape[1] > batch["input_ids"].shape[1]


def test_native_template_errors_stop_before_the_model_loads(tmp_path):
    """No weights in the model folder: each case must stop on the template, in one line, before loading them."""
    from tests.conftest import assert_one_line_exit_2, run_in_process
    from tests.real_tokenizers import folder

    qwen3 = folder("qwen3", tmp_path)
    with open(os.path.join(qwen3, "tokenizer_config.json")) as f:
        template = json.load(f)["chat_template"].replace("'<|im_start|>system\\n'", "'<|im_start|>system\\n# '")
    (tmp_path / "edited.jinja").write_text(template)
    chats = write_jsonl(tmp_path / "chats.jsonl", TRICKY)
    result = run_in_process(
        SCRIPT,
        f"model={qwen3}",
        "chat_format=native",
        f"chat_template={tmp_path / 'edited.jinja'}",
        f"data={chats}",
        "test_data=",
        f"output_dir={tmp_path / 'a'}",
    )
    assert_one_line_exit_2(result, "not prefix-stable", tmp_path / "a")
    assert "chat_format=special_tokens" in result.stderr

    gemma = folder("trl-gemma", tmp_path)  # rejects system turns (folded) and non-alternating turns (refused)
    bad = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"},
        ]
    }
    chats = write_jsonl(tmp_path / "gemma.jsonl", [*TRICKY, bad])
    result = run_in_process(
        SCRIPT,
        f"model={gemma}",
        "chat_format=native",
        f"data={chats}",
        "test_data=",
        "eval_fraction=0",
        f"output_dir={tmp_path / 'b'}",
    )
    assert_one_line_exit_2(
        result, f"{chats}:3: the chat template rejects this row: Conversation roles must alternate", tmp_path / "b"
    )
    result = run_in_process(
        SCRIPT,
        f"model={gemma}",
        "chat_format=native",
        f"data={chats}",
        "test_data=",
        "eval_fraction=0",
        "on_bad_rows=skip",
        "dry_run=true",
        f"output_dir={tmp_path / 'c'}",
    )
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "c" / "data_report.json") as f:
        report = json.load(f)
    assert report["system_turns_folded_into_user"] == 1 and report["train_rows"] == 2
    assert report["dropped"] == {
        "bad row: the chat template rejects this row: Conversation roles must alternate "
        "user/assistant/user/assistant/...": 1
    }


# Plain transformers on a tool-calling final/: the held-out rows' tools and prompts through the saved chat
# template, generation, and the saved response parser; calls compared as JSON values.
PLAIN_TOOLS_EVAL = textwrap.dedent("""
    import json, sys, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    final, data = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    hits = rows = 0
    for line in open(data):
        row = json.loads(line)
        enc = tok.apply_chat_template(row["messages"][:-1], tools=row["tools"], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=128, do_sample=False)
        try:
            message = tok.parse_response(out[0, enc["input_ids"].shape[1]:], prefix="")
        except ValueError:
            message = {}
        calls = [(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls", [])]
        want = [(c["function"]["name"], c["function"]["arguments"]) for c in row["messages"][-1]["tool_calls"]]
        hits, rows = hits + (calls == want), rows + 1
    assert not any("common" == m or m.startswith("common.") for m in sys.modules)
    print(json.dumps({"exact_match": hits / rows}))
""")


def readme_inference_snippet(final) -> str:
    """The README's function-calling inference code, pointed at final."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    code = re.search(r"<!-- tool inference -->\n```python\n(.*?)```", text, re.S).group(1)
    assert 'final = "outputs/sft_chat/final"' in code
    return code.replace('"outputs/sft_chat/final"', repr(str(final)))


@pytest.mark.e2e
@pytest.mark.slow
def test_tool_form_of_the_example_reaches_98_percent_and_plain_transformers_agrees(tmp_path):
    """The README's function-calling command: held-out calls scored by common.evaluate (per function too), by
    plain transformers with parse_response, and the README's inference lines run as written."""
    out = tmp_path / "out"
    result = run(
        [
            "accelerate",
            "launch",
            "sft_chat.py",
            "data=[data/examples/tools_train.jsonl]",
            "test_data=data/examples/tools_test.jsonl",
            f"output_dir={out}",
            "progress_bar=false",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = float(re.search(r"after: held-out exact match ([\d.]+)%", result.stdout).group(1)) / 100
    assert accuracy >= 0.98, result.stdout[-3000:]
    after = result.stdout[result.stdout.index("\nsaved ") :]  # the evaluation after training (not the one before)
    per_function = re.findall(r"^  (\w+): ([\d.]+)% of (\d+)$", after, re.M)
    assert sorted(name for name, _, _ in per_function) == [
        "add_event",
        "convert_currency",
        "get_weather",
        "play_music",
        "send_message",
        "set_timer",
    ]
    assert sum(int(n) for _, _, n in per_function) == 200
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    plain = subprocess.run(
        [
            sys.executable,
            "-c",
            PLAIN_TOOLS_EVAL,
            str(out / "final"),
            os.path.join(ROOT, "data/examples/tools_test.jsonl"),
        ],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert abs(json.loads(plain.stdout.strip().splitlines()[-1])["exact_match"] - accuracy) < 1e-9
    snippet = readme_inference_snippet(out / "final") + (
        "\nimport sys\nassert not any(m == 'common' or m.startswith('common.') for m in sys.modules)\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", snippet], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    first = read_jsonl(os.path.join(ROOT, "data/examples/tools_test.jsonl"))[0]["messages"][-1]["tool_calls"][0][
        "function"
    ]
    message = ast.literal_eval(shown.stdout.strip().splitlines()[-1])
    assert message["tool_calls"][0]["function"] == {"name": first["name"], "arguments": first["arguments"]}
