"""A real pretrained model through the scripts: SmolLM2-135M-Instruct, made offline by ../shared/real_models/ once
and cached in ~/.cache (the folder `model=smollm2-135m` names). Its own lane: `python -m pytest -n 0 -m real_model`."""

import os
import re
import subprocess

import pytest

from common.params import NAMED_MODELS
from tests.conftest import ROOT, read_jsonl, run, run_in_process, write_jsonl
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


@pytest.mark.parametrize("form", ["chat", "tools"])
def test_sft_chat_recipe_lifts_held_out_accuracy_and_plain_transformers_agrees(form, smollm2, tmp_path):
    """A few dozen steps of a real-model recipe on 160 rows of the example task: the base model answers almost
    none of the held-out requests in the task's exact form, the trained one most.
    chat: its template adds a default system prompt to rows without one: training, our evaluation and plain
    transformers must all render it. tools: this project's chat tokens and a token per function, new to the model,
    start at the rows of their names' words and are learned apart (from one shared mean row the model never wrote
    the right function token: 0.0%)."""
    recipe = {"chat": "smollm2-135m-chat", "tools": "smollm2-135m-tools"}[form]
    test = write_jsonl(tmp_path / "test.jsonl", read_jsonl(f"{ROOT}/data/examples/{form}_test.jsonl")[:50])
    result = run(
        [
            "accelerate",
            "launch",
            "sft_chat.py",
            "--config",
            f"configs/recipes/{recipe}.yaml",
            f"output_dir={tmp_path / 'out'}",
            f"data_cache_dir={tmp_path / 'cache'}",
            f"data=[{{path: data/examples/{form}_train.jsonl, weight: 160}}]",
            f"test_data={test}",
            "progress_bar=false",
        ],
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    before, after = accuracy("before", result.stdout), accuracy("after", result.stdout)
    assert before <= 10.0 and after >= 80.0, result.stdout[-2000:]
    if form == "chat":  # plain transformers' check grades text answers
        checked = plain_eval(tmp_path / "out" / "final", test)
        assert abs(checked["exact_match"] * 100 - after) < 1e-6 and checked["stopped"] == 1.0


CHATS = [
    [{"role": "user", "content": "Play Adele"}, {"role": "assistant", "content": 'play_music(artist="Adele")'}],
    [
        {"role": "system", "content": "Answer with a single function call."},
        {"role": "user", "content": "Can you time 45 minutes?"},
        {"role": "assistant", "content": "set_timer(minutes=45)"},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! What can I do?"},
        {"role": "user", "content": "Message Hugo that love you"},
        {"role": "assistant", "content": 'send_message(contact="Hugo", text="love you")'},
    ],
]


def test_training_rows_pairs_and_prompts_render_as_the_template_does_at_inference(smollm2, tmp_path):
    """The template adds a default system prompt to a conversation without one: sft_chat's rows, dpo.py's pairs and
    grpo.py's prompts (their dry-run previews) hold exactly what apply_chat_template renders, and only assistant
    answers with their end-of-turn token train."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)

    def inference_prompt(messages):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    assert "You are a helpful AI assistant named SmolLM" in inference_prompt(CHATS[0][:1])
    common = [f"model={smollm2}", "clean.enabled=false", "dry_run=true", "progress_bar=false"]

    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": m} for m in CHATS])
    out = tmp_path / "sft"
    result = run_in_process("sft_chat.py", *common, "eval_fraction=0", "chat_format=native", "packing=false",
                            f"data={chats}", f"output_dir={out}", f"data_cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    previews = read_jsonl(out / "data_preview.jsonl")
    assert len(previews) == len(CHATS)
    for preview in previews:
        text = tokenizer.decode(preview["input_ids"])
        messages = next(m for m in CHATS if text.startswith(inference_prompt(m[:-1])))
        assert text == tokenizer.apply_chat_template(messages, tokenize=False)
        trained = [t for t, label in zip(preview["input_ids"], preview["labels"], strict=True) if label != -100]
        # the newline after <|im_end|> trains too, as in TRL's training variants of ChatML templates (Qwen2.5's)
        answers = [m["content"] + "<|im_end|>\n" for m in messages if m["role"] == "assistant"]
        assert tokenizer.decode(trained) == "".join(answers)

    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": m[:-1], "chosen": [m[-1]], "rejected": [{"role": "assistant", "content": "no"}]} for m in CHATS
    ])  # fmt: skip
    out = tmp_path / "dpo"
    result = run_in_process("dpo.py", *common, "eval_fraction=0", f"data={pairs}", "test_data=", "exact_match_data=",
                            f"output_dir={out}", f"data_cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for preview in read_jsonl(out / "data_preview.jsonl"):
        prompt = tokenizer.decode(preview["input_ids"][0][: preview["completion_mask"][0].index(1)])
        messages = next(m for m in CHATS if prompt == inference_prompt(m[:-1]))
        for ids, mask, answer in zip(preview["input_ids"], preview["completion_mask"], [messages[-1]["content"], "no"],
                                     strict=True):  # fmt: skip
            scored = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
            assert scored == answer + "<|im_end|>\n" and tokenizer.decode(ids).startswith(prompt)

    out = tmp_path / "grpo"
    result = run_in_process("grpo.py", *common, f"data={chats}", "test_data=", f"output_dir={out}",
                            f"data_cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for preview in read_jsonl(out / "data_preview.jsonl"):
        assert preview["prompt"] in [inference_prompt(m[:-1]) for m in CHATS]
        assert preview["prompt_ids"] == tokenizer(preview["prompt"], add_special_tokens=False)["input_ids"]
