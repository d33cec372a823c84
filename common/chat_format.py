"""Chat format: the tokenizer's chat tokens and template (special tokens, or a native template), and row checks.

The special-tokens template text is in common.special_tokens_template, masks in common.chat_masks, native template
choice in common.chat_templates, reasoning in common.reasoning, tool calls in common.tool_calls.
"""

from common.chat_templates import ChatSpec, chat_spec, use_training_template
from common.distributed import is_main
from common.errors import UserError
from common.models import add_pad_token
from common.reasoning import reasoning_problem
from common.special_tokens_template import FUNCTION_TOKEN, RESPONSE_TEMPLATE, special_tokens_template
from common.tool_calls import call_problem, tool_names, tools_problem

ROLE_TOKENS = {"system": "<system>", "user": "<user>", "assistant": "<assistant>", "tool": "<tool>"}
CALL = "<call>"  # opens a tool call inside an assistant turn: <call>name{arg:"value"}
END_OF_TURN = "<eot>"
# End-of-turn tokens of common instruct models, for chat_format="native".
NATIVE_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")
FUNCTION_TOKENS_FILE = "function_tokens.json"  # in final/: {function name: its token}
AUTO_FUNCTION_TOKENS = 64  # function_tokens=auto: a specialist's closed set of functions is at most this large


def prepare_tokenizer(tokenizer, chat_format: str, chat_template: str = "", reasoning: str = "keep") -> ChatSpec:
    """Give the tokenizer its chat template (ours with chat tokens, or the native one a run trains with), and a
    dedicated pad token (never eos). The spec's new_token_ids are the added tokens, whose embedding rows must be
    initialised and trained."""
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
        source = use_training_template(tokenizer, chat_template)
    spec = chat_spec(tokenizer, source, reasoning)
    add_pad_token(tokenizer, end_of_turn_ids(tokenizer, chat_format, spec))
    spec.new_token_ids = list(range(before, len(tokenizer)))
    return spec


def use_function_tokens(tokenizer, spec: ChatSpec, params: dict, names, report) -> dict[str, str]:
    """PARAMS function_tokens: a token for each function the training rows' tools name (names), or none ({}). "auto" takes
    them for a specialist's closed set of functions (at most AUTO_FUNCTION_TOKENS names) in the special-tokens
    format, and not for broad tool data, whose model must read schemas it has never seen."""
    setting = params["function_tokens"]
    if setting is True and params["chat_format"] != "special_tokens":
        raise UserError("function_tokens=true needs chat_format=special_tokens: a native template writes names as text")
    names = set(names)
    if setting == "auto":
        setting = params["chat_format"] == "special_tokens" and 0 < len(names) <= AUTO_FUNCTION_TOKENS
    if not setting or not names:
        return {}
    tokens = add_function_tokens(tokenizer, spec, names)
    report.counts["function_tokens"] = len(tokens)
    if is_main():
        print(f"function tokens: {len(tokens)}, one per function in the training rows' tools", flush=True)
    return tokens


def add_function_tokens(tokenizer, spec: ChatSpec, names) -> dict[str, str]:
    """One special token per function name (special_tokens format): a call is that token and its arguments, and
    the tools line of the function is the token. Returns {name: token} for every function token the tokenizer
    has, the mapping final/ keeps."""
    before = len(tokenizer)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [FUNCTION_TOKEN.format(n) for n in sorted(set(names))]},
        replace_extra_special_tokens=False,
    )
    tokens = function_tokens_of(tokenizer)
    tokenizer.chat_template = special_tokens_template(tokens)
    spec.new_token_ids += list(range(before, len(tokenizer)))
    return tokens


def function_tokens_of(tokenizer) -> dict[str, str]:
    """{name: token} of the function tokens the tokenizer already has."""
    prefix, suffix = FUNCTION_TOKEN.split("{}")
    return {
        token[len(prefix) : -len(suffix)]: token
        for token in tokenizer.get_added_vocab()
        if token.startswith(prefix) and token.endswith(suffix)
    }


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


def chat_row_problem(row: dict) -> str | None:
    """Why a chat row ({"messages", "tools"?}) is unusable, or None when it is fine."""
    if "messages" not in row:
        return "row has no 'messages' field"
    problem = tools_problem(row.get("tools"))
    return problem or validate_messages(row["messages"], set(tool_names(row.get("tools"))))


def validate_messages(messages, tool_names: set | None = None) -> str | None:
    """Why a conversation is unusable, or None when it is fine. tool_names: the functions its calls may name
    (None: calls are not checked against a schema, as for a generated answer scored later)."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    call_ids = None  # ids of the calls the latest assistant turn made; None: a tool result cannot come here
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] must be an object with role and content"
        role, content, calls = message.get("role"), message.get("content"), message.get("tool_calls")
        if role not in ROLE_TOKENS:
            return f"messages[{i}] has unknown role {role!r} (expected system, user, assistant or tool)"
        if calls is not None and (role != "assistant" or not isinstance(calls, list)):
            return f"messages[{i}] tool_calls must be a list on an assistant turn, got {type(calls).__name__} on {role}"
        if not isinstance(content, str) and not (role == "assistant" and content is None and calls):
            return f"messages[{i}] content must be a string, got {type(content).__name__}"
        for j, call in enumerate(calls or []):
            problem = call_problem(call, tool_names)
            if problem:
                return f"messages[{i}] tool_calls[{j}] {problem}"
        problem = reasoning_problem(message) if role == "assistant" else None
        if problem:
            return f"messages[{i}] {problem}"
        if role == "tool":
            if call_ids is None:
                return f"messages[{i}] is a tool result with no assistant tool call before it"
            if message.get("tool_call_id") and call_ids and message["tool_call_id"] not in call_ids:
                return f"messages[{i}] answers tool_call_id {message['tool_call_id']!r}, which no call before it has"
        else:
            call_ids = {c.get("id") for c in calls} - {None} if calls else None
    if not any(m["role"] == "assistant" for m in messages):
        return "conversation has no assistant turn"
    return None
