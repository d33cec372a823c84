"""The tokenizer made ready for a chat format: our special tokens and template, or the native template a run
trains with (common.chat.native), a dedicated pad token, and the ids that end an assistant turn."""

from common.chat.masks import trained_stop_token
from common.chat.native import use_training_template
from common.chat.own_format import (
    CALL,
    END_OF_TURN,
    RESPONSE_TEMPLATE,
    ROLE_TOKENS,
    function_tokens_of,
    special_tokens_template,
)
from common.chat.template import ChatSpec, chat_spec
from common.errors import UserError
from common.models import add_pad_token

# End-of-turn tokens of common instruct models, for chat_format="native".
NATIVE_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


def prepare_tokenizer(tokenizer, chat_format: str, chat_template: str = "", reasoning: str = "keep") -> ChatSpec:
    """Give the tokenizer its chat template (ours with chat tokens, or the native one a run trains with), and a
    pad token that is never a stop token (common.models.add_pad_token). The spec's new_token_ids are the added
    tokens, whose embedding rows must be initialised and trained."""
    before = len(tokenizer)
    if chat_format == "special_tokens":
        if chat_template:
            raise UserError("chat_template applies to chat_format=native; special_tokens uses its own template")
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [*ROLE_TOKENS.values(), CALL, END_OF_TURN]},
            replace_extra_special_tokens=False,
        )
        # a model trained here with function tokens (dpo.py after sft_chat.py) keeps rendering calls with them
        tokenizer.chat_template = special_tokens_template(function_tokens_of(tokenizer))
        tokenizer.response_template = RESPONSE_TEMPLATE
        source = "special tokens, generation markers"
    else:
        source = use_training_template(tokenizer, chat_template, reasoning)
    spec = chat_spec(tokenizer, source, reasoning)
    add_pad_token(tokenizer, end_of_turn_ids(tokenizer, chat_format, spec), chat_ids=range(before, len(tokenizer)))
    spec.new_token_ids = list(range(before, len(tokenizer)))
    return spec


def end_of_turn_ids(tokenizer, chat_format: str, spec: ChatSpec | None = None) -> list[int]:
    """Token ids that end an assistant turn: generation stops at any of them. For a native template, the token
    its assistant turns end on (found by rendering one) joins the usual ones."""
    names = [END_OF_TURN] if chat_format == "special_tokens" else list(NATIVE_END_TOKENS)
    vocab = tokenizer.get_vocab()
    ids = [vocab[name] for name in names if name in vocab]
    if chat_format == "native":
        stop = trained_stop_token(tokenizer, spec or chat_spec(tokenizer, ""))
        if stop is not None and stop not in ids:
            ids.append(stop)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
