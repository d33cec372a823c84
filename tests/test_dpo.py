"""dpo.py end to end: first-step loss, the reference cache, previews, bad input, resume, the default chain."""

import json
import math
import os
import re
import sys

import pytest

from tests.conftest import (
    ROOT,
    read_jsonl,
    run,
    run_in_process,
    run_script,
    trained_spans,
    write_jsonl,
)

SCRIPT = "dpo.py"
NO_EVAL = ["test_data=", "exact_match_data="]
PAIR = {"prompt": "Play Adele", "chosen": 'play_music(artist="Adele")', "rejected": 'play_music(artist="Sade")'}
TOOLS_TEST = f"{ROOT}/data/examples/tools_test.jsonl"
TOOLS = read_jsonl(TOOLS_TEST)[0]["tools"]


def call_turn(name, **arguments):
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}],
    }


def wrong_call_pairs(rows):
    """Tool rows as pairs: chosen the row's call, rejected that call with one argument value wrong."""
    pairs = []
    for row in rows:
        *prompt, answer = row["messages"]
        function = answer["tool_calls"][0]["function"]
        (key, value), *_ = function["arguments"].items()
        wrong = {**function["arguments"], key: value + 1 if isinstance(value, (int, float)) else value + "x"}
        pairs.append(
            {
                "tools": row["tools"],
                "prompt": prompt,
                "chosen": [answer],
                "rejected": [call_turn(function["name"], **wrong)],
            }
        )
    return pairs


def tool_pairs():
    """Tool-calling pairs: a hand-written call pair, a pair that answers the call's result with text, then the
    example's held-out rows as wrong-call pairs."""
    user = {"role": "user", "content": "What's the weather in Paris today?"}
    return [
        {
            "tools": TOOLS,
            "prompt": [user],
            "chosen": [call_turn("get_weather", city="Paris", day="today")],
            "rejected": [call_turn("get_weather", city="Paris", day="tomorrow")],
        },
        {
            "tools": TOOLS,
            "prompt": [
                user,
                call_turn("get_weather", city="Paris", day="today"),
                {"role": "tool", "content": '{"temperature_c": 21, "sky": "sunny"}'},
            ],
            "chosen": [{"role": "assistant", "content": "It will be 21 degrees and sunny."}],
            "rejected": [{"role": "assistant", "content": "It will be 12 degrees and rainy."}],
        },
        *wrong_call_pairs(read_jsonl(TOOLS_TEST)[:14]),
    ]


@pytest.fixture()
def pairs(tmp_path):
    with open(f"{ROOT}/data/examples/preference_train.jsonl") as f:
        return write_jsonl(tmp_path / "pairs.jsonl", [line.strip() for line in f][:48])


def first_loss(out):
    return next(m["loss"] for m in read_jsonl(out / "metrics.jsonl") if "loss" in m)


