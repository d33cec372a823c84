"""Prompt rows for grpo.py: what a row must hold, and its prompt rendered as the model will read it.

A row is a chat row whose last assistant turn is the reference (left out of the prompt) or a {"prompt", ...} row (a
string or a list of messages) with any fields the rewards read; a row's `tools` are rendered with its prompt. The
prepared example keeps the row itself, so each reward sees the row its prompt came from.
"""

import json

from jinja2 import TemplateError

from common.chat.template import fold_system, render
from common.chat.tools import normalize_tools
from common.errors import RowProblem
from common.prepare import Dropped
from common.synthesis import prompt_of


def prompt_example(tokenizer, template: str, fold: bool, max_prompt_tokens: int, row: dict) -> tuple[list[dict], dict]:
    """The row's prompt: its messages through the chat template with a generation prompt (the row's tools with them),
    or, for a model without a chat template, its prompt string in `template`. A prompt longer than
    max_prompt_tokens is left out (cutting it would change the question) and counted."""
    if tokenizer.chat_template:
        messages = prompt_of(row)
        try:
            text = render(
                tokenizer,
                fold_system(messages) if fold else messages,
                generation_prompt=True,
                tools=normalize_tools(row.get("tools")),
            )
        except TemplateError as e:
            raise RowProblem(f"the chat template rejects the prompt: {e}") from None
    elif isinstance(row.get("prompt"), str):
        text = template.format(prompt=row["prompt"])
    else:
        raise RowProblem("the model has no chat template, so a row needs a 'prompt' string")
    length = len(tokenizer(text, add_special_tokens=not tokenizer.chat_template)["input_ids"])
    if length > max_prompt_tokens:
        raise Dropped(f"prompt longer than max_length - max_completion_length = {max_prompt_tokens} tokens")
    return [{"prompt": text, "row": json.dumps(row, ensure_ascii=False)}], {"prompt_tokens": length}


def rendered_prompts(trainer_class, add_special_tokens: bool):
    """trainer_class reading each prompt as the text prepare rendered, tokenized as it is: a chat template's text
    holds its own special tokens (TRL's text path would add a second BOS), and each row keeps its own tools (TRL's
    chat path renders one tool list for every prompt). Its prompt order is drawn from (seed, epoch): TRL's
    RepeatSampler draws every epoch from one generator, which a resumed run restarts, so a run resumed in a later
    epoch would see other prompts than the run it continues."""
    from trl.trainer.utils import RepeatSampler

    class EpochShuffled(RepeatSampler):
        def __init__(self, state, **kwargs):
            super().__init__(**kwargs)
            self.state = state

        def __iter__(self):
            if self.shuffle:
                self.generator.manual_seed((self.seed or 0) + int(self.state.epoch + 1e-6))  # the epoch it is in
            return super().__iter__()

    class RenderedPrompts(trainer_class):
        def _tokenize_prompts(self, prompts: list):
            return self.processing_class(text=prompts, add_special_tokens=add_special_tokens)["input_ids"], None, {}

        def _get_train_sampler(self, dataset=None):
            sampler = super()._get_train_sampler(dataset)
            return EpochShuffled(
                self.state,
                data_source=sampler.data_source,
                mini_repeat_count=sampler.mini_repeat_count,
                batch_size=sampler.batch_size,
                repeat_count=sampler.repeat_count,
                shuffle=sampler.shuffle,
                seed=sampler.seed,
            )

    RenderedPrompts.__name__ = RenderedPrompts.__qualname__ = trainer_class.__name__
    return RenderedPrompts


def write_prompt_preview(tokenizer, prompts, output_dir: str, n: int = 16) -> None:
    """data_preview.jsonl: the first n prompts as the trainer reads them, with the rows the rewards get."""
    import os

    with open(os.path.join(output_dir, "data_preview.jsonl"), "w", encoding="utf-8") as f:
        for example in prompts.select(range(min(n, len(prompts)))):
            ids = tokenizer(example["prompt"], add_special_tokens=not tokenizer.chat_template)["input_ids"]
            f.write(
                json.dumps({**example, "row": json.loads(example["row"]), "prompt_ids": ids}, ensure_ascii=False) + "\n"
            )
    if len(prompts):
        print(f"first prompt ({len(prompts)} prompts):\n{prompts[0]['prompt']}", flush=True)
