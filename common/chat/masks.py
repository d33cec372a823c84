"""Loss masks for chat rows: input_ids and labels from the chat template, exact or refused with a reason.

With generation markers (our special-tokens template, TRL's training variants, a user's marked template) the
template says what is trained. Without, each assistant turn's tokens are found by rendering growing prefixes,
and that is used only where it is exact on the row: the prompt with its generation prompt must be a literal
token prefix of the conversation up to the assistant turn, and that a literal prefix of the whole row. Either
way the trained tokens must hold every trained assistant turn's text (and reasoning), in order; a row where
they do not is refused (RowProblem), never trained with a wrong mask.
"""

from jinja2 import TemplateError
from transformers.utils.chat_template_utils import render_jinja_template

from common.chat.reasoning import with_reasoning
from common.chat.template import FIX, PROBES, ChatSpec, chat_spec, prepare_messages
from common.chat.tools import calls_text, normalize_message, normalize_tools
from common.errors import Dropped, RowProblem


def tokenize_chat(
    tokenizer, messages: list[dict], loss_on: str = "all_assistant", spec: ChatSpec | None = None, tools=None
) -> tuple[list[int], list[int]]:
    """input_ids and labels for one (checked) conversation and its tools; labels are -100 except on the trained
    assistant tokens (reasoning, content, tool calls, end of turn) of the turns trained_turns selects."""
    spec = spec or chat_spec(tokenizer, "")
    tools = normalize_tools(tools)
    trained = trained_turns(messages, loss_on)
    messages = rendered_messages(messages, spec, tools)
    input_ids, mask = render_with_mask(tokenizer, messages, spec, tools)
    turns = [m for m in messages if m["role"] == "assistant"]
    found, mask = _turn_spans(mask, turns), [0] * len(mask)
    for (start, end), keep in zip(found, trained, strict=True):
        mask[start:end] = [int(keep)] * (end - start)
    _check_trained_text(tokenizer, input_ids, mask, [t for t, keep in zip(turns, trained, strict=True) if keep])
    return input_ids, [t if m else -100 for t, m in zip(input_ids, mask, strict=False)]


def trained_turns(messages: list[dict], loss_on: str) -> list[bool]:
    """Which assistant turns take loss: every one or the last (loss_on), less those marked `train: false` (other
    tools' marks, read into it by common/layouts.py)."""
    trained = [m.get("train") is not False for m in messages if m["role"] == "assistant"]
    return [False] * (len(trained) - 1) + trained[-1:] if loss_on == "last_assistant" else trained


def rendered_messages(messages: list[dict], spec: ChatSpec, tools: list) -> list[dict]:
    """Checked messages as the template renders them: reasoning kept or dropped, calls normalized."""
    return prepare_messages([normalize_message(m) for m in with_reasoning(messages, spec.reasoning)], spec, tools)


def render_with_mask(
    tokenizer, messages: list[dict], spec: ChatSpec, tools: list | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered messages and a 0/1 mask of the assistant tokens the template trains."""
    try:
        if spec.prefix_masks:
            return prefix_mask(tokenizer, messages, tools)
        return marked_mask(tokenizer, messages, tools)
    except (TemplateError, TypeError) as e:  # the template's raise_exception, or an operation it cannot do on the row
        raise RowProblem(f"the chat template rejects this row: {e}") from None


def marked_mask(tokenizer, messages: list[dict], tools: list | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the rendered messages and a mask of the tokens that start inside a {% generation %} block.

    Rendered and tokenized as apply_chat_template does; its own assistant mask is not used because it trains the
    token holding a block's first character even when that token starts before the block: an added token with
    rstrip=True (Phi-3's <|assistant|>) swallows the whitespace an answer starts with, and the role token would be
    trained. That whitespace is lost at inference too (the prompt ends in the same token), so the turn trains from
    its first token after it; a token that held answer text as well is caught by the trained-text check."""
    [text], [blocks] = render_jinja_template(
        [[{key: value for key, value in m.items() if value is not None} for m in messages]],
        tools=tools or None,
        chat_template=tokenizer.get_chat_template(None, tools or None),
        return_assistant_tokens_mask=True,
        **tokenizer.special_tokens_map,
    )
    out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(start <= at < end for start, end in blocks)) for at, _ in out["offset_mapping"]]
    return list(out["input_ids"]), mask


def prefix_mask(tokenizer, messages: list[dict], tools: list | None = None) -> tuple[list[int], list[int]]:
    """Assistant spans as the tokens each assistant turn adds to the rendered prefix, checked to be exact."""

    def ids(msgs, generation_prompt):
        return list(
            tokenizer.apply_chat_template(
                msgs, tools=tools or None, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
            )["input_ids"]
        )

    full = ids(messages, False)
    mask = [0] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if i == 0:
            raise RowProblem(f"an assistant turn comes first, which prefix rendering cannot place; {FIX}")
        prompt, turn = ids(messages[:i], True), ids(messages[: i + 1], False)
        if turn[: len(prompt)] != prompt:
            raise RowProblem(
                f"the chat template is not prefix-stable: its generation prompt is not a prefix of the "
                f"rendered assistant turn; {FIX}"
            )
        if full[: len(turn)] != turn:
            raise RowProblem(
                f"the chat template is not prefix-stable: a conversation ending in an assistant turn "
                f"does not render as a prefix of the whole row; {FIX}"
            )
        mask[len(prompt) : len(turn)] = [1] * (len(turn) - len(prompt))
    return full, mask


