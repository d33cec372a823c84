"""Every place this project overrides a method of TRL's trainers, written against trl==1.16.0.

Each override is a mixin; a script puts the ones it needs in front of its trainer class, in plain sight:

    Trainer = compose(trainer_class or DPOTrainer, StopOnNonFiniteLoss, PretokenizedPairs, CachedReference)
    trainer = Trainer(model=model, args=args, ..., ref_cache_dir=params["ref_cache_dir"])

A mixin's settings are keyword arguments of the trainer's constructor (never class attributes), and so are an
experiment's: `compose(functools.partial(MyTrainer, my_weight=3.0), ...)` keeps them. OVERRIDDEN lists each
private hook with the TRL method that calls it and its signature; tests/test_trl_patches.py fails when the pinned
TRL renames a hook, changes its signature or stops calling it.
"""

import functools
import hashlib
import json
import os

import torch
import trl.trainer.utils as trl_utils
from accelerate.utils import broadcast_object_list
from trl import DistillationTrainer, DPOTrainer, GRPOTrainer
from trl.experimental.server_distillation.server_distillation_trainer import _add_tail_bucket, _jsd_divergence
from trl.trainer.utils import RepeatSampler

from common.checkpoint import checkpoints
from common.distributed import is_main, wait_for_everyone
from common.errors import RunStopped
from common.teacher_server import TeacherServer


def compose(trainer_class, *mixins):
    """trainer_class (or a functools.partial of it with an experiment's keyword arguments) with the mixins in front.
    The class keeps trainer_class's name, so logs and errors read as before."""
    kwargs = {}
    if isinstance(trainer_class, functools.partial):
        trainer_class, kwargs = trainer_class.func, trainer_class.keywords
    composed = type(trainer_class.__name__, (*mixins, trainer_class), {"__qualname__": trainer_class.__qualname__})
    return functools.partial(composed, **kwargs) if kwargs else composed


class StopOnNonFiniteLoss:
    """Every micro-step checks its loss across ranks: a NaN or infinite loss stops the run with one line naming the
    step, before the next save, so the checkpoints on disk stay the last good ones. (Without DeepSpeed the bad
    step's update is not applied either: the optimizer steps after training_step.) Overrides the public
    Trainer.training_step."""

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        bad = (~torch.isfinite(loss.detach())).float()
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item():
            last = checkpoints(self.args.output_dir)
            raise RunStopped(
                f"the loss is {loss.item()} at step {self.state.global_step + 1}; stopped before saving it, "
                f"last good checkpoint: {os.path.basename(last[-1]) if last else 'none'} "
                "(lower learning_rate or check the data, then resume=true)"
            )
        return loss


_TRL_COMPACT = trl_utils._use_triton  # trl==1.16.0: true on CUDA and XPU when Triton is installed


def _compact_on_cpu_too(device) -> bool:
    return device.type == "cpu" or _TRL_COMPACT(device)


class LabelledPositionsHead:
    """TRL's fused LM head (add_fused_lm_head, used by SFTTrainer, DPOTrainer and GRPOTrainer) projects only the
    positions that have a label on CUDA and XPU, but every position elsewhere, so that compilers for other devices
    (Neuron) see fixed tile shapes. Eager CPU compiles nothing, so there the prompt positions are pure waste: with a
    49k-token vocabulary the head is a fifth of a step and most tokens of a chat row are prompt (BENCHMARKS.md).
    Makes that choice (`compact = _use_triton(device)`, read from trl.trainer.utils at each call, and only there)
    true on CPU too; the log-probs and gradients are the same. Patches the module function
    trl.trainer.utils._use_triton, not a method."""

    def __init__(self, *args, **kwargs):
        trl_utils._use_triton = _compact_on_cpu_too
        super().__init__(*args, **kwargs)


