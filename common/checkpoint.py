"""Checkpoints and the output layout: what a run may reuse or overwrite, resume points, and the final export."""

import glob
import json
import os
import re
import shutil
import struct
import sys
import zipfile

import torch

from common.distributed import describe, is_main, shutdown, wait_for_everyone
from common.errors import UserError

HELD_OUT_FILES = ("test_data", "exact_match_data")  # PARAMS keys naming held-out files; "" skips one
# Default models that another script's default run writes, with the command that writes them.
MADE_BY = {
    "outputs/sft_chat/final": "accelerate launch sft_chat.py",
    "outputs/sft_chat_warmup/final": "accelerate launch sft_chat.py --config configs/recipes/grpo-warmup.yaml",
}
RUN_FILES = (
    "params.yaml",
    "data_report.json",
    "metrics.jsonl",
    "loss.png",
    "data_preview.jsonl",
    "tokenizer",
    "datasets",
)


def checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoints, oldest first; the Trainer writes trainer_state.json last, so it marks completion."""
    found = [p for p in glob.glob(os.path.join(output_dir, "checkpoint-*")) if re.search(r"checkpoint-\d+$", p)]
    complete = [p for p in found if os.path.isfile(os.path.join(p, "trainer_state.json"))]
    return sorted(complete, key=lambda p: int(p.rsplit("-", 1)[1]))


def unusable(checkpoint: str) -> str | None:
    """Why a checkpoint that looks complete cannot be resumed from (a torn or truncated file), or None.

    Reads headers and directories only, not the tensors: trainer_state.json must parse, each safetensors
    file must be as long as its header says, and each torch file (optimizer, scheduler, rng state, DeepSpeed
    shards) must be a zip archive whose directory, stored at its end, is intact.
    """

    try:
        with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError) as e:
        return f"trainer_state.json: {e}"
    for path in sorted(glob.glob(os.path.join(checkpoint, "**", "*"), recursive=True)):
        name = os.path.relpath(path, checkpoint)
        try:
            if path.endswith(".safetensors"):
                with open(path, "rb") as f:
                    (header_size,) = struct.unpack("<Q", f.read(8))
                    header = json.loads(f.read(header_size))
                end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
                if os.path.getsize(path) != 8 + header_size + end:
                    return f"{name} is {os.path.getsize(path)} bytes, its header says {8 + header_size + end}"
            elif path.endswith((".pt", ".pth", ".bin")):
                zipfile.ZipFile(path).close()
        except (OSError, ValueError, struct.error, zipfile.BadZipFile) as e:
            return f"{name}: {e}"
    return None


def resume_point(output_dir: str) -> str | None:
    """The newest checkpoint that is whole. Broken newer ones are renamed unusable-checkpoint-N, with a
    warning: kept for a look, and out of the way of the Trainer, which deletes old checkpoint-* folders."""
    found = checkpoints(output_dir)
    while found and is_main():
        problem = unusable(found[-1])
        if problem is None:
            break
        bad = found.pop()
        name = os.path.basename(bad)
        os.replace(bad, os.path.join(output_dir, f"unusable-{name}"))
        print(
            f"warning: {name} is unusable ({problem}); set aside as unusable-{name}, "
            f"resuming from {os.path.basename(found[-1]) if found else 'the start'}",
            file=sys.stderr,
            flush=True,
        )
    wait_for_everyone()
    found = checkpoints(output_dir)
    return found[-1] if found else None


def start_run(params: dict, defaults: dict, model_key: str = "model") -> str | None:
    """A training script's prologue: check the model folder (a default that another script's run writes; model_key
    names it) and the held-out files, join the process group and print the real launch, then prepare output_dir.
    Returns the checkpoint to resume from."""
    check_model_folder(params[model_key], defaults[model_key], model_key)
    launch = describe()  # every rank joins the process group here
    if is_main():
        print(launch, flush=True)
    for key in HELD_OUT_FILES:
        if params.get(key) and not os.path.isfile(params[key]):
            raise UserError(f"{key} file not found: {params[key]} ({key}= skips the check)")
    return prepare_output_dir(params["output_dir"], params["resume"], params["overwrite"])


def check_model_folder(model: str, default: str, key: str = "model") -> None:
    """A script whose default model is another script's output stops, when that folder is missing, with the
    command that makes it."""
    if model == default and model in MADE_BY and not os.path.isdir(model):
        raise UserError(f"model folder not found: {model} (run `{MADE_BY[model]}` first, or set {key}=)")


def dry_run(output_dir: str, tokenizer, report, write_preview) -> None:
    """What dry_run=true leaves behind, the same for every training script: data_preview.jsonl as the trainer
    receives the data (write_preview(output_dir) writes it and prints the first example), the prepared tokenizer/,
    and the data report printed."""
    if is_main():
        write_preview(output_dir)
        tokenizer.save_pretrained(os.path.join(output_dir, "tokenizer"))
        print(json.dumps(report.as_dict(), indent=2))
    shutdown()


def prepare_output_dir(output_dir: str, resume: bool, overwrite: bool) -> str | None:
    """Check output_dir against resume/overwrite; returns the checkpoint to resume from, if any."""
    final = os.path.join(output_dir, "final")
    if overwrite:
        if is_main():
            folders = glob.glob(f"{output_dir}/checkpoint-*") + glob.glob(f"{output_dir}/unusable-checkpoint-*")
            for name in (*RUN_FILES, "final", "final.tmp", *map(os.path.basename, folders)):
                path = os.path.join(output_dir, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
        wait_for_everyone()
        return None
    if os.path.isdir(final):
        raise UserError(f"{output_dir} holds a finished run (final/); set overwrite=true or choose another output_dir")
    if checkpoints(output_dir) and not resume:
        raise UserError(
            f"{output_dir} has checkpoints of an unfinished run; set resume=true to continue it or overwrite=true"
        )
    point = resume_point(output_dir)
    if is_main():
        _truncate_metrics(output_dir, int(point.rsplit("-", 1)[1]) if point else 0)
    wait_for_everyone()
    return point


def _truncate_metrics(output_dir: str, step: int) -> None:
    """Drop metrics logged after the checkpoint we resume from: those steps are run again."""
    path = os.path.join(output_dir, "metrics.jsonl")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        if lines and not lines[-1].endswith("\n"):  # a line torn by a kill
            lines.pop()
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(kept)


def is_partitioned(trainer) -> bool:
    """True under DeepSpeed ZeRO-3 or FSDP, where no rank holds the whole model."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return trainer.is_fsdp_enabled or (plugin is not None and plugin.zero_stage == 3)


