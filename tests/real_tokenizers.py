"""Real tokenizers and chat templates as test fixtures: ../shared/real_tokenizers/ (read where CI has it, never
copied here) and every original template the pinned TRL ships (trl/chat_templates/), each on a real vocabulary."""

import json
import lzma
import os
import re
import shutil
from functools import cache
from pathlib import Path

import trl

SHARED = Path(__file__).resolve().parents[2] / "shared" / "real_tokenizers"
TRL_TEMPLATES = Path(trl.__file__).parent / "chat_templates"
# A fixture folder's tokenizer.json: its own, or the vocabulary its README names.
VOCABULARY = {"qwen2.5": "qwen3", "smollm3": "llama3"}
# Families that are another fixture's files with one of TRL's originals as their template: Phi-3.5-mini ships
# Phi-3-mini's vocabulary and added tokens (<|assistant|> and <|end|> with rstrip=True).
WITH_TRL_TEMPLATE = {"phi3.5": ("phi3", "phi3_5")}
SHARED_FAMILIES = ["qwen3", "qwen2.5", "llama3", "phi3", "phi3.5", "smollm3"]
# TRL's originals, as "trl-<file stem>" (qwen3, llama3 and phi3 are also fixture names).
TRL_FAMILIES = sorted(f"trl-{p.stem}" for p in TRL_TEMPLATES.glob("*.jinja") if not p.stem.endswith("_training"))


@cache
def shared_folder(family: str, root: str) -> str:
    """A tokenizer folder for a fixture family, written once under root."""
    out = Path(root, family)
    out.mkdir(parents=True, exist_ok=True)
    files, template = WITH_TRL_TEMPLATE.get(family, (family, None))
    vocabulary = SHARED / VOCABULARY.get(files, files) / "tokenizer.json.xz"
    with lzma.open(vocabulary) as f:
        (out / "tokenizer.json").write_bytes(f.read())
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        if (SHARED / files / name).exists():
            shutil.copy(SHARED / files / name, out / name)
    if template:  # chat_template.jinja takes the place of the config's template
        shutil.copy(TRL_TEMPLATES / f"{template}.jinja", out / "chat_template.jinja")
    return str(out)


# Templates of other families, written here in the shape their models ship (no TRL training variant exists):
# plain ChatML (SmolLM2, Hermes, many fine-tunes), Zephyr, and Mistral-7B-Instruct-v0.3, which moves the system
# prompt and the tools into the last user turn, leaves out text next to tool calls and raises on a call id that is
# not nine characters long.
OTHER_TEMPLATES = {
    "chatml": "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    "zephyr": "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '<|user|>\\n' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + eos_token }}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}{% endfor %}",
    "mistral": "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- set user_messages = loop_messages | selectattr('role', 'equalto', 'user') | list %}"
    "{{- bos_token }}{%- for message in loop_messages %}{%- if message['role'] == 'user' %}"
    "{%- if tools and message == user_messages[-1] %}"
    "{{- '[AVAILABLE_TOOLS] ' + tools | tojson + '[/AVAILABLE_TOOLS]' }}{%- endif %}"
    "{%- if loop.last and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['tool_calls'] %}{{- '[TOOL_CALLS] [' }}{%- for call in message['tool_calls'] %}"
    "{%- if call['id'] is not defined or call['id'] | length != 9 %}"
    "{{- raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}{%- endif %}"
    "{{- (call['function'] | tojson)[:-1] + ', \"id\": \"' + call['id'] + '\"}' }}"
    "{{- ', ' if not loop.last else ']' + eos_token }}{%- endfor %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if message['tool_call_id'] is not defined or message['tool_call_id'] | length != 9 %}"
    "{{- raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}{%- endif %}"
    "{{- '[TOOL_RESULTS] {\"content\": ' + message['content'] + ', \"call_id\": \"' + message['tool_call_id']"
    " + '\"}[/TOOL_RESULTS]' }}"
    "{%- endif %}{%- endfor %}",
}
OTHER_FAMILIES = sorted(f"other-{name}" for name in OTHER_TEMPLATES)


@cache
def template_folder(name: str, template: str, root: str) -> str:
    """Llama-3's vocabulary with a template and the special tokens its text names (<|im_start|>, <start_of_turn>,
    <｜Assistant｜>, [INST], [TOOL_CALLS], ...), so each renders as one token as in the family's own vocabulary."""
    out = Path(root, name)
    out.mkdir(parents=True, exist_ok=True)
    with lzma.open(SHARED / "llama3" / "tokenizer.json.xz") as f:
        (out / "tokenizer.json").write_bytes(f.read())
    found = set(re.findall(r"<[^<>\s'\"{}]{1,40}>|\[/?(?:INST|AVAILABLE_TOOLS|TOOL_CALLS|TOOL_RESULTS)\]", template))
    config = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "chat_template": template,
        "additional_special_tokens": sorted(found - {"<|begin_of_text|>", "<|end_of_text|>"}),
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return str(out)


def folder(family: str, root) -> str:
    """A tokenizer folder for a fixture family ("qwen3"), a TRL template ("trl-qwen3") or another ("other-chatml")."""
    if family.startswith("trl-"):
        template = (TRL_TEMPLATES / f"{family.removeprefix('trl-')}.jinja").read_text(encoding="utf-8")
        return template_folder(family, template, str(root))
    if family.startswith("other-"):
        return template_folder(family, OTHER_TEMPLATES[family.removeprefix("other-")], str(root))
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
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
