"""Native chat templates: which template renders and masks the rows, and how it treats system turns and reasoning.

For chat_format=native the template is chosen once, before any row is read:
    1. `chat_template=path.jinja` (PARAMS) replaces the model's own template.
    2. A template with `{% generation %}` markers is used as it is: the markers say what is trained.
    3. A template TRL knows gets TRL's training variant (`trl/chat_templates/*_training.jinja`): the same
       rendering, prefix-preserving, with generation markers. Known means byte-equal to TRL's copy of the
       original, or rendering the same text as it on a set of probe conversations (model repositories ship
       revisions that differ only in handling content TRL's copy covers too; Qwen3's first release is one).
       With reasoning=keep, a family in KEEP_REASONING gets our variant (common/chat/templates/) instead.
    4. Any other template is masked by rendering growing prefixes, which is exact only where each prefix's
       tokens are a literal prefix of the whole row's tokens; common.chat.masks checks it on every row, and a
       user turn and its answer are checked here, so a template that cannot even mask that stops the run now.
The chosen template is the tokenizer's from then on, so final/ keeps what was trained. A family TRL has a response
parser for (Qwen, Llama 3.1 and 3.2, Gemma 4, GLM, gpt-oss, ...) also gives the tokenizer that parser, so that
tokenizer.parse_response reads generated tool calls back.
"""

import os
from functools import lru_cache

from jinja2 import TemplateError, TemplateSyntaxError
from trl import chat_template_utils
from trl.chat_template_utils import add_response_schema

from common.chat.masks import prefix_mask, trained_stop_token
from common.chat.template import (
    _TURNS,
    FIX,
    PROBE_TOOLS,
    PROBES,
    TOOL_PROBE,
    ChatSpec,
    has_generation_markers,
    reasoning_style,
    render,
    template_text,
)
from common.errors import RowProblem, UserError

# Our training variants for reasoning=keep, by TRL family. DeepSeek-R1-Distill's generation prompt ends in
# <｜Assistant｜><think>\n and TRL's variant trains those tokens as part of the answer, and trains turns without
# reasoning with no think block at all: ours keeps <think>\n...\n</think>\n\n on every turn and trains from
# after the generation prompt, so the model learns what it generates at inference.
KEEP_REASONING = {"deepseek_r1_distill": "deepseek_r1_distill_keep_reasoning.jinja"}


@lru_cache(maxsize=1)
def known_templates() -> list[tuple[str, str, str]]:
    """(family, original, training variant) for every template TRL ships a training variant of."""
    suffix = "_training_chat_template"
    return [
        (
            name[: -len(suffix)],
            getattr(chat_template_utils, name[: -len(suffix)] + "_chat_template"),
            getattr(chat_template_utils, name),
        )
        for name in sorted(dir(chat_template_utils))
        if name.endswith(suffix) and hasattr(chat_template_utils, name[: -len(suffix)] + "_chat_template")
    ]


def _probe_renders(tokenizer, template: str):
    """The template's text for every probe, with and without the generation prompt (an error is a result too)."""
    for messages, tools in [*((p, None) for p in PROBES), (TOOL_PROBE, PROBE_TOOLS)]:
        for prompt, generation_prompt in ((messages, False), (messages[:-1], True)):
            try:
                yield render(tokenizer, prompt, template, generation_prompt, tools)
            except Exception as e:  # a template's own error (a rejected role) is part of its behaviour
                yield f"error: {type(e).__name__}"


def recognise(tokenizer, template: str) -> tuple[str, str, str] | None:
    """(family, training template, "is" or "renders as") when TRL knows the template, else None."""
    known = known_templates()
    for family, original, training in known:
        if template == original:
            return family, training, "is"
    mine = list(_probe_renders(tokenizer, template))
    if all(text.startswith("error: ") for text in mine):
        return None
    for family, original, training in known:
        if all(
            a == b for a, b in zip(_probe_renders(tokenizer, original), mine, strict=False)
        ):  # stops at the first difference
            return family, training, "renders as"
    return None


def use_training_template(tokenizer, template_file: str = "", reasoning: str = "keep") -> str:
    """Give the tokenizer the template a native run trains with (see the module doc); returns where it came from.

    Stops with one line when there is no template, the file is missing or broken, or the template is neither
    marked, nor known, nor prefix-stable on the probe conversations."""
    if template_file:
        if not os.path.isfile(template_file):
            raise UserError(f"chat_template file not found: {template_file}")
        with open(template_file, encoding="utf-8") as f:
            tokenizer.chat_template = f.read()
    template = template_text(tokenizer)
    if not template:
        raise UserError(f"chat_format=native needs a chat template and the model's tokenizer has none; {FIX}")
    origin = f"chat_template {template_file}" if template_file else "the model's chat template"
    try:
        render(tokenizer, _TURNS[:2])
    except TemplateSyntaxError as e:
        raise UserError(f"{origin} does not compile (template line {e.lineno}: {e.message})") from None
    except (TemplateError, TypeError):
        pass  # a rejected role is the template's behaviour, handled per row
    if has_generation_markers(template):
        tokenizer.chat_template = template
        if trained_stop_token(tokenizer, ChatSpec("", reasoning_style=reasoning_style(tokenizer))) is None:
            return (
                f"{origin}, its own {{% generation %}} markers (warning: they leave out the end-of-turn token, "
                "so the model does not learn to stop)"
            )
        return f"{origin}, its own {{% generation %}} markers"
    known = recognise(tokenizer, template)
    if known:
        family, training, how = known
        add_response_parser(tokenizer, getattr(chat_template_utils, family + "_chat_template"))
        if reasoning == "keep" and family in KEEP_REASONING:
            path = os.path.join(os.path.dirname(__file__), "templates", KEEP_REASONING[family])
            with open(path, encoding="utf-8") as f:
                tokenizer.chat_template = f.read()
            return f"common/chat/templates/{KEEP_REASONING[family]} ({origin} {how} {family})"
        tokenizer.chat_template = training
        return f"TRL's {family} training template ({origin} {how} {family})"
    tokenizer.chat_template = template
    add_response_parser(tokenizer, template)  # a TRL original without a training variant (Llama 3.1, Gemma 4)
    try:  # one user turn and its answer; every other shape is checked on each row that has it
        prefix_mask(tokenizer, PROBES[0])
    except TemplateError:
        pass  # the row that meets the same error says so
    except RowProblem as e:
        raise UserError(
            f"{origin} is not one TRL has a training variant of, and rendering growing prefixes "
            f"is not exact with it on a single turn ({str(e).split('; set ')[0]}); {FIX}"
        ) from None
    return f"{origin}, masks from prefix rendering verified on every row"


def add_response_parser(tokenizer, original: str) -> None:
    """TRL's response parser for the family whose original template this is, so that tokenizer.parse_response reads
    generated calls back; TRL matches a parser to the original, not to its training variant."""
    template = tokenizer.chat_template
    tokenizer.chat_template = original
    try:
        add_response_schema(tokenizer)
    except ValueError:
        pass  # a family TRL has no parser for
    finally:
        tokenizer.chat_template = template