def _untied_copy(state_dict: dict) -> dict:
    """A CPU copy of a state dict with tied weights (one tensor under two names, like lm_head and the
    embedding) kept once, under the first name, as save_pretrained would."""
    seen, copy = set(), {}
    for name, tensor in state_dict.items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            copy[name] = tensor.detach().cpu().clone()
    return copy


def stop_ids(model, tokenizer) -> list[int]:
    """The ids a loaded model's generation_config stops at (its tokenizer's eos when it names none), as a list, so
    final/ keeps stopping where the model it started from stopped."""
    ids = model.generation_config.eos_token_id
    return ids if isinstance(ids, list) else [ids if ids is not None else tokenizer.eos_token_id]


def export_final(
    trainer, tokenizer, output_dir: str, eos_ids: list[int], merge_lora: bool = True, extra_files=None
) -> str:
    """Write output_dir/final: a plain Hugging Face folder (merged when LoRA), written whole then renamed.

    extra_files maps a file name to the JSON-able object it holds (written inside final/ too).
    """
    final, tmp = os.path.join(output_dir, "final"), os.path.join(output_dir, "final.tmp")
    model = trainer.accelerator.unwrap_model(trainer.model)
    # Under ZeRO-3 and FSDP each rank holds a shard: gather the full weights (every rank takes part), or the
    # saved model would be empty or a fraction of itself.
    merge = hasattr(model, "merge_and_unload") and merge_lora
    state_dict = None
    if is_partitioned(trainer) and merge and trainer.is_deepspeed_enabled:
        import deepspeed  # noqa: PLC0415 - optional: only a DeepSpeed run reaches here

        # Merging needs whole weights: gather them on every rank, merge, and keep rank 0's copy to save.
        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            model = model.merge_and_unload()
            state_dict = _untied_copy(model.state_dict()) if is_main() else {}
    elif is_partitioned(trainer):
        wrapped = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model  # the DeepSpeed engine
        state_dict = trainer.accelerator.get_state_dict(wrapped)
    elif merge:
        model = model.merge_and_unload()
    if trainer.args.bf16 or trainer.args.fp16:  # trained with fp32 master weights; saved as it computed
        dtype = torch.bfloat16 if trainer.args.bf16 else torch.float16
        if state_dict is None:
            model = model.to(dtype)
        else:
            state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    model.config.use_cache = True
    generation = model.generation_config
    generation.eos_token_id = eos_ids
    generation.pad_token_id = tokenizer.pad_token_id
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        for name, content in (extra_files or {}).items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2)
        os.replace(tmp, final)
    wait_for_everyone()
    return final
