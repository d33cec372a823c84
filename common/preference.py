"""Preference data and the DPO reference: row checks, chat formatting, and reference log-probs cached on disk.

Rows are {"prompt", "chosen", "rejected"}, each a string or a list of messages. With a model whose
tokenizer has a chat template (an sft_chat.py output has ours), string rows become messages, so TRL
renders them with that template and the end-of-turn token closes chosen and rejected.
"""

import hashlib
import json
import os

import torch

from common.chat_masks import prompt_and_answer
from common.distributed import is_main, wait_for_everyone
from common.errors import RowProblem, UserError
from common.reasoning import reasoning_problem


def preference_row_problem(row: dict) -> str | None:
    """Why a preference row is unusable, or None when it is fine."""
    for name in ("prompt", "chosen", "rejected"):
        if name not in row:
            return f"row has no '{name}' field"
        value = row[name]
        if isinstance(value, str):
            if name != "prompt" and not value.strip():
                return f"'{name}' is empty"
        elif isinstance(value, list):
            problem = _messages_problem(value, name)
            if problem:
                return problem
        else:
            return f"'{name}' must be a string or a list of messages, got {type(value).__name__}"
    if isinstance(row["chosen"], str) != isinstance(row["rejected"], str):
        return "'chosen' and 'rejected' must both be strings or both be message lists"
    if _text(row["chosen"]).strip() == _text(row["rejected"]).strip():
        return "'chosen' and 'rejected' are identical, so there is no preference to learn"
    return None


def _messages_problem(messages: list, name: str) -> str | None:
    if not messages:
        return f"'{name}' is an empty list"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            return f"{name}[{i}] must be a message with role system, user or assistant"
        if not isinstance(message.get("content"), str):
            return f"{name}[{i}] content must be a string"
        problem = reasoning_problem(message) if message["role"] == "assistant" else None
        if problem:
            return f"{name}[{i}] {problem}"
    if name == "prompt":
        return None if messages[-1]["role"] == "user" else "the prompt's last message must be from the user"
    if any(m["role"] != "assistant" for m in messages):
        return f"'{name}' must hold assistant messages only"
    return None if any(m["content"].strip() for m in messages) else f"'{name}' is empty"


def _text(value) -> str:
    return value if isinstance(value, str) else "\n".join(m["content"] for m in value)


def as_chat(row: dict, has_chat_template: bool) -> dict:
    """The row as TRL's conversational format when the model has a chat template, else as it is."""
    if not has_chat_template:
        return {k: row[k] for k in ("prompt", "chosen", "rejected")}

    def messages(value, role):
        return [{"role": role, "content": value}] if isinstance(value, str) else value

    return {"prompt": messages(row["prompt"], "user"), "chosen": messages(row["chosen"], "assistant"),
            "rejected": messages(row["rejected"], "assistant")}


def check_plain_rows(rows, has_chat_template: bool) -> None:
    """Message lists need a chat template to be rendered; say so once instead of failing deep in TRL."""
    if not has_chat_template:
        for row in rows:
            if any(isinstance(row.data[k], list) for k in ("prompt", "chosen", "rejected")):
                raise UserError(f"{row.where}: message lists need a model with a chat template; this one has none")


def cached_reference(trainer_class, cache_dir: str, tokenizer):
    """trainer_class with reference log-probs kept on disk under a key of reference weights, data and tokenizer.

    TRL computes them once per run (precompute_ref_log_probs) and forgets them at exit. Here the first run
    stores them in cache_dir/<key>.pt and a rerun, a resumed run or another epoch reads them back without
    a reference forward pass. The key hashes TRL's hash of the reference weights, the tokenized prompt,
    chosen and rejected ids (so the data, tokenizer and chat template), the tokenizer itself, and the
    settings that change the numbers (precision, max_length, truncation).
    """

    class CachedReference(trainer_class):
        reference_cache = {"hits": 0, "misses": 0}

        def _precompute_ref_logps(self, dataset, name, batch_size):
            from accelerate.utils import broadcast_object_list

            # Under ZeRO-3 each rank hashes its own shard of the weights: take rank 0's key, so every rank makes
            # the same choice (a rank that alone missed would wait forever in TRL's collectives).
            key = broadcast_object_list([self._reference_key(dataset)], from_process=0)[0]
            path = os.path.join(cache_dir, f"{key}.pt")
            if os.path.isfile(path):
                cached = torch.load(path, weights_only=True)
                type(self).reference_cache["hits"] += 1
                if is_main():
                    print(f"reference log-probs for {name}: read from {path}", flush=True)
                return dataset.add_column("ref_chosen_logps", cached["chosen"].tolist()).add_column(
                    "ref_rejected_logps", cached["rejected"].tolist())
            type(self).reference_cache["misses"] += 1
            dataset = super()._precompute_ref_logps(dataset, name, batch_size)
            if is_main():
                os.makedirs(cache_dir, exist_ok=True)
                tmp = f"{path}.tmp{os.getpid()}"
                torch.save({"chosen": torch.tensor(dataset["ref_chosen_logps"]),
                            "rejected": torch.tensor(dataset["ref_rejected_logps"])}, tmp)
                os.replace(tmp, path)
                print(f"reference log-probs for {name}: computed, cached in {path}", flush=True)
            wait_for_everyone()
            return dataset

        def _reference_key(self, dataset) -> str:
            digest = hashlib.sha256()
            args = self.args
            settings = [str(self._precompute_model_hash), args.bf16, args.fp16, args.max_length, args.truncation_mode]
            digest.update(json.dumps(settings).encode())
            digest.update(tokenizer.backend_tokenizer.to_str().encode() if tokenizer.is_fast else repr(tokenizer).encode())
            digest.update((tokenizer.chat_template or "").encode())
            for column in ("prompt_ids", "chosen_ids", "rejected_ids"):
                digest.update(json.dumps(list(dataset[column])).encode())
            return digest.hexdigest()[:32]

    CachedReference.__name__ = f"CachedReference{trainer_class.__name__}"
    return CachedReference


