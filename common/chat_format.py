"""Chat format: the tokenizer's chat tokens and template (special tokens, or a native template), and row checks.

Masks are in common.chat_masks, native template choice in common.chat_templates, reasoning in common.reasoning.
"""

from common.errors import UserError
from common.chat_templates import ChatSpec, chat_spec, use_training_template
from common.models import add_pad_token
from common.reasoning import reasoning_problem

ROLE_TOKENS = {"system": "<system>", "user": "<user>", "assistant": "<assistant>"}
END_OF_TURN = "<eot>"
# End-of-turn tokens of common instruct models, for chat_format="native".
NATIVE_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")

# `{% generation %}` marks what the loss is taken on: assistant reasoning (as a <think> block), content and the
# end-of-turn token, on every assistant turn, so a conversation renders the same at inference as in training.
TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<assistant>{% generation %}"
    "{%- if message['reasoning_content'] is string and message['reasoning_content'] -%}"
    "<think>{{ message['reasoning_content'] }}</think>"
    "{%- endif -%}"
    "{{ message['content'] }}<eot>{% endgeneration %}"
    "{%- else -%}"
    "<{{ message['role'] }}>{{ message['content'] }}<eot>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<assistant>{%- endif -%}"
)


def prepare_tokenizer(tokenizer, chat_format: str, chat_template: str = "", reasoning: str = "keep") -> ChatSpec:
    """Give the tokenizer its chat template (ours with chat tokens, or the native one a run trains with), and a
    dedicated pad token (never eos). The spec's new_token_ids are the added tokens, whose embedding rows must be
    initialised and trained."""
    before = len(tokenizer)
    if chat_format == "special_tokens":
        if chat_template:
            raise UserError("chat_template applies to chat_format=native; special_tokens uses its own template")
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [*ROLE_TOKENS.values(), END_OF_TURN]}, replace_extra_special_tokens=False
        )
        tokenizer.chat_template = TEMPLATE
        source = "special tokens, generation markers"
    else:
        source = use_training_template(tokenizer, chat_template)
    spec = chat_spec(tokenizer, source, reasoning)
    add_pad_token(tokenizer, end_of_turn_ids(tokenizer, chat_format, spec))
    spec.new_token_ids = list(range(before, len(tokenizer)))
    return spec


def end_of_turn_ids(tokenizer, chat_format: str, spec: ChatSpec | None = None) -> list[int]:
    """Token ids that end an assistant turn: generation stops at any of them. For a native template, the token
    its assistant turns end on (found by rendering one) joins the usual ones."""
    from common.chat_masks import trained_stop_token

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
        problem = reasoning_problem(message) if role == "assistant" else None
        if problem:
            return f"messages[{i}] {problem}"
    if not any(m["role"] == "assistant" for m in messages):
        return "conversation has no assistant turn"
    return None
