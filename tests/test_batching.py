import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from common.batching import collator, pack_in_random_order, show_example, write_preview
from common.data import DataReport
from tests.conftest import read_jsonl
from tests.real_tokenizers import load
from tests.test_prepare import prepared


class Tok:
    pad_token_id = 0

    def decode(self, ids):
        return "".join(f"<{i}>" for i in ids)


def docs():
    # Lengths 5, 9, 3, 7: some share a row of 16.
    return [(list(range(10, 10 + n)), [-100] * (n // 2) + list(range(10 + n // 2, 10 + n))) for n in (5, 9, 3, 7)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_document_in_packed_row_has_same_logits_as_alone(tmp_path, attn):
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            use_cache=False,
            attn_implementation=attn,
        )
    ).eval()
    dataset = prepared(tmp_path, docs(), max_length=16, packing=True).train
    collate = collator(Tok(), packing=True)
    checked = 0
    for row in dataset:
        batch = collate([row])
        assert "attention_mask" not in batch
        with torch.no_grad():
            packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        start = 0
        for length in row["seq_lengths"]:
            ids = batch["input_ids"][0, start : start + length]
            assert batch["position_ids"][0, start : start + length].tolist() == list(range(length))
            with torch.no_grad():
                alone = model(input_ids=ids[None]).logits[0]
            torch.testing.assert_close(packed[start : start + length], alone, atol=1e-5, rtol=1e-5)
            start += length
            checked += 1
    assert checked == 4 and len(dataset) < 4  # every document checked, and some shared a row


def test_truncation_and_rows_without_targets_are_counted(tmp_path):
    report = DataReport()
    examples = [
        (list(range(20)), [-100] * 15 + list(range(15, 20))),  # truncated to 10: nothing trained is left
        (list(range(12)), [-100] * 2 + list(range(2, 12))),  # truncated, keeps targets
        (list(range(4)), list(range(4))),
        (list(range(30)), [-100] * 30),  # nothing trained before truncation: counted apart, not as truncated
    ]
    dataset = prepared(tmp_path, examples, report, max_length=10, packing=False).train
    assert len(dataset) == 2
    assert report.counts["train_truncated"] == 2
    assert report.dropped == {
        "train: no trained token after truncation to max_length=10": 1,
        "train: no trained token in the row": 1,
    }
    assert report.counts["train_trained_tokens"] == 8 + 3


def test_preview_is_what_the_collator_returns(tmp_path):
    dataset = prepared(tmp_path, docs(), max_length=16, packing=True).train
    preview = write_preview(dataset, collator(Tok(), packing=True), str(tmp_path))
    assert read_jsonl(tmp_path / "data_preview.jsonl") == preview
    assert set(preview[0]) == {"input_ids", "labels", "position_ids"}
    assert show_example(Tok(), {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}) == "<1>[[<2><3>]]"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("real_tokenizers")


@pytest.mark.parametrize(
    "family, prompt, answer",
    [
        ("qwen3", "天气怎么样？\n", "北京明天晴，𠀋🦜。"),  # byte-level BPE: 𠀋 and 🦜 are several tokens each
        ("llama3", "Parrot?\n", "🦜 and 𝄞 ok"),
        ("phi3", "Hello world,\n", "how are you? 你好 🙂"),  # SentencePiece: a token alone loses its leading space
    ],
)
def test_preview_shows_the_exact_text_with_the_trained_part_marked(root, family, prompt, answer):
    tokenizer = load(family, root)
    encoded = tokenizer(prompt + answer, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    labels = [t if start >= len(prompt) else -100 for t, (start, _) in zip(ids, encoded["offset_mapping"], strict=True)]
    shown = show_example(tokenizer, {"input_ids": ids, "labels": labels})
    assert shown == f"{prompt}[[{answer}]]"
    assert shown.replace("[[", "").replace("]]", "") == tokenizer.decode(ids)


@pytest.mark.parametrize(
    "trained, expected",
    [
        ([0, 0, 0, 1, 1, 1], "Parrot [[🦜 ok]]"),
        ([1, 1, 1, 0, 0, 0], "[[Parrot ]]🦜 ok"),
    ],
)
def test_preview_shows_a_character_split_at_a_marker_after_it(root, trained, expected):
    """Qwen3 writes "Parrot 🦜 ok" as Par|rot| \\xf0\\x9f|\\xa6|\\x9c| ok: the marker falls inside the emoji, which
    shows whole, with the tokens that end it."""
    tokenizer = load("qwen3", root)
    ids = tokenizer("Parrot 🦜 ok", add_special_tokens=False)["input_ids"]
    assert len(ids) == len(trained)
    shown = show_example(
        tokenizer, {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, trained, strict=True)]}
    )
    assert shown == expected


def test_packing_keeps_every_example_once_and_mixes_lengths():
    # Two kinds of example that differ in length: packing by length would put each kind in rows of its own.
    short = [{"input_ids": [1] * 3, "labels": [1] * 3} for _ in range(50)]
    long = [{"input_ids": [2] * 10, "labels": [2] * 10} for _ in range(50)]
    rows = pack_in_random_order(short + long, max_length=64, seed=0)
    assert all(len(r["input_ids"]) <= 64 and sum(r["seq_lengths"]) == len(r["input_ids"]) for r in rows)
    assert sorted(n for r in rows for n in r["seq_lengths"]) == [3] * 50 + [10] * 50
    assert sum(len(r["input_ids"]) for r in rows) / (64 * len(rows)) > 0.9  # rows stay nearly full
    mixed = [r for r in rows if {1, 2} <= set(r["input_ids"])]
    assert len(mixed) >= 0.8 * len(rows)


@pytest.mark.parametrize(
    "batch_size, expected_row_length",
    [(None, 64), (100, 64), (4, 4 * 6), (1, 10)],  # never shorter than the longest example (10)
)
def test_packed_rows_hold_about_batch_size_examples(tmp_path, batch_size, expected_row_length):
    examples = [(list(range(n)), list(range(n))) for n in [2, 6, 10] * 10]  # mean length 6
    report = DataReport()
    dataset = prepared(tmp_path, examples, report, max_length=64, packing=True, batch_size=batch_size).train
    assert report.counts["train_packed_row_length"] == expected_row_length
    assert max(len(ids) for ids in dataset["input_ids"]) <= expected_row_length
