"""PARAMS handling: `--config file.yaml` and `key=value` overrides, checked against the defaults.

The PARAMS dict at the top of a script is the schema: its keys are the only keys and a default's
type is the type an override must have (a default of None accepts anything).
"""

import copy
import difflib
import os
import re
import sys
from dataclasses import dataclass, field

import yaml

from common.errors import UserError, exit_on_user_error

# Values that keys shared by several scripts may take; a key missing here accepts any value of its type.
CHOICES = {
    "reasoning": ("keep", "drop"),
    "packing": ("auto", True, False),
    "report_to": ("auto", "wandb", "none"),
    "on_bad_rows": ("error", "skip"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
}
# (check, reason) for numeric keys shared by several scripts.
BOUNDS = {
    "learning_rate": (lambda v: v > 0, "must be > 0"),
    "batch_size": (lambda v: v >= 1, "must be >= 1"),
    "grad_accum": (lambda v: v >= 1, "must be >= 1"),
    "max_length": (lambda v: v >= 8, "must be >= 8"),
    "num_epochs": (lambda v: v > 0, "must be > 0"),
    "eval_fraction": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "logging_steps": (lambda v: v >= 1, "must be >= 1"),
    "save_steps": (lambda v: v >= 1, "must be >= 1"),
    "r": (lambda v: v >= 1, "must be >= 1"),
    "dropout": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "label_smoothing": (lambda v: 0 <= v < 0.5, "must be in [0, 0.5)"),
    "threshold": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "top_p": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "max_repeated_lines": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "max_symbol_ratio": (lambda v: v >= 0, "must be >= 0"),
    "min_chars": (lambda v: v >= 0, "must be >= 0"),
    "max_chars": (lambda v: v >= 0, "must be >= 0 (0: no limit)"),
    "min_tokens": (lambda v: v >= 0, "must be >= 0"),
    "max_tokens": (lambda v: v >= 0, "must be >= 0 (0: no limit)"),
    "shingle": (lambda v: v >= 1, "must be >= 1"),
    "num_perm": (lambda v: v >= 16, "must be >= 16"),
    "ngram": (lambda v: v >= 1, "must be >= 1"),
    "num_proc": (lambda v: v >= 0, "must be >= 0 (0: every core available)"),
    "test_rows": (lambda v: v >= 0, "must be >= 0 (0: every row)"),
}


@dataclass
class Rules:
    """A script's own choices and bounds, next to its PARAMS; they apply on top of the shared ones."""

    choices: dict = field(default_factory=dict)
    bounds: dict = field(default_factory=dict)


SECRET_KEY = re.compile(r"(^|[._])(api_?key|key|token|secret|password)s?($|_)", re.IGNORECASE)


def resolve(defaults: dict, rules: Rules | None = None, argv: list[str] | None = None) -> dict:
    """The script's PARAMS with the command line applied, checked by its rules; a bad override exits with status 2."""
    return exit_on_user_error(apply_overrides)(defaults, sys.argv[1:] if argv is None else argv, rules)


def apply_overrides(defaults: dict, argv: list[str], rules: Rules | None = None) -> dict:
    params = copy.deepcopy(defaults)
    rules = rules or Rules()
    rules = ({**CHOICES, **rules.choices}, {**BOUNDS, **rules.bounds})
    configs, pairs = [], []
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            configs.append(next(args, None) or _fail_usage("--config needs a YAML file"))
        elif arg.startswith("--config="):
            configs.append(arg.split("=", 1)[1])
        elif "=" in arg and not arg.startswith("-"):
            pairs.append(arg)
        else:
            _fail_usage(f"unexpected argument '{arg}' (use key=value or --config file.yaml)")
    for path in configs:
        for key, value in _flatten(_read_yaml(path)).items():
            _set(params, defaults, key, value, f"{path}: ", rules)
    for pair in pairs:
        key, text = pair.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        if isinstance(_default(defaults, key), str) and isinstance(value, (dict, list)):
            value = text  # YAML reads "Q: {prompt}" as a mapping; a string key means the text itself
        _set(params, defaults, key, value, "", rules)
    for key in ("model", "judge_model", "teacher"):
        if isinstance(params.get(key), str):
            params[key] = named_model(params[key])
    return params


# Real pretrained models made offline as a local folder by a script (README "A real model"): model=NAME reads it
NAMED_MODELS = {"smollm2-135m": ("~/.cache/smollm2-135m-instruct", "../shared/real_models/smollm2-135m-instruct.sh")}


def named_model(value: str) -> str:
    """The folder of a named real model (one line with the command that makes it when it is missing), a path with
    ~ expanded, or the value as it is (a hub id, builtin:tiny)."""
    if value in NAMED_MODELS:
        folder, maker = NAMED_MODELS[value]
        if not os.path.isdir(os.path.expanduser(folder)):
            raise UserError(f"model {value}: folder {folder} not found (make it with `{maker} {folder}`)")
        value = folder
    return os.path.expanduser(value) if value.startswith("~") else value


def _default(defaults: dict, key: str):
    node = defaults
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _fail_usage(message):
    raise UserError(message)


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise UserError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of PARAMS keys, got {type(data).__name__}")
    return data


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _set(params: dict, defaults: dict, key: str, value, where: str, rules: tuple) -> None:
    *parents, leaf = key.split(".")
    node, schema = params, defaults
    for depth, part in enumerate(parents):
        if not isinstance(schema.get(part), dict):
            _unknown(".".join(parents[: depth + 1]), defaults, where)
        node, schema = node[part], schema[part]
    if leaf not in schema:
        _unknown(key, defaults, where)
    default = schema[leaf]
    if isinstance(default, dict) and isinstance(value, dict):
        for sub, sub_value in _flatten(value).items():
            _set(params, defaults, f"{key}.{sub}", sub_value, where, rules)
        return
    node[leaf] = _check(key, leaf, default, value, where, rules)


def _unknown(key: str, defaults: dict, where: str):
    known = sorted(_flatten(defaults))
    near = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; valid keys: {', '.join(known)}"
    raise UserError(f"{where}unknown PARAMS key '{key}'{hint}")


def _check(key: str, leaf: str, default, value, where: str, rules: tuple):
    if default is not None:
        value = _coerce(key, default, value, where, rules[0])
    choices = rules[0].get(leaf)
    for item in value if isinstance(value, list) else [value]:  # a list key checks each of its items
        if choices is not None and item not in choices:
            raise UserError(f"{where}{key}={item!r} is not one of {', '.join(map(repr, choices))}")
    bound = rules[1].get(leaf)
    if bound is not None and isinstance(value, (int, float)) and not bound[0](value):
        raise UserError(f"{where}{key}={value!r} {bound[1]}")
    return value


def _coerce(key: str, default, value, where: str, choices: dict):
    expected = type(default)
    if _is_choice(choices.get(key.split(".")[-1], ()), value):
        return value
    if isinstance(default, list) and not isinstance(value, list):
        return [value]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(value, expected) and not (expected is not bool and isinstance(value, bool)):
        return value
    raise UserError(f"{where}{key} must be {expected.__name__} (like the default {default!r}), got {value!r}")


def _is_choice(choices: tuple, value) -> bool:
    """Keys such as packing take a bool or "auto": a listed choice is valid whatever the default's type."""
    return any(value is c or (not isinstance(c, bool) and value == c) for c in choices)


def redact(params):
    """A copy with every value whose key names a secret replaced (a key ending in _env names an environment
    variable, not its value, and is kept)."""
    if not isinstance(params, dict):
        return params
    return {
        k: ("<redacted>" if SECRET_KEY.search(k) and not k.endswith("_env") and v not in (None, "") else redact(v))
        for k, v in params.items()
    }


def save_params(params: dict, output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "params.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(redact(params), f, sort_keys=False)