@torch.no_grad()
def preference_margins(model, tokenizer, rows: list[dict], spec=None, batch_size: int = 8) -> list[float]:
    """log p(chosen) - log p(rejected) per row, summed over the answer tokens (with the end-of-turn token);
    the model prefers the chosen answer where it is positive."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    model.eval()
    examples = [tokenize_preference(tokenizer, row, spec) for row in rows]
    collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id or 0)
    margins = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size])
        logits = model(input_ids=batch["input_ids"].to(model.device),
                       attention_mask=batch["attention_mask"].to(model.device)).logits.float()
        logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None].to(model.device))[..., 0]
        scores = (logps * batch["completion_mask"][:, 1:].to(model.device)).sum(-1)
        chosen, rejected = scores.chunk(2)
        margins += (chosen - rejected).tolist()
    return margins


def tokenize_preference(tokenizer, row: dict, spec=None) -> dict:
    """prompt_ids, chosen_ids, rejected_ids of a row. A conversational row is rendered whole with the chat template
    (spec: common.chat_templates.ChatSpec), as sft_chat.py trains it: the answers are exactly the tokens the
    template trains (the answer and its end-of-turn token), and the prompt is what comes before them, the same
    for chosen and rejected. A plain row is the prompt's tokens and each answer followed by eos."""
    if isinstance(row["prompt"], str):
        prompt = tokenizer(row["prompt"])["input_ids"]
        return {"prompt_ids": prompt, **{f"{k}_ids": tokenizer(row[k] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
                                         for k in ("chosen", "rejected")}}
    prompt, chosen = prompt_and_answer(tokenizer, row["prompt"], row["chosen"], spec)
    prompt_again, rejected = prompt_and_answer(tokenizer, row["prompt"], row["rejected"], spec)
    if prompt != prompt_again:
        raise RowProblem("the chat template renders the prompt differently before chosen and before rejected")
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}


def preference_examples(tokenizer, rows, spec, params: dict, report) -> list[dict]:
    """Tokenized pairs for DPOTrainer; a pair the template cannot render exactly stops the run with its file:line
    (on_bad_rows=error) or is counted and dropped, and so is a pair whose prompt alone fills max_length."""
    out, full = [], 0
    for row in rows:
        try:
            example = tokenize_preference(tokenizer, as_chat(row.data, spec is not None), spec)
        except RowProblem as e:
            if params["on_bad_rows"] == "error":
                raise UserError(f"{row.where}: {e}") from None
            report.drop(f"bad row: {e}")
            continue
        if len(example["prompt_ids"]) >= params["max_length"]:
            full += 1
            continue
        out.append(example)
    if full:
        report.drop(f"prompt alone fills max_length={params['max_length']}", full)
    return out


def pretokenized(trainer_class):
    """trainer_class taking the pairs as tokenized by preference_examples instead of tokenizing them itself."""

    class Pretokenized(trainer_class):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    Pretokenized.__name__ = trainer_class.__name__
    return Pretokenized


def write_preference_preview(tokenizer, examples: list[dict], output_dir: str, max_length: int, n: int = 16) -> None:
    """data_preview.jsonl: the first n pairs as the DPO collator hands them to the model (chosen row, then
    rejected row; completion_mask marks the tokens whose log-probs count); prints the first with [[ ]]."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from common.batching import show_example

    collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id or 0, max_length=max_length)
    previews = []
    for example in examples[:n]:
        batch = collate([example])
        previews.append({**example, "input_ids": batch["input_ids"].tolist(), "completion_mask": batch["completion_mask"].tolist()})
    with open(os.path.join(output_dir, "data_preview.jsonl"), "w", encoding="utf-8") as f:
        for preview in previews:
            f.write(json.dumps(preview) + "\n")
    for side, i in (("chosen", 0), ("rejected", 1)):
        ids, mask = previews[0]["input_ids"][i], previews[0]["completion_mask"][i]
        shown = show_example(tokenizer, {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)]})
        print(f"first pair, {side}, scored tokens in [[ ]]:\n{shown}")
