import pytest
from transformers import AutoTokenizer

from common.chat.masks import tokenize_chat
from common.chat.own_format import END_OF_TURN
from common.chat.rows import validate_messages
from common.chat.tokenizer import end_of_turn_ids, prepare_tokenizer
from common.models import BUILTIN
from tests.conftest import trained_spans

CALL = "set_timer(minutes=5)"
MULTI_TURN = [
    {"role": "system", "content": "Answer with one call."},
    {"role": "user", "content": "Set a timer for 5 minutes"},
    {"role": "assistant", "content": CALL},
    {"role": "user", "content": f"Now repeat {CALL} exactly"},  # the assistant text inside a user turn
    {"role": "assistant", "content": 'play_music(artist="Adele")'},
]


@pytest.fixture()
def tokenizer():
    tok = AutoTokenizer.from_pretrained(BUILTIN["builtin:tiny"])
    prepare_tokenizer(tok, "special_tokens")
    return tok


def test_special_tokens_and_pad(tokenizer):
    for token in ("<system>", "<user>", "<assistant>", END_OF_TURN):
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1, token
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.pad_token_id not in end_of_turn_ids(tokenizer, "special_tokens")
    assert tokenizer.convert_tokens_to_ids(END_OF_TURN) in end_of_turn_ids(tokenizer, "special_tokens")


@pytest.mark.parametrize(
    "loss_on, expected",
    [
        ("all_assistant", [CALL + END_OF_TURN, 'play_music(artist="Adele")' + END_OF_TURN]),
        ("last_assistant", ['play_music(artist="Adele")' + END_OF_TURN]),
    ],
)
def test_labels_cover_exactly_assistant_content_and_end_of_turn(tokenizer, loss_on, expected):
    input_ids, labels = tokenize_chat(tokenizer, MULTI_TURN, loss_on)
    assert trained_spans(tokenizer, {"input_ids": input_ids, "labels": labels}) == expected
    assert [t for t, lab in zip(input_ids, labels, strict=False) if lab != -100] == [
        lab for lab in labels if lab != -100
    ]


def test_native_template_without_generation_markers(tokenizer):
    # A template with no {% generation %} markers: the masks come from rendering growing prefixes.
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<eot>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    input_ids, labels = tokenize_chat(tokenizer, MULTI_TURN)
    assert trained_spans(tokenizer, {"input_ids": input_ids, "labels": labels}) == [
        CALL + END_OF_TURN,
        'play_music(artist="Adele")' + END_OF_TURN,
    ]


@pytest.mark.parametrize(
    "messages, problem",
    [
        ([], "non-empty list"),
        ("hi", "non-empty list"),
        ([{"role": "user", "content": "hi"}], "no assistant turn"),
        ([{"role": "bot", "content": "hi"}], "unknown role 'bot'"),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}], "content must be a string"),
        (["hi"], "must be an object"),
    ],
)
def test_validate_messages(messages, problem):
    assert problem in validate_messages(messages)


def test_validate_messages_accepts_good_rows():
    assert validate_messages(MULTI_TURN) is None
