import pytest
from tokenizers import Tokenizer, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from common.completion_format import adds_bos, check_template, completion_row_problem, tokenize_completion_row
from common.errors import UserError
from common.models import BUILTIN

TEMPLATE = "Request: {prompt}\nCall: "


@pytest.fixture()
def tokenizer():
    return AutoTokenizer.from_pretrained(BUILTIN["builtin:tiny"])


@pytest.fixture()
def bos_tokenizer():
    """The built-in vocabulary with a separate <s> that the tokenizer puts in front of all text, as Llama's does."""
    raw = Tokenizer.from_file(f"{BUILTIN['builtin:tiny']}/tokenizer.json")
    raw.add_special_tokens(["<s>"])
    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", raw.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="<|endoftext|>")


def trained(tokenizer, ids, labels):
    return tokenizer.decode([t for t, lab in zip(ids, labels, strict=False) if lab != -100])


@pytest.mark.parametrize(
    "row, problem",
    [
        ({"text": "a", "prompt": "b", "completion": "c"}, "both 'text' and 'prompt'/'completion'"),
        ({"input": "a", "output": "b"}, "neither 'text' nor 'prompt' and 'completion'"),
        ({"prompt": "a"}, "no 'completion' field"),
        ({"completion": "a"}, "no 'prompt' field"),
        ({"prompt": "a", "completion": ""}, "'completion' is empty"),
        ({"prompt": "a", "completion": "  \n"}, "'completion' is empty"),
        ({"text": ""}, "'text' is empty"),
        ({"text": ["a"]}, "'text' must be a string, got list"),
        ({"prompt": 3, "completion": "x"}, "'prompt' must be a string, got int"),
        ({"prompt": "x", "completion": None}, "'completion' must be a string, got NoneType"),
    ],
)
def test_row_problems(row, problem):
    assert problem in completion_row_problem(row)


@pytest.mark.parametrize("row", [{"text": "a"}, {"prompt": "", "completion": "x"}, {"prompt": "p", "completion": "c"}])
def test_good_rows(row):
    assert completion_row_problem(row) is None


def test_prompt_completion_trains_on_completion_and_eos_only(tokenizer):
    row = {"prompt": "Play Adele", "completion": 'play_music(artist="Adele")'}
    [(ids, labels)] = tokenize_completion_row(tokenizer, row, TEMPLATE, 512)
    assert trained(tokenizer, ids, labels) == 'play_music(artist="Adele")<|endoftext|>'
    assert ids[-1] == tokenizer.eos_token_id and labels[-1] == tokenizer.eos_token_id
    # The prompt side is exactly what plain transformers gives for the formatted prompt at inference.
    prompt_ids = tokenizer(TEMPLATE.format(prompt="Play Adele"))["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids and labels[: len(prompt_ids)] == [-100] * len(prompt_ids)


def test_text_trains_on_every_token_and_ends_with_eos(tokenizer):
    [(ids, labels)] = tokenize_completion_row(tokenizer, {"text": "Set a timer for 5 minutes"}, TEMPLATE, 512)
    assert ids == labels and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids) == "Set a timer for 5 minutes<|endoftext|>"


def test_long_text_is_cut_into_pieces_not_truncated(tokenizer):
    text = " ".join(["Set a timer for 5 minutes"] * 20)
    whole = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    pieces = tokenize_completion_row(tokenizer, {"text": text}, TEMPLATE, 16)
    assert all(len(ids) <= 16 and ids == labels for ids, labels in pieces)
    assert [t for ids, _ in pieces for t in ids] == whole


def test_bos_once_when_the_tokenizer_adds_it(bos_tokenizer):
    tok = bos_tokenizer
    bos = tok.bos_token_id
    assert adds_bos(tok)
    template = check_template("<s>Q: {prompt}\nA:", tok)  # a literal BOS in the template is dropped
    assert template == "Q: {prompt}\nA:"
    [(ids, labels)] = tokenize_completion_row(tok, {"prompt": "hi", "completion": "yes"}, template, 512)
    assert ids[0] == bos and ids.count(bos) == 1
    prompt_ids = tok(template.format(prompt="hi"))["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids and trained(tok, ids, labels) == "yes<|endoftext|>"
    for text in ("hello there", "<s>hello there"):  # text that already starts with BOS keeps just one
        [(ids, _)] = tokenize_completion_row(tok, {"text": text}, template, 512)
        assert ids[:2] == [bos, tok("hello")["input_ids"][1]] and ids.count(bos) == 1


def test_no_bos_added_when_the_tokenizer_adds_none(tokenizer):
    assert not adds_bos(tokenizer)  # the built-in tokenizer's BOS is its EOS, and it adds neither
    [(ids, _)] = tokenize_completion_row(tokenizer, {"prompt": "hi", "completion": "yes"}, "{prompt}\n", 512)
    assert ids.count(tokenizer.eos_token_id) == 1


@pytest.mark.parametrize(
    "template, message",
    [
        ("Q: {question}\nA:", "only {prompt}"),
        ("Q: {prompt", "only {prompt}"),
        ("Q: {0}", "only {prompt}"),
        ("Question and answer:", "must contain {prompt}"),
    ],
)
def test_bad_templates(tokenizer, template, message):
    with pytest.raises(UserError, match=message.replace("{", r"\{").replace("}", r"\}")):
        check_template(template, tokenizer)


def test_literal_braces_are_allowed(tokenizer):
    assert check_template('{{"q": "{prompt}"}}\n', tokenizer).format(prompt="x") == '{"q": "x"}\n'