def prompt_and_answer(
    tokenizer, prompt: list[dict], answer: list[dict], spec: ChatSpec, tools=None
) -> tuple[list[int], list[int]]:
    """(prompt_ids, answer_ids) of a conversation rendered whole: the answer is its assistant turns' trained
    tokens (with the end-of-turn token), the prompt everything before them, as in training (DPO's pairs)."""
    tools = normalize_tools(tools)
    messages = rendered_messages(prompt + answer, spec, tools)
    input_ids, mask = render_with_mask(tokenizer, messages, spec, tools)
    turns = [m for m in messages if m["role"] == "assistant"]
    found = _turn_spans(mask, turns)
    first = len(turns) - sum(m["role"] == "assistant" for m in answer)
    start, end = found[first][0], found[-1][1]
    _check_trained_text(tokenizer, input_ids, [1 if start <= i < end else 0 for i in range(len(mask))], turns[first:])
    return input_ids[:start], input_ids[start:end]


def trained_stop_token(tokenizer, spec: ChatSpec) -> int | None:
    """The last token the template trains in an assistant turn followed by a user turn (its end-of-turn token)."""
    try:
        input_ids, mask = render_with_mask(tokenizer, prepare_messages(PROBES[2][:3], spec), spec)
    except RowProblem:
        return None
    trained = [t for t, m in zip(input_ids, mask, strict=False) if m and tokenizer.decode([t]).strip()]
    added = set(tokenizer.get_added_vocab().values())  # a content token is no end of turn
    return trained[-1] if trained and trained[-1] in added else None


def spans(mask: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of 1s."""
    out, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def _turn_spans(mask: list[int], turns: list[dict]) -> list[tuple[int, int]]:
    """The mask's spans, one per assistant turn, as loss_on=last_assistant and DPO's answers take them. A template
    can split a turn (DiffusionGemma's training variant trains the text of a turn with calls after the tool results,
    unterminated) or join two: such a row is refused."""
    found = spans(mask)
    if len(found) != len(turns):
        raise RowProblem(
            f"the chat template's mask does not give each assistant turn a span of its own ({len(found)} "
            f"trained spans for {len(turns)} assistant turns); {FIX}"
        )
    return found


def _check_trained_text(tokenizer, input_ids: list[int], mask: list[int], turns: list[dict]) -> None:
    """Every trained turn's reasoning, answer (stripped) and calls (names and plain string values) appear in the
    trained tokens, turn after turn, reasoning first. A turn's answer and calls may come in either order (Gemma 4
    writes the calls first) and a call's values in any order after its name (some templates sort them)."""
    trained = "\x00".join(tokenizer.decode(input_ids[a:b]) for a, b in spans(mask))

    def end_of(text: str, at: int, part: str) -> int:
        """Where text ends in the trained text, searched from at. Missing, it is refused for the mask when the
        template shows it, for the template when it does not."""
        text = text.strip()
        found = trained.find(text, at) if text else at
        if found >= 0:
            return found + len(text)
        if text in tokenizer.decode(input_ids):
            raise RowProblem(f"the chat template's mask leaves out part of an assistant turn; {FIX}")
        if part == "reasoning":
            raise RowProblem(
                "the chat template drops the reasoning of an assistant turn (it shows only the last "
                "turn's); set reasoning=drop, chat_template=path/to/template.jinja or "
                "chat_format=special_tokens"
            )
        raise RowProblem(f"the chat template does not show {part} of an assistant turn; {FIX}")

    at = 0
    for turn in turns:
        at = end_of(turn.get("reasoning_content") or "", at, "reasoning")
        answer = end_of(
            turn["content"], at, "the text next to the tool calls" if turn.get("tool_calls") else "the text"
        )
        call = at
        for name, *values in (calls_text([c]) for c in turn.get("tool_calls") or []):
            call = end_of(name, call, "every tool call")
            call = max([call, *(end_of(value, call, "the arguments of every tool call") for value in values)])
        at = max(answer, call)


def chat_example(tokenizer, spec: ChatSpec, loss_on: str, row: dict) -> tuple[list[dict], dict]:
    """A checked chat row as its one example, and the counts it adds to the report (system turns folded into the
    user turn, reasoning turns); raises RowProblem when the template cannot render it exactly, Dropped when no turn
    it would train is left unmarked."""
    messages = row["messages"]
    if not any(trained_turns(messages, loss_on)):
        which = "the last" if loss_on == "last_assistant" else "each"
        raise Dropped(f"no assistant turn to train: {which} is marked train: false")
    input_ids, labels = tokenize_chat(tokenizer, messages, loss_on, spec, row.get("tools"))
    counts = {}
    if spec.fold_system and len(messages) > 1 and messages[0]["role"] == "system":
        counts["system_turns_folded_into_user"] = 1
    reasoning_turns = sum(bool(m.get("reasoning_content")) for m in with_reasoning(messages, "keep"))
    if reasoning_turns:
        counts[f"assistant_turns_with_reasoning_{'trained' if spec.reasoning == 'keep' else 'dropped'}"] = (
            reasoning_turns
        )
    return [{"input_ids": input_ids, "labels": labels}], counts
