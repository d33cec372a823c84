"""Distributed helpers: who is the main process, what the launch really is, and a clean shutdown."""

import json
import os

import torch
import torch.distributed as dist
from accelerate import PartialState

if not torch.cuda.is_available():  # DeepSpeed picks its accelerator at import; on a CPU machine it must be told
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


def is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def describe() -> str:
    """One line on what the launch really does, printed at start (a launch that silently ran 1 process shows it)."""

    # The state is shared by the whole process: created here without cpu=True on a CPU-only machine it
    # would pin the run to one process, so ask for what the Trainer will ask for (use_cpu without a GPU).
    state = PartialState(cpu=not torch.cuda.is_available())
    threads = use_cpu_cores() if state.device.type == "cpu" else None
    # Asked for cpu=True, the state reads MULTI_CPU even where the Trainer will run DeepSpeed: name what runs.
    stage = zero_stage()
    kind = "DEEPSPEED" if stage is not None else state.distributed_type.value
    line = f"distributed: {kind} world_size={state.num_processes} device={state.device}"
    if stage is not None:
        line += f" zero_stage={stage} ({os.environ.get('ACCELERATE_DEEPSPEED_CONFIG_FILE')})"
    return line + (f" threads={threads}" if threads else "")


def use_cpu_cores() -> int:
    """torch threads for a CPU run: this process's share of the cores it may use.

    `accelerate launch` without `--cpu` or a config sets OMP_NUM_THREADS=1 (it computes a share only when
    told the run is on CPU), and torch then trains on one core: the default sft_chat run took 109 s under
    `accelerate launch` and 79 s under `python` on two cores. An OMP_NUM_THREADS other than 1 is kept.
    """
    if os.environ.get("OMP_NUM_THREADS") == "1" and "ACCELERATE_DYNAMO_BACKEND" in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    return torch.get_num_threads()


def zero_stage() -> int | None:
    """The ZeRO stage of the DeepSpeed config accelerate launched with, or None without DeepSpeed."""
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED") != "true" or not path:
        return None

    with open(path, encoding="utf-8") as f:
        return json.load(f).get("zero_optimization", {}).get("stage", 0)


def describe_sharding(model) -> str | None:
    """Under ZeRO-3, how much of the model this rank holds (None when parameters are not partitioned)."""
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_numel")]
    if not partitioned:
        return None
    held = sum(p.ds_tensor.numel() for p in partitioned)
    total = sum(p.ds_numel for p in partitioned)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return (
        f"zero3: rank {rank} holds {held} of {total} parameter elements ({held / max(1, total):.0%}); "
        f"{len(partitioned)} tensors partitioned"
    )


def wait_for_everyone() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """End the process group on every rank; gloo ranks that skip this sometimes abort at exit."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
