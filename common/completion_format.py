"""Completion format: plain-text and prompt/completion rows to input_ids and labels, BOS and EOS handled once.

Prompt and completion are tokenized apart and joined, so the prompt's tokens are the ones a user gets
from `tokenizer(template.format(prompt=...))` at inference, whatever spaces end the prompt.
"""

from functools import lru_cache

from common.errors import UserError


def check_template(template: str, tokenizer) -> str:
    """The template as used: a `str.format` pattern with `{prompt}`, minus a leading BOS the tokenizer adds itself."""
    try:
        rendered = template.format(prompt="\0")
    except (KeyError, IndexError, ValueError) as e:
        raise UserError(
            f"template: not a str.format pattern with only {{prompt}} ({e}); write a literal brace as {{{{ }}}}"
        ) from None
    if "\0" not in rendered:
        raise UserError(f"template: must contain {{prompt}}, got {template!r}")
    if tokenizer.eos_token_id is None:
        raise UserError("the model's tokenizer has no EOS token, so a completion could never end; pick another model")
    bos = tokenizer.bos_token
    if bos and adds_bos(tokenizer) and template.startswith(bos):
        template = template[len(bos) :]  # the tokenizer adds it; a second one would be a double BOS
    return template


@lru_cache(maxsize=8)
def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of plain text by itself (it differs between model families)."""
    bos = tokenizer.bos_token_id
    return (
        bos is not None
        and tokenizer("a")["input_ids"][:1] == [bos] != tokenizer("a", add_special_tokens=False)["input_ids"][:1]
    )


def completion_row_problem(row: dict) -> str | None:
    """Why a row is neither a {"text"} row nor a {"prompt", "completion"} row, or None when it is fine."""
    has_text, has_pair = "text" in row, "prompt" in row or "completion" in row
    if has_text and has_pair:
        return "row has both 'text' and 'prompt'/'completion'; a row is one or the other"
    if not has_text and not has_pair:
        return "row has neither 'text' nor 'prompt' and 'completion'"
    for name in ("text",) if has_text else ("prompt", "completion"):
        if name not in row:
            return f"row has no '{name}' field"
        if not isinstance(row[name], str):
            return f"'{name}' must be a string, got {type(row[name]).__name__}"
    target = "text" if has_text else "completion"
    return f"'{target}' is empty" if not row[target].strip() else None


def tokenize_completion_row(tokenizer, row: dict, template: str, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) pairs for one row; labels are -100 where no loss is taken.

    A text row trains on every token and its EOS; one longer than max_length becomes several pieces
    rather than losing its tail. A prompt/completion row trains on the completion and its EOS only.
    """
    eos = tokenizer.eos_token_id
    if "text" in row:
        ids = _encode(tokenizer, row["text"]) + [eos]
        return [(ids[i : i + max_length], ids[i : i + max_length]) for i in range(0, len(ids), max_length)]
    prompt = _encode(tokenizer, template.format(prompt=row["prompt"]))
    completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [eos]
    return [(prompt + completion, [-100] * len(prompt) + completion)]


def completion_example(tokenizer, template: str, max_length: int, row: dict) -> tuple[list[dict], dict]:
    """A checked row's examples (a text row longer than max_length gives several), and the extra pieces counted."""
    pieces = tokenize_completion_row(tokenizer, row, template, max_length)
    return [{"input_ids": ids, "labels": labels} for ids, labels in pieces], {"{split}_text_pieces": len(pieces) - 1}


def _encode(tokenizer, text: str) -> list[int]:
    """Text with the tokenizer's BOS when it adds one, but never two (text may start with BOS already)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id] + ids
    return ids
