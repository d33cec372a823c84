import copy
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from common.attention import NAME, use_varlen_attention
from common.batching import collator


class Pad:
    pad_token_id = 0


def model(kv_heads: int):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        use_cache=False,
    )
    return LlamaForCausalLM(config)


def packed_step(lengths):
    """A padding-free step of two packed rows, built by the collator the trainer uses."""
    gen = torch.Generator().manual_seed(1)
    docs = [torch.randint(1, 64, (n,), generator=gen).tolist() for n in lengths]
    half = len(docs) // 2
    rows = [
        {"input_ids": sum(part, []), "labels": sum(part, []), "seq_lengths": [len(d) for d in part]}
        for part in (docs[:half], docs[half:])
    ]
    return docs, collator(Pad(), packing=True)(rows)


def loss_and_grads(m, batch):
    m.zero_grad()
    loss = m(**batch).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize("kv_heads", [4, 2])  # plain and grouped-query attention
@pytest.mark.parametrize("keys", [None, ("input_ids", "labels", "position_ids")])  # with and without cu_seq_lens
def test_packed_step_equals_documents_run_alone(kv_heads, keys):
    docs, batch = packed_step([7, 30, 1, 12, 25])
    if keys:
        batch = {k: batch[k] for k in keys}
    stock, varlen = model(kv_heads), model(kv_heads)
    use_varlen_attention(varlen)
    assert varlen.config._attn_implementation == NAME
    loss, grads = loss_and_grads(varlen, batch)
    stock_loss, stock_grads = loss_and_grads(stock, batch)  # sdpa's dense block-diagonal mask
    assert torch.allclose(loss, stock_loss, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, stock_grads, strict=False))
    with torch.no_grad():  # and each document alone, as a padded batch would see it
        total = sum(
            stock(input_ids=torch.tensor([d]), labels=torch.tensor([d])).loss * (len(d) - 1) for d in docs if len(d) > 1
        )
    assert torch.allclose(loss, total / sum(len(d) - 1 for d in docs), atol=1e-6)


def test_padded_batches_and_generation_are_plain_sdpa(tmp_path):
    stock, varlen = model(2), model(2)
    use_varlen_attention(varlen)
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    with torch.no_grad():
        assert torch.allclose(
            varlen(input_ids=ids, attention_mask=mask).logits,
            stock(input_ids=ids, attention_mask=mask).logits,
            atol=1e-6,
        )
    args = dict(max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(
        varlen.generate(ids, attention_mask=mask, **args), stock.generate(ids, attention_mask=mask, **args)
    )
    varlen.save_pretrained(tmp_path)  # a saved model names no attention that only exists in this process
    assert NAME not in json.dumps(json.loads((tmp_path / "config.json").read_text()))


def test_eager_models_are_left_alone():
    m = copy.deepcopy(model(4))
    m.set_attn_implementation("eager")
    use_varlen_attention(m)
    assert m.config._attn_implementation == "eager"
