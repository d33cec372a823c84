"""Fault injection for tests/test_faults.py. Python imports this module at start-up when tests/faults is on
PYTHONPATH; with FAULT set, the process kills itself with SIGKILL at that point (no cleanup, no atexit):

    FAULT=prepare           while the training examples are being built (after reading and cleaning)
    FAULT=step:N            right after optimizer step N, before anything is saved for it
    FAULT=save              inside a checkpoint save: weights and optimizer written, trainer_state.json not yet
    FAULT=state:N           halfway through writing checkpoint-N's trainer_state.json
    FAULT=replace:PATTERN   just before renaming a finished temporary file or folder onto a path matching
                            the fnmatch PATTERN (final/, caches, synth_data outputs)
    FAULT=put:N             right after synth_data's N-th generation result is committed to the request cache
"""

import fnmatch
import os
import signal

FAULT = os.environ.get("FAULT", "")


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def patch(owner, name, before=None, after=None):
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if before:
            before(*args, **kwargs)
        result = real(*args, **kwargs)
        if after:
            after(*args, **kwargs)
        return result

    setattr(owner, name, wrapper)


def install(kind: str, arg: str) -> None:
    if kind == "replace":
        patch(os, "replace", before=lambda src, dst, *a, **k: fnmatch.fnmatch(os.fspath(dst), arg) and die())
    elif kind == "prepare":
        import datasets

        patch(
            datasets.Dataset,
            "map",
            before=lambda self, function, *a, **k: type(function).__name__ == "_Tokenize" and die(),
        )
    elif kind == "step":
        from transformers.trainer_callback import CallbackHandler

        patch(
            CallbackHandler,
            "on_step_end",
            before=lambda self, args, state, control: state.global_step == int(arg) and die(),
        )
    elif kind == "save":
        from transformers import Trainer

        patch(Trainer, "_save_rng_state", before=lambda *a, **k: die())
    elif kind == "state":
        import dataclasses
        import json

        from transformers import TrainerState

        real = TrainerState.save_to_json

        def torn(self, path):
            if self.global_step != int(arg):
                return real(self, path)
            text = json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text[: len(text) // 2])
            die()

        TrainerState.save_to_json = torn
    elif kind == "put":
        from common.request_cache import RequestCache

        count = {"n": 0}

        def counted(*args, **kwargs):
            count["n"] += 1
            if count["n"] == int(arg):
                die()

        patch(RequestCache, "put", after=counted)
    else:
        raise ValueError(f"unknown FAULT {FAULT!r}")


if FAULT:
    install(*FAULT.partition(":")[::2])
