"""Chat format: the special tokens, the chat template, embedding resize, and loss masks for chat rows."""

from common.errors import UserError
from common.models import add_pad_token

ROLE_TOKENS = {"system": "<system>", "user": "<user>", "assistant": "<assistant>"}
END_OF_TURN = "<eot>"
# End-of-turn tokens of common instruct models, for chat_format="native".
NATIVE_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")

# `{% generation %}` marks what the loss is taken on: assistant content plus its end-of-turn token.
TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<assistant>{% generation %}{{ message['content'] }}<eot>{% endgeneration %}"
    "{%- else -%}"
    "<{{ message['role'] }}>{{ message['content'] }}<eot>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<assistant>{%- endif -%}"
)


def prepare_tokenizer(tokenizer, chat_format: str) -> list[int]:
    """Give the tokenizer its chat tokens, a dedicated pad token (never eos) and its chat template.

    Returns the ids of the tokens it added, whose embedding rows must be initialised and trained.
    """
    before = len(tokenizer)
    if chat_format == "special_tokens":
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [*ROLE_TOKENS.values(), END_OF_TURN]}, replace_extra_special_tokens=False
        )
        tokenizer.chat_template = TEMPLATE
    elif not tokenizer.chat_template:
        raise UserError("chat_format=native needs a model whose tokenizer has a chat template; use special_tokens")
    add_pad_token(tokenizer, end_of_turn_ids(tokenizer, chat_format))
    return list(range(before, len(tokenizer)))


def end_of_turn_ids(tokenizer, chat_format: str) -> list[int]:
    """Token ids that end an assistant turn: generation stops at any of them."""
    names = [END_OF_TURN] if chat_format == "special_tokens" else list(NATIVE_END_TOKENS)
    vocab = tokenizer.get_vocab()
    ids = [vocab[name] for name in names if name in vocab]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def validate_messages(messages) -> str | None:
    """Why a chat row's messages are unusable, or None when they are fine."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] must be an object with role and content"
        role, content = message.get("role"), message.get("content")
        if role not in ROLE_TOKENS:
            return f"messages[{i}] has unknown role {role!r} (expected system, user or assistant)"
        if not isinstance(content, str):
            return f"messages[{i}] content must be a string, got {type(content).__name__}"
    if not any(m["role"] == "assistant" for m in messages):
        return "conversation has no assistant turn"
    return None


def tokenize_chat(tokenizer, messages: list[dict], loss_on: str = "all_assistant") -> tuple[list[int], list[int]]:
    """input_ids and labels for one conversation; labels are -100 except on the trained assistant tokens."""
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if "{% generation %}" in (tokenizer.chat_template or "") or "{%generation%}" in (tokenizer.chat_template or ""):
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        input_ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    else:
        input_ids, mask = _mask_by_prefixes(tokenizer, messages)
    if loss_on == "last_assistant":
        mask = _last_span_only(mask)
    return input_ids, [t if m else -100 for t, m in zip(input_ids, mask)]


def _mask_by_prefixes(tokenizer, messages):
    """Assistant spans for templates without generation markers: the tokens each assistant turn adds."""
    def ids(msgs, gen):
        return list(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, add_generation_prompt=gen)["input_ids"])

    full = ids(messages, False)
    mask = [0] * len(full)
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            start = len(ids(messages[:i], True)) if i else 0
            end = len(ids(messages[: i + 1], False))
            mask[start:end] = [1] * (end - start)
    return full, mask


def _last_span_only(mask: list[int]) -> list[int]:
    end = max((i for i, m in enumerate(mask) if m), default=-1) + 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return [1 if start <= i < end else 0 for i in range(len(mask))]
