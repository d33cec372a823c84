"""Loss masks for chat rows: input_ids and labels from the chat template, exact or refused with a reason.

With generation markers (our special-tokens template, TRL's training variants, a user's marked template) the
template says what is trained. Without, each assistant turn's tokens are found by rendering growing prefixes,
and that is used only where it is exact on the row: the prompt with its generation prompt must be a literal
token prefix of the conversation up to the assistant turn, and that a literal prefix of the whole row. Either
way the trained tokens must hold every trained assistant turn's text (and reasoning), in order; a row where
they do not is refused (RowProblem), never trained with a wrong mask.
"""

from jinja2 import TemplateError

from common.chat_templates import FIX, ChatSpec, chat_spec, prepare_messages
from common.errors import RowProblem, UserError
from common.reasoning import with_reasoning


def tokenize_chat(tokenizer, messages: list[dict], loss_on: str = "all_assistant",
                  spec: ChatSpec | None = None) -> tuple[list[int], list[int]]:
    """input_ids and labels for one conversation; labels are -100 except on the trained assistant tokens."""
    spec = spec or chat_spec(tokenizer, "")
    messages = prepare_messages(with_reasoning(messages, spec.reasoning), spec)
    input_ids, mask = render_with_mask(tokenizer, messages, spec)
    turns = [m for m in messages if m["role"] == "assistant"]
    if loss_on == "last_assistant":
        mask, turns = _last_span_only(mask), turns[-1:]
    _check_trained_text(tokenizer, input_ids, mask, turns)
    return input_ids, [t if m else -100 for t, m in zip(input_ids, mask)]


def render_with_mask(tokenizer, messages: list[dict], spec: ChatSpec) -> tuple[list[int], list[int]]:
    """Token ids of the rendered messages and a 0/1 mask of the assistant tokens the template trains."""
    try:
        if spec.prefix_masks:
            return prefix_mask(tokenizer, messages)
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        return list(out["input_ids"]), list(out["assistant_masks"])
    except (TemplateError, TypeError) as e:  # the template's raise_exception, or an operation it cannot do on the row
        raise RowProblem(f"the chat template rejects this row: {e}") from None


def prefix_mask(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Assistant spans as the tokens each assistant turn adds to the rendered prefix, checked to be exact."""
    def ids(msgs, generation_prompt):
        return list(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True,
                                                  add_generation_prompt=generation_prompt)["input_ids"])

    full = ids(messages, False)
    mask = [0] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if i == 0:
            raise RowProblem(f"an assistant turn comes first, which prefix rendering cannot place; {FIX}")
        prompt, turn = ids(messages[:i], True), ids(messages[: i + 1], False)
        if turn[: len(prompt)] != prompt:
            raise RowProblem(f"the chat template is not prefix-stable: its generation prompt is not a prefix of the "
                             f"rendered assistant turn; {FIX}")
        if full[: len(turn)] != turn:
            raise RowProblem(f"the chat template is not prefix-stable: a conversation ending in an assistant turn "
                             f"does not render as a prefix of the whole row; {FIX}")
        mask[len(prompt) : len(turn)] = [1] * (len(turn) - len(prompt))
    return full, mask


def prompt_and_answer(tokenizer, prompt: list[dict], answer: list[dict], spec: ChatSpec) -> tuple[list[int], list[int]]:
    """(prompt_ids, answer_ids) of a conversation rendered whole: the answer is its assistant turns' trained
    tokens (with the end-of-turn token), the prompt everything before them, as in training (DPO's pairs)."""
    messages = prepare_messages(with_reasoning(prompt + answer, spec.reasoning), spec)
    input_ids, mask = render_with_mask(tokenizer, messages, spec)
    turns = [m for m in messages if m["role"] == "assistant"]
    found = spans(mask)
    if len(found) != len(turns):
        raise RowProblem(f"the chat template's mask does not separate the assistant turns; {FIX}")
    first = len(turns) - sum(m["role"] == "assistant" for m in answer)
    start, end = found[first][0], found[-1][1]
    _check_trained_text(tokenizer, input_ids, [1 if start <= i < end else 0 for i in range(len(mask))], turns[first:])
    return input_ids[:start], input_ids[start:end]


def trained_stop_token(tokenizer, spec: ChatSpec) -> int | None:
    """The last token the template trains in an assistant turn followed by a user turn (its end-of-turn token)."""
    from common.chat_templates import PROBES

    try:
        input_ids, mask = render_with_mask(tokenizer, prepare_messages(PROBES[2][:3], spec), spec)
    except RowProblem:
        return None
    trained = [t for t, m in zip(input_ids, mask) if m and tokenizer.decode([t]).strip()]
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


def _last_span_only(mask: list[int]) -> list[int]:
    found = spans(mask)
    start, end = found[-1] if found else (0, 0)
    return [1 if start <= i < end else 0 for i in range(len(mask))]


def _check_trained_text(tokenizer, input_ids: list[int], mask: list[int], turns: list[dict]) -> None:
    """Every trained turn's reasoning and answer (stripped) appear in the trained tokens, in order."""
    trained = "\x00".join(tokenizer.decode(input_ids[a:b]) for a, b in spans(mask))
    at = 0
    for turn in turns:
        for text, is_reasoning in ((turn.get("reasoning_content") or "", True), (turn["content"], False)):
            text = text.strip()
            found = trained.find(text, at) if text else at
            if found < 0 and is_reasoning and text not in tokenizer.decode(input_ids):
                raise RowProblem("the chat template drops the reasoning of an assistant turn (it shows only the last "
                                 "turn's); set reasoning=drop, chat_template=path/to/template.jinja or chat_format=special_tokens")
            if found < 0:
                raise RowProblem(f"the chat template's mask leaves out part of an assistant turn; {FIX}")
            at = found + len(text)


def chat_examples(tokenizer, rows, spec: ChatSpec, loss_on: str, on_bad_rows: str, report):
    """(input_ids, labels) per row; a row the template cannot render exactly stops the run with its file:line
    (on_bad_rows=error) or is dropped and counted under its reason. Folded system turns and reasoning turns are
    counted in the report."""
    folded = reasoning_turns = 0
    for row in rows:
        messages = row.data["messages"]
        try:
            yield tokenize_chat(tokenizer, messages, loss_on, spec)
        except RowProblem as e:
            if on_bad_rows == "error":
                raise UserError(f"{row.where}: {e}") from None
            report.drop(f"bad row: {e}")
            continue
        folded += spec.fold_system and len(messages) > 1 and messages[0]["role"] == "system"
        reasoning_turns += sum(bool(m.get("reasoning_content")) for m in with_reasoning(messages, "keep"))
    if folded:
        report.counts["system_turns_folded_into_user"] = report.counts.get("system_turns_folded_into_user", 0) + folded
    if reasoning_turns:
        key = f"assistant_turns_with_reasoning_{'trained' if spec.reasoning == 'keep' else 'dropped'}"
        report.counts[key] = report.counts.get(key, 0) + reasoning_turns
