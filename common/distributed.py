"""Distributed helpers: who is the main process, what the launch really is, and a clean shutdown."""

import os

import torch.distributed as dist


def is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def describe() -> str:
    """One line on what the launch really does, printed at start (a launch that silently ran 1 process shows it)."""
    import torch
    from accelerate import PartialState

    # The state is shared by the whole process: created here without cpu=True on a CPU-only machine it
    # would pin the run to one process, so ask for what the Trainer will ask for (use_cpu without a GPU).
    state = PartialState(cpu=not torch.cuda.is_available())
    return f"distributed: {state.distributed_type.value} world_size={state.num_processes} device={state.device}"


def wait_for_everyone() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """End the process group on every rank; gloo ranks that skip this sometimes abort at exit."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
