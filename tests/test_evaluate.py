"""common/evaluate.py: how many tokens the held-out evaluation generates."""

import pytest
from transformers import AutoTokenizer

from common.evaluate import answer_budget, read_examples
from tests.real_tokenizers import shared_folder

HELD_OUT = read_examples("data/examples/chat_test.jsonl", 0)


@pytest.mark.parametrize(
    "family, reasons", [("llama3", False), ("phi3", False), ("qwen2.5", False), ("qwen3", True), ("smollm3", True)]
)
def test_the_budget_covers_every_reference_and_is_cut_only_where_no_reasoning_block_can_open(
    family, reasons, tmp_path_factory
):
    tokenizer = AutoTokenizer.from_pretrained(shared_folder(family, str(tmp_path_factory.getbasetemp())))
    references = [e.reference for e in HELD_OUT]
    budget = answer_budget(tokenizer, references)
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
    if reasons:  # an answer may start with <think>...</think>: no bound but the limit
        assert budget == 128
    else:
        assert budget == longest + 16 < 128
    tool_call = {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}
    assert answer_budget(tokenizer, [*references, tool_call]) == 128  # calls are graded parsed, not as text
    assert answer_budget(tokenizer, ["x" * 2000]) == 128