@pytest.mark.e2e
@pytest.mark.parametrize("reference", ["lora", "cached"])
def test_first_step_loss_is_ln2_and_rewards_are_logged(tmp_path, sft_model, pairs, reference):
    out = tmp_path / "out"
    extra = ["lora.enabled=true", "lora.r=4"] if reference == "lora" else [f"ref_cache_dir={tmp_path / 'cache'}"]
    result = run_script(
        SCRIPT,
        f"model={sft_model}",
        f"data={pairs}",
        f"output_dir={out}",
        *NO_EVAL,
        *extra,
        "max_steps=4",
        "logging_steps=1",
        "eval_steps=2",
        "batch_size=8",
        "progress_bar=false",
        env={"WANDB_PROJECT": "tests", "WANDB_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert first_loss(out) == pytest.approx(math.log(2), abs=1e-4)  # policy and reference are the same weights
    metrics = read_jsonl(out / "metrics.jsonl")
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert any(key in m for m in metrics), key
        assert any(f"eval_{key}" in m for m in metrics), f"eval_{key}"
    assert ("computed, cached in" in result.stdout) == (reference == "cached")
    # final/ is a plain folder: loads with transformers alone and stops at <eot>
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(out / "final"), AutoTokenizer.from_pretrained(out / "final")
    assert tokenizer.convert_tokens_to_ids("<eot>") in model.generation_config.eos_token_id
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Play Adele"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert model.generate(**prompt, max_new_tokens=4, do_sample=False).shape[1] > prompt["input_ids"].shape[1]


@pytest.mark.e2e
def test_rerun_reads_the_cache_and_never_builds_a_reference(tmp_path, sft_model, pairs, monkeypatch):
    import trl.trainer.dpo_trainer as dpo_trainer_module

    import dpo
    from common.params import apply_overrides

    cache = tmp_path / "cache"
    settings = [
        f"model={sft_model}",
        f"data={pairs}",
        *NO_EVAL,
        f"ref_cache_dir={cache}",
        "max_steps=2",
        "logging_steps=1",
        "eval_fraction=0",
        "batch_size=8",
        "progress_bar=false",
    ]
    first = run_script(SCRIPT, *settings, f"output_dir={tmp_path / 'first'}")
    assert first.returncode == 0 and "computed, cached in" in first.stdout, first.stderr[-3000:]
    assert len(list(cache.glob("*.pt"))) == 1

    class Counting(dpo_trainer_module.DPOTrainer):
        reference_forwards = 0

        def compute_ref_log_probs(self, model, inputs):
            Counting.reference_forwards += 1
            return super().compute_ref_log_probs(model, inputs)

    def no_reference_model(*args, **kwargs):
        raise AssertionError("a reference model was loaded")

    monkeypatch.setattr(dpo_trainer_module, "create_model_from_path", no_reference_model)
    monkeypatch.chdir(ROOT)
    dpo.main(apply_overrides(dpo.PARAMS, [*settings, f"output_dir={tmp_path / 'again'}"]), trainer_class=Counting)
    assert Counting.reference_forwards == 0
    assert first_loss(tmp_path / "again") == pytest.approx(first_loss(tmp_path / "first"), abs=1e-6)

    # Other data (one pair fewer) is another key: computed again, and cached beside the first.
    fewer = write_jsonl(tmp_path / "fewer.jsonl", read_jsonl(pairs)[:-1])
    dpo.main(
        apply_overrides(dpo.PARAMS, [*settings, f"data={fewer}", f"output_dir={tmp_path / 'fewer'}"]),
        trainer_class=Counting,
    )
    assert Counting.reference_forwards > 0 and len(list(cache.glob("*.pt"))) == 2


@pytest.mark.e2e
def test_a_changed_model_does_not_reuse_the_cache(tmp_path, sft_model, pairs):
    import shutil

    from safetensors.torch import load_file, save_file

    changed = tmp_path / "changed"
    shutil.copytree(sft_model, changed)
    weights = load_file(changed / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"] * 1.01
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    settings = [
        f"data={pairs}",
        *NO_EVAL,
        f"ref_cache_dir={tmp_path / 'cache'}",
        "max_steps=1",
        "eval_fraction=0",
        "progress_bar=false",
    ]
    for model, name in ((sft_model, "a"), (changed, "b")):
        result = run_script(SCRIPT, f"model={model}", *settings, f"output_dir={tmp_path / name}")
        assert result.returncode == 0 and "computed, cached in" in result.stdout, result.stderr[-3000:]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


@pytest.mark.e2e
def test_dry_run_preview_scores_exactly_the_answers_and_end_of_turn(tmp_path, sft_model):
    from transformers import AutoTokenizer

    data = write_jsonl(
        tmp_path / "p.jsonl",
        [
            PAIR,
            {
                "prompt": [{"role": "system", "content": "One call."}, {"role": "user", "content": "Timer 5 min"}],
                "chosen": [{"role": "assistant", "content": "set_timer(minutes=5)"}],
                "rejected": [{"role": "assistant", "content": "set_timer(minutes=50)"}],
            },
        ],
    )
    out = tmp_path / "out"
    result = run_script(
        SCRIPT, f"model={sft_model}", f"data={data}", f"output_dir={out}", "dry_run=true", "eval_fraction=0"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert '[[play_music(artist="Adele")<eot>]]' in result.stdout
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    scored = []
    for row in read_jsonl(out / "data_preview.jsonl"):
        for ids, mask in zip(row["input_ids"], row["completion_mask"], strict=False):
            scored += trained_spans(
                tokenizer, {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask, strict=False)]}
            )
    assert sorted(scored) == sorted(
        [
            'play_music(artist="Adele")<eot>',
            'play_music(artist="Sade")<eot>',
            "set_timer(minutes=5)<eot>",
            "set_timer(minutes=50)<eot>",
        ]
    )
    assert not (out / "final").exists()


@pytest.mark.e2e
def test_tool_pairs_score_exactly_the_calls_and_start_at_ln2(tmp_path, sft_model):
    """Pairs with tools: the scored tokens are each answer's call (or text) and <eot>, never the tools' signatures
    or the prompt; the first step's loss is ln 2; held-out preference accuracy and exact match run on tool rows."""
    from transformers import AutoTokenizer

    data = write_jsonl(tmp_path / "pairs.jsonl", tool_pairs())
    # held out: other rows, as training rows that overlap held-out ones are dropped (decontamination)
    held_out_pairs = write_jsonl(tmp_path / "held_out_pairs.jsonl", wrong_call_pairs(read_jsonl(TOOLS_TEST)[14:20]))
    held_out = write_jsonl(tmp_path / "held_out.jsonl", read_jsonl(TOOLS_TEST)[20:24])
    common = [
        f"model={sft_model}",
        f"data={data}",
        "eval_fraction=0",
        f"ref_cache_dir={tmp_path / 'cache'}",
        "progress_bar=false",
    ]
    preview = tmp_path / "preview"
    result = run_in_process(SCRIPT, *common, *NO_EVAL, "dry_run=true", f"output_dir={preview}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"\[\[<call>get_weather[^\]]*Paris[^\]]*today[^\]]*<eot>\]\]", result.stdout), result.stdout[
        -2000:
    ]
    tokenizer = AutoTokenizer.from_pretrained(preview / "tokenizer")
    previews = read_jsonl(preview / "data_preview.jsonl")
    scored = [
        [
            trained_spans(
                tokenizer, {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask, strict=False)]}
            )
            for ids, mask in zip(row["input_ids"], row["completion_mask"], strict=False)
        ]
        for row in previews
    ]
    assert scored[1] == [["It will be 21 degrees and sunny.<eot>"], ["It will be 12 degrees and rainy.<eot>"]]
    # every other scored span is one call and <eot> (whatever the template's call syntax), read back as the pair's call
    for pair, spans in zip([p for i, p in enumerate(tool_pairs()) if i != 1], scored[:1] + scored[2:], strict=False):
        for side, (span,) in zip(("chosen", "rejected"), spans, strict=False):
            assert span.startswith("<call>") and span.endswith("<eot>"), span
            assert tokenizer.parse_response(span, prefix="")["tool_calls"] == [
                {"type": "function", "function": pair[side][0]["tool_calls"][0]["function"]}
            ], span
    prompt = tokenizer.decode(previews[0]["prompt_ids"])
    assert prompt.startswith("<system>get_weather(city: string, day: string) Get the weather forecast for a city.\n")
    assert prompt.endswith("<eot><user>What's the weather in Paris today?<eot><assistant>")

    out = tmp_path / "out"
    result = run_in_process(
        SCRIPT,
        *common,
        f"test_data={held_out_pairs}",
        f"exact_match_data={held_out}",
        f"output_dir={out}",
        "max_steps=1",
        "logging_steps=1",
        "batch_size=4",
        "grad_accum=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert first_loss(out) == pytest.approx(math.log(2), abs=1e-4)
    for stage in ("before", "after"):
        assert re.search(rf"{stage}: held-out preference accuracy [\d.]+%.* on {held_out_pairs}", result.stdout), (
            result.stdout[-2000:]
        )
        assert re.search(rf"{stage}: held-out exact match [\d.]+% on {held_out}", result.stdout), result.stdout[-2000:]


@pytest.mark.parametrize(
    "row, problem",
    [
        (tool_pairs()[0], None),
        (tool_pairs()[1], None),  # the prompt ends with a tool result
        ({**tool_pairs()[0], "tools": json.dumps(TOOLS)}, None),
        ({**tool_pairs()[0], "tools": "[{"}, "'tools' is a string but not valid JSON"),
        (
            {
                **tool_pairs()[0],
                "rejected": [{"role": "assistant", "content": "", "tool_calls": {"name": "get_weather"}}],
            },
            "rejected[0] tool_calls must be a list",
        ),
        (
            {
                **tool_pairs()[0],
                "rejected": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"'}}
                        ],
                    }
                ],
            },
            "rejected[0] tool_calls[0] arguments of 'get_weather' are not valid JSON",
        ),
        (
            {**tool_pairs()[0], "chosen": [call_turn("get_forecast", city="Paris")]},
            "chosen[0] tool_calls[0] calls 'get_forecast', which is not in the row's tools",
        ),
        (
            {k: v for k, v in tool_pairs()[0].items() if k != "tools"},
            "chosen[0] tool_calls[0] calls 'get_weather', which is not in the row's tools",
        ),
        (
            {**tool_pairs()[1], "prompt": tool_pairs()[1]["prompt"][::2]},
            "prompt[1] is a tool result with no assistant tool call before it",
        ),
        (
            {**tool_pairs()[0], "chosen": [{"role": "tool", "content": "{}"}]},
            "'chosen' must hold assistant messages only",
        ),
        ({**tool_pairs()[0], "chosen": [{"role": "assistant", "content": " "}]}, "'chosen' is empty"),
        (
            {**tool_pairs()[0], "rejected": [call_turn("get_weather", day="today", city="Paris")]},
            "'chosen' and 'rejected' are identical",
        ),
        (
            {**tool_pairs()[1], "prompt": tool_pairs()[1]["prompt"][:2]},
            "the prompt's last message must be from the user (or a tool result)",
        ),
    ],
)
def test_preference_row_problem_with_tools(row, problem):
    from common.preference import preference_row_problem

    found = preference_row_problem(row)
    assert found == problem if problem is None else found.startswith(problem), found