class PretokenizedPairs:
    """DPOTrainer takes the pairs as common.preference tokenized them (each rendered whole with the chat template,
    so the scored tokens are exactly each answer and its end-of-turn token) instead of tokenizing them again.
    Overrides DPOTrainer._prepare_dataset, which its __init__ calls on the train and eval sets."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset


class CachedReference:
    """Reference log-probs kept on disk in ref_cache_dir under a key of reference weights, data and tokenizer.

    TRL computes them once per run (precompute_ref_log_probs) and forgets them at exit. Here the first run stores
    them in ref_cache_dir/<key>.pt and a rerun, a resumed run or another epoch reads them back without a reference
    forward pass. The key hashes TRL's hash of the reference weights, the tokenized prompt, chosen and rejected ids
    (so the data, tokenizer and chat template), the tokenizer itself, and the settings that change the numbers
    (precision, max_length, truncation). Overrides DPOTrainer._precompute_ref_logps, which DPOTrainer.__init__ calls
    when precompute_ref_log_probs is on (full fine-tuning; under LoRA the reference is the disabled adapter).
    """

    def __init__(self, *args, ref_cache_dir: str, **kwargs):
        self.ref_cache_dir = ref_cache_dir  # set first: TRL's __init__ calls _precompute_ref_logps
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        # Under ZeRO-3 each rank hashes its own shard of the weights: take rank 0's key, so every rank makes the
        # same choice (a rank that alone missed would wait forever in TRL's collectives).
        key = broadcast_object_list([self._reference_key(dataset)], from_process=0)[0]
        path = os.path.join(self.ref_cache_dir, f"{key}.pt")
        if os.path.isfile(path):
            cached = torch.load(path, weights_only=True)
            if is_main():
                print(f"reference log-probs for {name}: read from {path}", flush=True)
            return dataset.add_column("ref_chosen_logps", cached["chosen"].tolist()).add_column(
                "ref_rejected_logps", cached["rejected"].tolist()
            )
        dataset = super()._precompute_ref_logps(dataset, name, batch_size)
        if is_main():
            os.makedirs(self.ref_cache_dir, exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            torch.save(
                {
                    "chosen": torch.tensor(dataset["ref_chosen_logps"]),
                    "rejected": torch.tensor(dataset["ref_rejected_logps"]),
                },
                tmp,
            )
            os.replace(tmp, path)
            print(f"reference log-probs for {name}: computed, cached in {path}", flush=True)
        wait_for_everyone()
        return dataset

    def _reference_key(self, dataset) -> str:
        digest = hashlib.sha256()
        args, tokenizer = self.args, self.processing_class
        settings = [str(self._precompute_model_hash), args.bf16, args.fp16, args.max_length, args.truncation_mode]
        digest.update(json.dumps(settings).encode())
        digest.update(tokenizer.backend_tokenizer.to_str().encode() if tokenizer.is_fast else repr(tokenizer).encode())
        digest.update((tokenizer.chat_template or "").encode())
        for column in ("prompt_ids", "chosen_ids", "rejected_ids"):  # json.dumps of the column, batch by batch
            digest.update(b"[")
            for start in range(0, len(dataset), 10_000):
                part = json.dumps(dataset[start : start + 10_000][column])[1:-1]
                digest.update(((", " if start else "") + part).encode())
            digest.update(b"]")
        return digest.hexdigest()[:32]


class _EpochShuffled(RepeatSampler):
    """TRL's RepeatSampler with its order drawn from (seed, epoch): TRL draws every epoch from one generator, which a
    resumed run restarts, so a run resumed in a later epoch would see other prompts than the run it continues."""

    def __init__(self, state, **kwargs):
        super().__init__(**kwargs)
        self.state = state

    def __iter__(self):
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) + int(self.state.epoch + 1e-6))  # the epoch it is in
        return super().__iter__()


class RenderedPrompts:
    """GRPOTrainer and DistillationTrainer (built alike) read each prompt as the text common.prompts rendered (the
    row's own tools with it), tokenized as it is: a chat template's text holds its own special tokens (TRL's text
    path would add a second BOS; add_special_tokens=True for a model without a chat template), and TRL's chat path
    would render one tool list for every prompt. Overrides _tokenize_prompts (called by _generate) and
    _get_train_sampler (called by Trainer.get_train_dataloader), whose order becomes resumable."""

    def __init__(self, *args, add_special_tokens: bool, **kwargs):
        self.add_special_tokens = add_special_tokens
        super().__init__(*args, **kwargs)

    def _tokenize_prompts(self, prompts: list):
        return self.processing_class(text=prompts, add_special_tokens=self.add_special_tokens)["input_ids"], None, {}

    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)
        return _EpochShuffled(
            self.state,
            data_source=sampler.data_source,
            mini_repeat_count=sampler.mini_repeat_count,
            batch_size=sampler.batch_size,
            repeat_count=sampler.repeat_count,
            shuffle=sampler.shuffle,
            seed=sampler.seed,
        )


class ServerTeacher:
    """DistillationTrainer with teacher_model a common.teacher_server.TeacherServer: the teacher's log-probs come
    from the server, not from a local forward pass. The server returns its top-k tokens at each answer position and
    the log-prob of the token the student wrote; the loss is TRL's generalized JSD (trl.experimental's
    server-distillation helpers) over k+2 buckets: those top-k tokens, the student's own token when it is not among
    them, and one tail bucket holding the rest of each distribution's mass. With k the whole vocabulary it is the
    local teacher's loss (tests/test_distill.py). Loss and entropy are reduced as the local path reduces them (sum
    over answer tokens / num_items_in_batch). Overrides DistillationTrainer._compute_loss, which compute_loss calls
    inside the student's DDP/FSDP wrapper; a local teacher_model goes on to TRL's own."""

    def __init__(self, *args, teacher_model=None, **kwargs):
        served = isinstance(teacher_model, TeacherServer)
        self.teacher_server = teacher_model if served else None
        super().__init__(*args, teacher_model=None if served else teacher_model, **kwargs)

    def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
        if self.teacher_server is None:
            return super()._compute_loss(unwrapped_student, inputs, num_items_in_batch)
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        answer_ids, answer_mask = inputs["completion_ids"], inputs["completion_mask"]
        loss_mask = answer_mask if "tool_mask" not in inputs else answer_mask * inputs["tool_mask"]
        width = answer_ids.size(1)
        # Each row as the student wrote it, padding removed (prompts are padded on the left, answers on the right)
        rows = [
            p[pm.bool()].tolist() + a[am.bool()].tolist()
            for p, pm, a, am in zip(prompt_ids, prompt_mask, answer_ids, answer_mask, strict=True)
        ]
        top_ids, top_logps, actual_logps = (
            t.to(answer_ids.device)
            for t in self.teacher_server.answer_logprobs(rows, prompt_mask.sum(1).tolist(), width)
        )
        logits = unwrapped_student(
            input_ids=torch.cat([prompt_ids, answer_ids], 1),
            attention_mask=torch.cat([prompt_mask, answer_mask], 1),
            logits_to_keep=width + 1,
            use_cache=False,
        ).logits[:, :-1]
        # Answer positions only: a padding position has no teacher numbers, and its -inf would turn gradients to NaN
        valid = loss_mask.bool()
        student = logits[valid].float().log_softmax(-1)
        top_ids, top_logps, actual_logps, own = top_ids[valid], top_logps[valid], actual_logps[valid], answer_ids[valid]
        support = torch.cat([top_ids, own.unsqueeze(-1)], -1)
        own_listed = (top_ids == own.unsqueeze(-1)).any(-1, keepdim=True)
        support_mask = torch.cat([top_logps > float("-inf"), ~own_listed], -1)
        teacher_support = torch.cat([top_logps, actual_logps.unsqueeze(-1)], -1).masked_fill(~support_mask, -torch.inf)
        student_support = student.gather(-1, support).masked_fill(~support_mask, -torch.inf)
        student_buckets, bucket_mask = _add_tail_bucket(student_support, support_mask)
        teacher_buckets, _ = _add_tail_bucket(teacher_support, support_mask)
        per_token = _jsd_divergence(student_buckets, teacher_buckets, self.beta, bucket_mask).sum(-1)
        n_valid = valid.sum()
        loss = per_token.sum() / (num_items_in_batch if num_items_in_batch is not None else n_valid.clamp(min=1))
        return loss, -(student.exp() * student).sum().detach(), n_valid


# (mixin, TRL class, private hook, its parameters in trl==1.16.0, the TRL method that calls it)
OVERRIDDEN = [
    (
        PretokenizedPairs,
        DPOTrainer,
        "_prepare_dataset",
        ("self", "dataset", "processing_class", "args", "dataset_name"),
        "__init__",
    ),
    (CachedReference, DPOTrainer, "_precompute_ref_logps", ("self", "dataset", "name", "batch_size"), "__init__"),
    (RenderedPrompts, GRPOTrainer, "_tokenize_prompts", ("self", "prompts"), "_generate"),
    (RenderedPrompts, GRPOTrainer, "_get_train_sampler", ("self", "dataset"), "get_train_dataloader"),
    (RenderedPrompts, DistillationTrainer, "_tokenize_prompts", ("self", "prompts"), "_generate"),
    (RenderedPrompts, DistillationTrainer, "_get_train_sampler", ("self", "dataset"), "get_train_dataloader"),
    (
        ServerTeacher,
        DistillationTrainer,
        "_compute_loss",
        ("self", "unwrapped_student", "inputs", "num_items_in_batch"),
        "compute_loss",
    ),
]
