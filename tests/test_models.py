import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from common.chat.own_format import add_function_tokens
from common.chat.tokenizer import end_of_turn_ids, prepare_tokenizer
from common.models import BUILTIN, add_pad_token, resize_embeddings
from tests.real_tokenizers import SHARED_FAMILIES, load


@pytest.mark.parametrize("pretrained", [True, False])
def test_resize_to_multiple_of_64_with_rows_from_the_words_a_token_is_named_by(pretrained):
    """In a pretrained model `<fn:play_music>` starts as "play music" and `<assistant>` as "assistant" (input and
    output rows); a token whose name has no words, and every new token of random weights, at the old rows' mean."""
    torch.manual_seed(0)
    base = AutoTokenizer.from_pretrained(BUILTIN["builtin:tiny"])
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(base),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    old = {"in": model.get_input_embeddings().weight.detach().clone()}
    old["out"] = model.get_output_embeddings().weight.detach().clone()
    spec = prepare_tokenizer(base, "special_tokens")
    assert len(spec.new_token_ids) == 7  # <system> <user> <assistant> <tool> <call> <eot> <pad>
    add_function_tokens(base, spec, ["play_music"])
    base.add_special_tokens({"additional_special_tokens": ["<|_|>"]}, replace_extra_special_tokens=False)
    new_ids = [*spec.new_token_ids, len(base) - 1]
    resize_embeddings(model, base, new_ids, pretrained)
    layers = {"in": model.get_input_embeddings().weight, "out": model.get_output_embeddings().weight}
    assert layers["in"].shape[0] % 64 == 0 and layers["in"].shape[0] >= len(base)
    for side, rows in layers.items():
        for token, words in (("<fn:play_music>", " play music"), ("<assistant>", " assistant")):
            word_ids = base(words, add_special_tokens=False)["input_ids"]
            start = old[side][word_ids] if pretrained else old[side]
            assert torch.allclose(rows[base.convert_tokens_to_ids(token)], start.mean(0))
        assert torch.allclose(rows[len(base) - 1], old[side].mean(0))
        assert torch.equal(rows[: len(old[side])], old[side])


def test_pad_token_is_never_a_stop_token():
    tok = AutoTokenizer.from_pretrained(BUILTIN["builtin:tiny"])
    assert tok.pad_token is None
    add_pad_token(tok, [tok.eos_token_id])
    assert tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id
    tok.pad_token = tok.eos_token  # a base model that pads with its EOS gets its own pad token too
    add_pad_token(tok, [tok.eos_token_id])
    assert tok.pad_token == "<pad>"
    before = len(tok)
    add_pad_token(tok, [tok.eos_token_id])  # a dedicated pad token is kept
    assert len(tok) == before and tok.pad_token == "<pad>"


@pytest.mark.parametrize("family", [*SHARED_FAMILIES, "trl-llama3_2", "trl-gemma3"])
def test_a_real_tokenizer_pads_with_a_token_it_already_has_and_the_chat_never_uses(family, tmp_path):
    """No new token, so no embedding copy and no fully trained embedding under LoRA; never a stop, never a token
    the chat template writes."""
    tokenizer = load(family, tmp_path)
    before = len(tokenizer)
    spec = prepare_tokenizer(tokenizer, "native")
    assert spec.new_token_ids == [] and len(tokenizer) == before
    assert tokenizer.pad_token_id not in end_of_turn_ids(tokenizer, "native", spec)
    assert tokenizer.pad_token not in tokenizer.chat_template
    assert tokenizer.pad_token_id not in (tokenizer.bos_token_id, tokenizer.unk_token_id)