class WithoutLogitsToKeep:
    """A model whose forward has no logits_to_keep (remote code, a wrapper): every position's logits come back."""

    def __init__(self, model):
        self.model, self.device = model, model.device

    def eval(self):
        self.model.eval()

    def forward(self, input_ids, attention_mask, position_ids, use_cache, past_key_values=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache, past_key_values=past_key_values)  # fmt: skip

    __call__ = forward


@pytest.mark.parametrize("family, architecture", [("qwen2.5", "llama"), ("qwen3", "gpt2")])  # RoPE; learned positions
def test_margins_read_each_prompt_once_and_equal_whole_sequence_scores(family, architecture, tmp_path_factory):
    """preference_margins scores both answers on one pass over the shared prompt (left-padded, its cache repeated)
    and runs the head only where answer tokens are predicted: the margins equal each pair scored as two whole
    sequences, one at a time, in batches where prompts and answers differ in length (tool calls and plain rows too)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from common.chat.native import use_training_template
    from common.chat.template import chat_spec
    from common.preference import as_chat, preference_margins, tokenize_preference
    from tests.real_tokenizers import shared_folder

    tokenizer = AutoTokenizer.from_pretrained(shared_folder(family, str(tmp_path_factory.getbasetemp())))
    spec = chat_spec(tokenizer, use_training_template(tokenizer, "", "keep"), "keep")
    rows = [as_chat(r, True) for r in [PAIR, *read_jsonl(f"{ROOT}/data/examples/preference_test.jsonl")[:6]]]
    rows += [{**tool_pairs()[0], "tools": TOOLS}, {**PAIR, "chosen": PAIR["chosen"] + " and a longer tail" * 5}]
    torch.manual_seed(0)
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = AutoConfig.for_model(architecture, vocab_size=len(tokenizer), **sizes)
    model = AutoModelForCausalLM.from_config(config).eval()  # GPT-2's dropout is on in training mode

    def whole(prompt, answer):
        logps = model(torch.tensor([prompt + answer])).logits[0, :-1].float().log_softmax(-1)
        return logps[range(len(prompt) - 1, len(prompt) + len(answer) - 1), answer].sum().item()

    def margins_one_by_one(rows, spec):
        pairs = [tokenize_preference(tokenizer, row, spec) for row in rows]
        with torch.no_grad():
            return [whole(p["prompt_ids"], p["chosen_ids"]) - whole(p["prompt_ids"], p["rejected_ids"]) for p in pairs]

    prompt_lengths = {len(tokenize_preference(tokenizer, row, spec)["prompt_ids"]) for row in rows}
    assert len(prompt_lengths) > 2
    expected = margins_one_by_one(rows, spec)
    assert preference_margins(model, tokenizer, rows, spec, batch_size=4) == pytest.approx(expected, abs=1e-4)
    assert preference_margins(WithoutLogitsToKeep(model), tokenizer, rows, spec) == pytest.approx(expected, abs=1e-4)
    plain = [PAIR, {**PAIR, "prompt": "Please play something by Adele now", "rejected": "no"}]  # string rows
    assert preference_margins(model, tokenizer, plain) == pytest.approx(margins_one_by_one(plain, None), abs=1e-4)


@pytest.mark.e2e
def test_preview_tokens_are_what_the_trainer_prepares(sft_model):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer

    from common.chat.template import chat_spec
    from common.preference import as_chat, tokenize_preference

    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    spec = chat_spec(tokenizer, "")
    with open(f"{ROOT}/data/examples/preference_test.jsonl") as f:
        rows = [as_chat(PAIR, True), *[json.loads(line) for line in f][:5]]
    prepared = DPOTrainer._prepare_dataset(
        type("T", (), {"_tokenizer": tokenizer})(),
        Dataset.from_list(rows),
        tokenizer,
        DPOConfig(output_dir="/tmp/unused", use_cpu=True, bf16=False),
        "x",
    )
    for row, ours in zip(prepared, (tokenize_preference(tokenizer, r, spec) for r in rows), strict=False):
        assert {k: row[k] for k in ours} == ours


@pytest.mark.e2e
def test_missing_sft_output_says_what_to_run(tmp_path):
    # From a folder with no outputs/sft_chat/final, the default model is missing.
    result = run([sys.executable, os.path.join(ROOT, SCRIPT), *NO_EVAL], cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "error: model folder not found: outputs/sft_chat/final (run `accelerate launch sft_chat.py` first"
        in result.stderr
    )


@pytest.mark.xdist_group("default_sft_chat")  # the worker that makes the shared run uses it
@pytest.mark.e2e
def test_default_chain_improves_preferences_and_keeps_exact_match(default_sft_chat, tmp_path):
    """`accelerate launch dpo.py` on the default sft_chat.py output: preference accuracy > 0.9 after,
    exact match at most 2 points below the SFT model's."""
    out = tmp_path / "dpo"
    result = run(
        [
            "accelerate",
            "launch",
            SCRIPT,
            f"model={default_sft_chat}",
            f"output_dir={out}",
            f"ref_cache_dir={tmp_path / 'cache'}",
            "progress_bar=false",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = dict(re.findall(r"(before|after): held-out preference accuracy ([\d.]+)%", result.stdout))
    exact = dict(re.findall(r"(before|after): held-out exact match ([\d.]+)%", result.stdout))
    assert float(found["after"]) > 90.0, result.stdout[-2000:]
    assert float(exact["after"]) >= float(exact["before"]) - 2.0, result.stdout[-2000:]


@pytest.mark.e2e
def test_native_qwen3_pairs_score_exactly_the_answer_and_start_at_ln2(tmp_path):
    """A Qwen3-style template (think blocks on the last turn only): prompt, chosen and rejected are rendered whole
    with TRL's Qwen3 training template, the scored tokens are the answer's turn and its <|im_end|>, reasoning
    included, and the first step's loss is ln 2 (the reference saw the same tokens)."""
    from tests.real_tokenizers import tiny_model_folder

    model = tiny_model_folder("qwen3", tmp_path)
    prompt = [
        {"role": "system", "content": "Answer with one call."},
        {"role": "user", "content": "Play Adele"},
        {"role": "assistant", "content": "play_music()"},
        {"role": "user", "content": "Louder, and Adele"},
    ]
    rows = [
        {
            "prompt": prompt,
            "chosen": [
                {
                    "role": "assistant",
                    "content": f'play_music(artist="Adele", volume={v})',
                    "reasoning_content": "They want Adele.",
                }
            ],
            "rejected": [{"role": "assistant", "content": f'play_music(artist="Sade", volume={v})'}],
        }
        for v in range(16)
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    common = [
        f"model={model}",
        f"data={data}",
        *NO_EVAL,
        f"ref_cache_dir={tmp_path / 'cache'}",
        "progress_bar=false",
        "eval_fraction=0",
        "max_length=256",
    ]
    preview = tmp_path / "preview"
    result = run_script(SCRIPT, *common, "dry_run=true", f"output_dir={preview}")
    assert result.returncode == 0, result.stderr[-3000:]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(preview / "tokenizer")
    first = read_jsonl(preview / "data_preview.jsonl")[0]
    chosen, rejected = (
        {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask, strict=False)]}
        for ids, mask in zip(first["input_ids"], first["completion_mask"], strict=False)
    )
    assert trained_spans(tokenizer, chosen) == [
        '<think>\nThey want Adele.\n</think>\n\nplay_music(artist="Adele", volume=0)<|im_end|>\n'
    ]
    assert trained_spans(tokenizer, rejected) == [
        '<think>\n\n</think>\n\nplay_music(artist="Sade", volume=0)<|im_end|>\n'
    ]
    assert tokenizer.decode(first["prompt_ids"]).endswith(
        "<|im_start|>user\nLouder, and Adele<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "<think>\n\n</think>\n\nplay_music()<|im_end|>" in tokenizer.decode(
        first["prompt_ids"]
    )  # earlier turns keep theirs
    with open(preview / "data_report.json") as f:
        report = json.load(f)
    assert report["chat_template"].startswith("TRL's qwen3 training template")

    out = tmp_path / "out"
    result = run_script(
        SCRIPT, *common, f"output_dir={out}", "max_steps=1", "logging_steps=1", "batch_size=4", "grad_accum=1"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert first_loss(out) == pytest.approx(math.log(2), abs=1e-4)
