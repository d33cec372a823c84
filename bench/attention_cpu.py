"""One packed training step, forward and backward: transformers' sdpa (a dense block-diagonal mask over the
whole step) against common/attention.py's per-document sdpa.

    python bench/attention_cpu.py                  # the 3.9M-parameter bench Llama, 33 long-tailed documents
    python bench/attention_cpu.py --shape tiny --documents 4

Same weights and the same step for both; the losses and gradients must agree (the script stops otherwise).
Prints the best of `--repeats` timings of each.
"""

import argparse
import copy
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workload  # noqa: E402


def main() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from common.attention import use_varlen_attention
    from common.batching import collator, pack_in_random_order

    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="4m", choices=workload.SHAPES)
    parser.add_argument("--documents", type=int, default=33)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    stock = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=1024,
            max_position_embeddings=1024,
            use_cache=False,
            attn_implementation="sdpa",
            **workload.SHAPES[args.shape],
        )
    )
    varlen = copy.deepcopy(stock)
    use_varlen_attention(varlen)
    rng = random.Random(0)
    docs = [
        [rng.randrange(1, 1024) for _ in range(n)] for n in workload.long_tailed_lengths(args.documents, 300, 1000, 0)
    ]
    rows = pack_in_random_order([{"input_ids": d, "labels": d} for d in docs], 1024, 0)
    step = collator(type("Pad", (), {"pad_token_id": 0})(), packing=True)(rows)
    results = {}
    for name, model in (("sdpa, block-diagonal mask", stock), ("sdpa per document", varlen)):
        best = float("inf")
        for _ in range(args.repeats):
            model.zero_grad()
            start = time.perf_counter()
            loss = model(**step).loss
            loss.backward()
            best = min(best, time.perf_counter() - start)
        results[name] = (best, loss.item(), [p.grad.clone() for p in model.parameters()])
    (a, loss_a, grads_a), (b, loss_b, grads_b) = results.values()
    if abs(loss_a - loss_b) > 1e-5 or any(
        not torch.allclose(x, y, atol=1e-5) for x, y in zip(grads_a, grads_b, strict=False)
    ):
        raise SystemExit("the two attentions disagree")
    print(
        f"{args.documents} documents, {step['input_ids'].shape[1]} tokens in {len(rows)} packed rows, "
        f"{sum(p.numel() for p in stock.parameters()) / 1e6:.1f}M parameters, loss {loss_a:.6f} both"
    )
    for name, (seconds, _, _) in results.items():
        print(f"{name}: {seconds:.2f} s forward+backward")
    print(f"speed-up: {a / b:.1f}x")


if __name__ == "__main__":
    main()
