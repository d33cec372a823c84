"""A stand-in for a hub model where the hub cannot be reached: the real architecture and size, random weights.

    python bench/stand_in_model.py Qwen/Qwen2.5-0.5B /tmp/stand-in/qwen2.5-0.5b
    accelerate launch sft_chat.py --config configs/recipes/qwen2.5-0.5b-chat-lora.yaml model=/tmp/stand-in/qwen2.5-0.5b

The shapes are copied from each model's config.json on the hub; the tokenizer is the built-in one, whose
ids all fall inside the real vocabulary. Useful to check that a recipe fits in memory and to time it;
accuracy means nothing with random weights.
"""

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config  # noqa: E402

from common.models import BUILTIN  # noqa: E402

SHAPES = {
    "Qwen/Qwen2.5-0.5B": (
        Qwen2Config,
        dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
            tie_word_embeddings=True,
            rope_theta=1e6,
            max_position_embeddings=32768,
        ),
    ),
    "Qwen/Qwen2.5-1.5B": (
        Qwen2Config,
        dict(
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            vocab_size=151936,
            tie_word_embeddings=True,
            rope_theta=1e6,
            max_position_embeddings=131072,
        ),
    ),
    "HuggingFaceTB/SmolLM2-1.7B": (
        LlamaConfig,
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=24,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=49152,
            tie_word_embeddings=True,
            rope_theta=130000,
            max_position_embeddings=8192,
        ),
    ),
}


def main(name: str, out: str) -> None:
    config_class, shape = SHAPES[name]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_class(**shape), dtype=torch.bfloat16)
    model.save_pretrained(out)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(BUILTIN["builtin:tiny"], file), out)
    print(f"{out}: {name} shapes, {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, random weights")


if __name__ == "__main__":
    main(*sys.argv[1:3])
