"""Attention for packed rows without flash-attention: each document attends only to itself, at its own size.

A packed step is one padding-free row of many documents. transformers' sdpa turns that into a dense
block-diagonal mask over the whole row (about 10,000 x 10,000 on the bench data) and runs it through the
masked kernel, so packing costs more than the padding it removes: 2x slower on two CPU cores
(KNOWN_TRAPS.md). "sdpa_varlen" runs sdpa causally on each document's slice instead, which is the work
flash-attention's varlen kernel does; the document boundaries come from the collator's `cu_seq_lens_q`
(or from `position_ids`). Anything else (padded batches, generation with a cache) is plain sdpa.
"""

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_varlen"


def document_bounds(cu_seq_lens_q, position_ids, length: int) -> list[int] | None:
    """[0, end of doc 1, ..., length] for a single packed row, or None when the row holds one document."""
    if cu_seq_lens_q is not None:
        bounds = cu_seq_lens_q.tolist()
    elif position_ids is not None and position_ids.shape[0] == 1:
        bounds = (position_ids[0] == 0).nonzero().flatten().tolist() + [length]
    else:
        return None
    return bounds if len(bounds) > 2 else None


def sdpa_varlen_forward(module, query, key, value, attention_mask, cu_seq_lens_q=None, position_ids=None, **kwargs):

    length = query.shape[2]
    bounds = None
    if attention_mask is None and query.shape[0] == 1 and key.shape[2] == length:
        bounds = document_bounds(cu_seq_lens_q, position_ids, length)
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    pieces = [
        sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None, **kwargs)[0]
        for s, e in zip(bounds, bounds[1:], strict=False)
        if e > s
    ]
    return torch.cat(pieces, dim=1), None


def sdpa_varlen_mask(**kwargs):
    """No mask for a training row without padding (the attention splits it by document); sdpa's otherwise."""

    if kwargs.get("attention_mask") is None and kwargs["q_length"] == kwargs["kv_length"]:
        return None
    return sdpa_mask(**kwargs)


def use_varlen_attention(model) -> None:
    """Switch a model that runs sdpa to sdpa_varlen (flash-attention and eager are left as they are)."""

    AttentionInterface.register(NAME, sdpa_varlen_forward)
    AttentionMaskInterface.register(NAME, sdpa_varlen_mask)
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(NAME)
