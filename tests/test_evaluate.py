"""common/evaluate.py: how many tokens the held-out evaluation generates, and where it stops an answer early."""

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from common.chat.tokenizer import prepare_tokenizer
from common.evaluate import Example, HopelessAnswer, answer_budget, generate_answers, is_exact_match, read_examples
from tests.real_tokenizers import shared_folder, tiny_model_folder

HELD_OUT = read_examples("data/examples/chat_test.jsonl", 0)
TOOL_CALLS = read_examples("data/examples/tools_test.jsonl", 40)


@pytest.mark.parametrize("family", ["llama3", "phi3", "qwen2.5", "qwen3", "smollm3"])
def test_the_budget_covers_the_longest_reference_text_or_rendered_call(family, tmp_path_factory):
    """Text: the longest reference plus 16 tokens, reasoning templates too (the budget starts after a think block).
    Calls: twice the longest call as the template renders it after the prompt, plus 16."""
    tokenizer = AutoTokenizer.from_pretrained(shared_folder(family, str(tmp_path_factory.getbasetemp())))
    prompts = [e.prompt for e in HELD_OUT]
    longest = max(len(tokenizer(e.reference, add_special_tokens=False)["input_ids"]) for e in HELD_OUT)
    assert answer_budget(tokenizer, prompts, HELD_OUT) == longest + 16 < 128
    assert answer_budget(tokenizer, ["p"], [Example("p", "x" * 2000)]) == 128

    prepare_tokenizer(tokenizer, "special_tokens")  # our template renders calls: <call>name{arguments}<eot>
    rendered = [
        tokenizer.apply_chat_template([*e.prompt, e.reference], tools=e.tools, tokenize=False) for e in TOOL_CALLS
    ]
    answers = [r.rsplit("<assistant>", 1)[1] for r in rendered]
    longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    assert answer_budget(tokenizer, [e.prompt for e in TOOL_CALLS], TOOL_CALLS) == 2 * longest + 16 < 128
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m.role }}{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    )
    assert answer_budget(tokenizer, [TOOL_CALLS[0].prompt], TOOL_CALLS[:1]) == 128  # the prompt is not its prefix


# References with characters that split across byte-level tokens (an emoji, CJK, accents) and punctuation that
# decoding may join to the word before it.
UNICODE_REFERENCES = ['play_music(artist="Beyoncé")', "天气 ☀️ 🎵 ok", "No , it isn't ."]


@pytest.mark.parametrize("family", ["llama3", "phi3", "qwen2.5"])
def test_an_answer_is_stopped_only_once_it_can_no_longer_match(family, tmp_path_factory):
    """Every prefix of a matching answer's tokens (with or without a leading space or newline, cut inside a
    character too) goes on; an answer that left the reference, or ran past it, stops: cutting never turns a hit
    into a miss."""
    tokenizer = AutoTokenizer.from_pretrained(shared_folder(family, str(tmp_path_factory.getbasetemp())))
    references = [e.reference for e in HELD_OUT[:20]] + UNICODE_REFERENCES
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731

    def stopped(answers: list[list[int]], budget: int = 128, raw: bool = False) -> list[bool]:
        width = max(map(len, answers))
        prompt = torch.zeros((len(answers), 3), dtype=torch.long)  # what the rule skips
        rows = torch.tensor([a + [tokenizer.eos_token_id] * (width - len(a)) for a in answers])  # as generate pads
        rule = HopelessAnswer(tokenizer, references[: len(answers)], budget=budget, prompt_length=3, raw=raw)
        return rule(torch.cat([prompt, rows], 1), None).tolist()

    for lead in ("", " ", "\n"):
        full = [encode(lead + r) for r in references]
        for length in range(1, max(map(len, full)) + 1):
            assert not any(stopped([ids[:length] for ids in full])), (lead, length)
    assert all(is_exact_match(r + "  \n", r) for r in references)
    assert not any(stopped([encode(r + "  \n") for r in references]))
    assert all(stopped([encode("Sure! " + r) for r in references]))
    assert all(stopped([encode(r + " and more") for r in references]))
    thinking = encode("<think>" + " and so on" * 100)
    assert not any(stopped([encode("<th"), thinking, encode("<think>a</think>" + references[2])]))
    assert all(stopped([encode("<think>a</think>Sure"), encode("<think>a</think>" + references[1] + " more")]))
    assert stopped([encode(" word" * 30)], budget=29, raw=True) == [True]  # raw (parsed) answers: the budget alone
    assert stopped([encode(" word" * 29)], budget=29, raw=True) == [False]


class Scripted(LlamaForCausalLM):
    """Writes script[row][step] at every step, whatever it reads: rows that stop at different steps."""

    script: list[list[int]] = []

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        step = kwargs["past_key_values"].get_seq_length() - self.prompt_width  # tokens read so far
        logits = torch.full_like(out.logits[:, -1:], -1e9)
        for row, tokens in enumerate(self.script):
            logits[row, 0, tokens[min(step, len(tokens) - 1)]] = 0
        out.logits = logits
        return out


def test_an_answer_stopped_early_keeps_only_what_it_wrote(tmp_path_factory):
    """generate pads a row stopped before the rest of its batch: a raw answer (special tokens kept for the parser)
    must not end in that padding (it did before the fix); a text answer gets the same tokens."""
    folder = tiny_model_folder("qwen2.5", tmp_path_factory.getbasetemp())
    tokenizer, model = AutoTokenizer.from_pretrained(folder), Scripted.from_pretrained(folder)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id  # <|endoftext|>: not the stop
    prose, thought = encode(" word" * 40), encode("<think>" + " hmm" * 20 + "</think>yes") + [stop]
    model.script, model.prompt_width = [prose, thought], len(encode("a"))
    for raw in (True, False):
        answers = generate_answers(
            model,
            tokenizer,
            ["a", "b"],
            raw=raw,
            stops=[stop],
            references=[" word" * 40, "yes"],  # the first row runs past its budget
            answer_tokens=8,
            max_new_tokens=64,
        )
        assert answers == [tokenizer.decode(prose[:9]), tokenizer.decode(thought, skip_special_tokens=not raw)]
