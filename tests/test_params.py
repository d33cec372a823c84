import os

import pytest
import yaml

from common.errors import UserError
from common.params import NAMED_MODELS, Rules, apply_overrides, redact, save_params

DEFAULTS = {
    "model": "builtin:tiny",
    "data": ["a.jsonl"],
    "learning_rate": 1e-3,
    "batch_size": 8,
    "packing": "auto",
    "dry_run": False,
    "chat_format": "special_tokens",
    "eval_fraction": 0.05,
    "anything": None,
    "lora": {"enabled": False, "r": 16, "target_modules": ["q_proj"]},
}


@pytest.mark.parametrize(
    "argv, key, expected",
    [
        (["learning_rate=1e-4"], "learning_rate", 1e-4),  # YAML 1.1 reads 1e-4 as a string
        (["learning_rate=2"], "learning_rate", 2.0),
        (["data=[x.jsonl,y.jsonl]"], "data", ["x.jsonl", "y.jsonl"]),
        (["data=x.jsonl"], "data", ["x.jsonl"]),  # one value for a list key is a one-element list
        (["packing=true"], "packing", True),
        (["packing=auto"], "packing", "auto"),
        (["dry_run=true"], "dry_run", True),
        (["anything={a: 1}"], "anything", {"a": 1}),
        (["lora.enabled=true"], "lora", {"enabled": True, "r": 16, "target_modules": ["q_proj"]}),
        (["lora.target_modules=all-linear"], "lora", {"enabled": False, "r": 16, "target_modules": ["all-linear"]}),
        (["model=org/name", "model=other"], "model", "other"),  # the last pair wins
        (["model=Q: {prompt} [x]"], "model", "Q: {prompt} [x]"),  # a string key takes text YAML calls a mapping
        (['model="Q: {prompt}\\nA:"'], "model", "Q: {prompt}\nA:"),  # quoted YAML for escapes
    ],
)
def test_overrides(argv, key, expected):
    assert apply_overrides(DEFAULTS, argv)[key] == expected


@pytest.mark.parametrize(
    "argv, message",
    [
        (["learnin_rate=1"], "unknown PARAMS key 'learnin_rate'; did you mean learning_rate"),
        (["lora.rank=4"], "unknown PARAMS key 'lora.rank'; did you mean lora.r"),
        (["batch_size=two"], "batch_size must be int"),
        (["batch_size=1.5"], "batch_size must be int"),
        (["batch_size=0"], "batch_size=0 must be >= 1"),
        (["dry_run=3"], "dry_run must be bool"),
        (["chat_format=chatml"], "chat_format='chatml' is not one of"),
        (["eval_fraction=1.5"], "eval_fraction=1.5 must be in [0, 1)"),
        (["lora=5"], "lora must be dict"),
        (["stray"], "unexpected argument 'stray'"),
        (["--config", "/nonexistent.yaml"], "config file not found: /nonexistent.yaml"),
    ],
)
def test_bad_overrides(argv, message):
    with pytest.raises(UserError, match=None) as err:
        apply_overrides(DEFAULTS, argv, Rules(choices={"chat_format": ("special_tokens", "native")}))
    assert message in str(err.value)


