"""sft_completion.py end to end, as a user runs it: subprocesses, outputs on disk, exit codes."""

import json
import os
import re
import subprocess
import sys
import textwrap
import time

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

pytestmark = pytest.mark.e2e  # every test here runs a script end to end

SCRIPT = "sft_completion.py"
TEMPLATE = "Request: {prompt}\nCall: "
EOS = "<|endoftext|>"
PAIRS = [
    {"prompt": "Play Adele", "completion": 'play_music(artist="Adele")'},
    {"prompt": "Say set_timer(minutes=5)", "completion": "set_timer(minutes=5)"},  # the answer inside the prompt
]
TEXTS = [{"text": "Timers count down in minutes."}, {"text": "play_music starts a song."}]

# Knows nothing of this project: plain transformers, the formatted prompt, the saved generation_config.
PLAIN_EVAL = textwrap.dedent("""
    import json, sys, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    assert not any("common" == m or m.startswith("common.") for m in sys.modules)
    final, data, template = sys.argv[1], sys.argv[2], sys.argv[3]
    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    rows = [json.loads(line) for line in open(data)][:int(sys.argv[4])]
    tok.padding_side = "left"
    hits = stopped = 0
    for i in range(0, len(rows), 50):
        batch = rows[i:i + 50]
        enc = tok([template.format(prompt=r["prompt"]) for r in batch], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=60, do_sample=False)
        for row, seq in zip(batch, out[:, enc["input_ids"].shape[1]:].tolist()):
            stopped += any(t in eos for t in seq)
            hits += tok.decode(seq, skip_special_tokens=True).strip() == row["completion"].strip()
    print(json.dumps({"exact_match": hits / len(rows), "stopped": stopped / len(rows), "eos": sorted(eos),
                      "tokenizer_eos": tok.eos_token_id}))
""")


def plain_eval(final, data, template=TEMPLATE, rows=200):
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_EVAL, str(final), os.path.join(ROOT, data), template, str(rows)],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def documents(row):
    """A preview row split into its documents at each position_ids reset (the whole row when not packed)."""
    positions = row.get("position_ids", list(range(len(row["input_ids"]))))
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    return [{k: row[k][a:b] for k in ("input_ids", "labels")} for a, b in zip(starts, starts[1:], strict=False)]


@pytest.mark.parametrize("packing", [False, True])
def test_preview_labels_completion_and_eos_or_every_text_token(tmp_path, packing):
    from transformers import AutoTokenizer

    from common.models import load_model

    data = write_jsonl(tmp_path / "mixed.jsonl", PAIRS + TEXTS)
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
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    preview = read_jsonl(out / "data_preview.jsonl")
    assert len(preview) == (1 if packing else 4)
    docs = [doc for row in preview for doc in documents(row)]
    assert len(docs) == 4
    texts = {t["text"] + EOS for t in TEXTS}
    completions = {p["completion"] + EOS for p in PAIRS}
    for doc in docs:
        decoded = tokenizer.decode(doc["input_ids"])
        if decoded in texts:  # every token is a target; packing masks a document's first label (nothing precedes it)
            first = -100 if packing else doc["input_ids"][0]
            assert doc["labels"] == [first] + doc["input_ids"][1:]
            texts.remove(decoded)
        else:
            [span] = trained_spans(tokenizer, doc)
            assert span in completions and decoded.startswith("Request: ") and decoded.endswith("\nCall: " + span)
            completions.remove(span)
    assert not texts and not completions

    if packing:  # each packed document gets the same logits as when it is alone: no attention across them
        model = load_model("builtin:tiny").eval()  # as the trainer gets it (no KV cache)
        row = preview[0]
        with torch.no_grad():
            packed = model(
                input_ids=torch.tensor([row["input_ids"]]), position_ids=torch.tensor([row["position_ids"]])
            ).logits[0]
            start = 0
            for doc in docs:
                alone = model(input_ids=torch.tensor([doc["input_ids"]])).logits[0]
                torch.testing.assert_close(packed[start : start + len(alone)], alone, atol=1e-5, rtol=1e-5)
                start += len(alone)


def test_short_lora_run_writes_every_output_and_logs_to_wandb_offline(tmp_path):
    out = tmp_path / "out"
    result = run_script(
        SCRIPT,
        *FAST,
        f"output_dir={out}",
        "report_to=wandb",
        "test_data=",
        "lora.enabled=true",
        "lora.r=4",
        env={"WANDB_PROJECT": "tests", "WANDB_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
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
        "final/prompt_template.json",
    ):
        assert (out / name).exists(), name
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics if "loss" in m] == [2, 4, 6]
    assert [m["step"] for m in metrics if "eval_loss" in m] == [3, 6]  # eval_fraction held out of data
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert json.loads((out / "final/prompt_template.json").read_text()) == {"template": TEMPLATE}
    saved = weights(out / "final")
    assert not any("lora" in name for name in saved)  # merged
    assert saved["model.embed_tokens.weight"].shape[0] == 954  # the vocabulary is the base model's
    checked = plain_eval(out / "final", "data/examples/completion_test.jsonl", rows=8)
    assert checked["eos"] == [checked["tokenizer_eos"]]


@pytest.mark.slow
def test_default_run_reaches_90_percent_and_plain_transformers_agrees(tmp_path):
    """`accelerate launch sft_completion.py` on the embedded default, then the model checked by plain transformers."""
    out = tmp_path / "default"
    start = time.time()
    result = run(["accelerate", "launch", SCRIPT, f"output_dir={out}", "progress_bar=false"])
    elapsed = time.time() - start
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = float(re.search(r"after: held-out exact match ([\d.]+)%", result.stdout).group(1)) / 100
    assert accuracy >= 0.90, result.stdout[-2000:]
    cli = run([sys.executable, "-m", "common.evaluate", str(out / "final"), "data/examples/completion_test.jsonl"])
    assert f"exact match: {accuracy:.1%}" in cli.stdout, cli.stdout + cli.stderr[-2000:]
    checked = plain_eval(out / "final", "data/examples/completion_test.jsonl")
    assert checked["exact_match"] >= 0.90 and abs(checked["exact_match"] - accuracy) < 1e-9
    assert checked["stopped"] == 1.0  # every answer ended on EOS by itself
    assert elapsed < 300, f"default run took {elapsed:.0f}s"


def test_bad_rows_can_be_skipped_and_counted(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [*PAIRS, {"prompt": "p", "completion": ""}, {"text": 5}])
    out = tmp_path / "out"
    result = run_script(
        SCRIPT, "dry_run=true", f"data={data}", f"output_dir={out}", "eval_fraction=0", "on_bad_rows=skip"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "data_report.json").read_text())
    assert report["train_rows"] == 2
    assert report["dropped"] == {"bad row: 'completion' is empty": 1, "bad row: 'text' must be a string, got int": 1}
