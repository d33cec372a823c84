import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from common.chat.tokenizer import end_of_turn_ids, prepare_tokenizer
from common.models import BUILTIN, add_pad_token, resize_embeddings
from tests.real_tokenizers import SHARED_FAMILIES, load


def test_resize_to_multiple_of_64_with_mean_rows():
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
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    new_ids = prepare_tokenizer(base, "special_tokens").new_token_ids
    assert len(new_ids) == 7  # <system> <user> <assistant> <tool> <call> <eot> <pad>
    resize_embeddings(model, base, new_ids)
    rows = model.get_input_embeddings().weight
    assert rows.shape[0] % 64 == 0 and rows.shape[0] >= len(base)
    assert torch.allclose(rows[new_ids], old_in.mean(0).expand(len(new_ids), -1))
    assert torch.allclose(model.get_output_embeddings().weight[new_ids], old_out.mean(0).expand(len(new_ids), -1))
    assert torch.equal(rows[: len(old_in)], old_in)


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