def test_config_file_then_pairs(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("learning_rate: 5.0e-5\nbatch_size: 4\nlora:\n  enabled: true\n  r: 8\n")
    params = apply_overrides(DEFAULTS, ["--config", str(config), "batch_size=2"])
    assert params["learning_rate"] == 5e-5 and params["batch_size"] == 2
    assert params["lora"] == {"enabled": True, "r": 8, "target_modules": ["q_proj"]}
    assert DEFAULTS["lora"]["enabled"] is False  # the defaults are never mutated


def test_config_file_errors_name_the_file(tmp_path):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("learning_rat: 1.0\n")
    with pytest.raises(UserError, match=f"{bad_key}: unknown PARAMS key 'learning_rat'"):
        apply_overrides(DEFAULTS, ["--config", str(bad_key)])
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(UserError, match="broken.yaml:.*not valid YAML"):
        apply_overrides(DEFAULTS, [f"--config={broken}"])


def test_secrets_are_redacted(tmp_path):
    params = {
        "api_key": "sk-123",
        "hub_token": "hf_abc",
        "tokenizer": "keep",
        "nested": {"password": "p"},
        "x": 1,
        "api_key_env": "OPENAI_API_KEY",
    }
    assert redact(params) == {
        "api_key": "<redacted>",
        "hub_token": "<redacted>",
        "tokenizer": "keep",
        "api_key_env": "OPENAI_API_KEY",  # the name of a variable, not a secret
        "nested": {"password": "<redacted>"},
        "x": 1,
    }
    save_params(params, str(tmp_path))
    text = (tmp_path / "params.yaml").read_text()
    assert "sk-123" not in text and "hf_abc" not in text and yaml.safe_load(text)["tokenizer"] == "keep"


def test_shipped_recipes_are_valid_overrides(tmp_path, monkeypatch):
    """Each recipe names its script in its launch line and parses against that script's PARAMS."""
    monkeypatch.setenv("HOME", str(tmp_path))  # the named real models' folders, made empty
    for folder, _ in NAMED_MODELS.values():
        os.makedirs(os.path.expanduser(folder))
    import glob
    import importlib
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    recipes = sorted(glob.glob(os.path.join(root, "configs/recipes/*.yaml")))
    assert recipes
    for recipe in recipes:
        with open(recipe, encoding="utf-8") as f:
            launches = dict(
                (config, name) for name, config in re.findall(r"accelerate launch (\w+)\.py --config (\S+)", f.read())
            )
        assert os.path.relpath(recipe, root) in launches, recipe
        script = importlib.import_module(launches[os.path.relpath(recipe, root)])
        params = apply_overrides(script.PARAMS, ["--config", recipe])
        assert params != script.PARAMS, recipe


@pytest.mark.parametrize(
    "script, override, message",
    [
        ("dpo", "loss_type=dapo", "loss_type='dapo' is not one of"),
        ("grpo", "loss_type=sigmoid", "loss_type='sigmoid' is not one of"),
        ("dpo", "beta=0", "beta=0.0 must be > 0"),
        ("grpo", "temperature=0", "temperature=0.0 must be > 0"),
        ("grpo", "loss_type=dr_grpo", None),
        ("grpo", "beta=0", None),
        ("synth_data", "temperature=0", None),
    ],
)
def test_a_key_checked_by_the_script_that_owns_it(script, override, message):
    """loss_type, beta and temperature mean other things in grpo.py: the RULES next to each script's PARAMS apply."""
    import importlib

    module = importlib.import_module(script)
    if message is None:
        key, value = override.split("=")
        assert apply_overrides(module.PARAMS, [override], module.RULES)[key] == yaml.safe_load(value)
    else:
        with pytest.raises(UserError, match=message):
            apply_overrides(module.PARAMS, [override], module.RULES)


def test_a_named_real_model_reads_its_folder_or_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(
        UserError,
        match=r"model smollm2-135m: folder ~/.cache/smollm2-135m-instruct not found \(make it with "
        r"`../shared/real_models/smollm2-135m-instruct.sh ~/.cache/smollm2-135m-instruct`\)",
    ):
        apply_overrides({"model": "builtin:tiny"}, ["model=smollm2-135m"])
    os.makedirs(tmp_path / ".cache" / "smollm2-135m-instruct")
    made = apply_overrides({"model": "x"}, ["model=smollm2-135m"])["model"]
    assert made == f"{tmp_path}/.cache/smollm2-135m-instruct"
    assert apply_overrides({"judge_model": ""}, ["judge_model=~/m"])["judge_model"] == f"{tmp_path}/m"
    assert apply_overrides({"model": "x"}, ["model=Qwen/Qwen3-0.6B"])["model"] == "Qwen/Qwen3-0.6B"
