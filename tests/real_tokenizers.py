"""Real tokenizers and chat templates as test fixtures: ../shared/real_tokenizers/ (read where CI has it, never
copied here) and every original template the pinned TRL ships (trl/chat_templates/), each on a real vocabulary."""

import json
import lzma
import os
import re
import shutil
from functools import lru_cache
from pathlib import Path

import trl

SHARED = Path(__file__).resolve().parents[2] / "shared" / "real_tokenizers"
TRL_TEMPLATES = Path(trl.__file__).parent / "chat_templates"
# A fixture folder's tokenizer.json: its own, or the vocabulary its README names.
VOCABULARY = {"qwen2.5": "qwen3", "smollm3": "llama3"}
SHARED_FAMILIES = ["qwen3", "qwen2.5", "llama3", "phi3", "smollm3"]
# TRL's originals, as "trl-<file stem>" (qwen3, llama3 and phi3 are also fixture names).
TRL_FAMILIES = sorted(f"trl-{p.stem}" for p in TRL_TEMPLATES.glob("*.jinja") if not p.stem.endswith("_training"))


@lru_cache(maxsize=None)
def shared_folder(family: str, root: str) -> str:
    """A tokenizer folder for a fixture family, written once under root."""
    out = Path(root, family)
    out.mkdir(parents=True, exist_ok=True)
    vocabulary = SHARED / VOCABULARY.get(family, family) / "tokenizer.json.xz"
    (out / "tokenizer.json").write_bytes(lzma.open(vocabulary).read())
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        if (SHARED / family / name).exists():
            shutil.copy(SHARED / family / name, out / name)
    return str(out)


@lru_cache(maxsize=None)
def trl_folder(family: str, root: str) -> str:
    """Llama-3's vocabulary with a TRL template and the special tokens its text names (<|im_start|>,
    <start_of_turn>, <｜Assistant｜>, ...), so each renders as one token as in the family's own vocabulary."""
    template = (TRL_TEMPLATES / f"{family}.jinja").read_text(encoding="utf-8")
    out = Path(root, f"trl-{family}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_bytes(lzma.open(SHARED / "llama3" / "tokenizer.json.xz").read())
    specials = sorted(set(re.findall(r"<[^<>\s'\"{}]{1,40}>", template)) - {"<|begin_of_text|>", "<|end_of_text|>"})
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "chat_template": template,
              "additional_special_tokens": specials, "tokenizer_class": "PreTrainedTokenizerFast"}
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return str(out)


def folder(family: str, root) -> str:
    """A tokenizer folder for a fixture family ("qwen3") or a TRL template ("trl-qwen3")."""
    if family.startswith("trl-"):
        return trl_folder(family.removeprefix("trl-"), str(root))
    return shared_folder(family, str(root))


def load(family: str, root):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder(family, root))


def tiny_model_folder(family: str, root, name: str = "model") -> str:
    """A random ~1M-parameter Llama over the family's vocabulary, saved with its tokenizer: a model folder a
    script loads like a real instruct model's."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = os.path.join(str(root), f"{name}-{family}")
    if os.path.isdir(out):
        return out
    tokenizer = AutoTokenizer.from_pretrained(folder(family, root))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
