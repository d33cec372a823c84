"""The GPU suite's measurements; `bash bench/gpu_suite.sh` sets Python up and runs `gpu_suite.py run`.

    python bench/gpu_suite.py check --scratch /tmp/gpu_suite    # any machine, seconds: the plan and the table

`run` starts each measurement in its own process with its own timeout, under one deadline, and rewrites the
markdown table after each group; a measurement that fails or times out is a "failed: <reason>" cell and the
suite goes on. `check` validates the plan (preset files, every run's PARAMS overrides against the script) and
runs it with stand-in children, one made to fail and one to time out, so the table's writing is exercised on a
CPU. `setup` installs what the pins need beyond the chosen interpreter; `wheels` downloads those packages for a
GPU machine without network. `unmet` and the children (`peak`, `prepare`, `measure`, `fake`) are internal.
"""

import argparse
import datetime
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import workload  # noqa: E402  (bench/ is on the path when this file runs)

ME = os.path.abspath(__file__)
SCRIPTS = ("sft_chat", "sft_completion")
MODELS = {"Qwen2.5-0.5B": "Qwen/Qwen2.5-0.5B", "Qwen2.5-1.5B": "Qwen/Qwen2.5-1.5B"}
PRESETS = ("zero2", "zero3", "fsdp2", "zero3_offload")
# Long-tailed chats (bench/workload.py) with about 10k tokens a step, so MFU means something, and few steps, so
# that ten runs of ~0.5-1.5B models fit in the budget. Step 1 carries the lazy set-up; steps 2-6 are timed.
# The preset runs differ from the packed run only in settings that reuse its prepared data (data_cache_dir).
ROWS, MEDIAN, MAX_LENGTH, MAX_STEPS = 640, 300, 1024, 6
TRAIN = [
    f"max_length={MAX_LENGTH}",
    "batch_size=16",
    "grad_accum=2",
    "learning_rate=1e-5",
    "logging_steps=1",
    "eval_fraction=0",
    "test_data=",
    "clean.enabled=false",
]
COMMON = ["overwrite=true", "progress_bar=false", "report_to=none"]
BUDGET_S = 570

# setup: which pins to install beyond the interpreter. The machine's torch (a CUDA build) is never replaced, and
# compiled libraries other packages of the image were built against are kept when present.
NEVER = {"torch", "triton"}
MACHINE_BUILDS = {"numpy", "scipy", "matplotlib", "huggingface-hub", "safetensors", "tokenizers", "pyyaml"}
NOT_NEEDED = {"wandb", "openai"}  # report_to=none; synth_data.py is not measured
SOURCE_ONLY = {"deepspeed"}
# Needs of the pins that the H200 image lacks (.library/device/KINDS.md's package list, 2026-11-17).
IMAGE_LACKS = [
    "dill>=0.3.0,<0.4.2",
    "multiprocess<0.70.20",
    "hjson",
    "pydantic>=2.0.0",
    "regex>=2025.10.22",
    "fsspec>=2023.1.0,<=2026.9.0",
]
WHEEL_TAGS = [
    "--only-binary=:all:",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    *(
        f"--platform={p}"
        for p in (
            "manylinux_2_28_x86_64",
            "manylinux_2_27_x86_64",
            "manylinux_2_17_x86_64",
            "manylinux2014_x86_64",
            "manylinux1_x86_64",
        )
    ),
]


# ---------------------------------------------------------------------------------------------------- the plan


@dataclass
class Item:
    key: str  # "peak", "prepare", "default/sft_chat", "packing/packed", "preset/Qwen2.5-0.5B/zero2"
    kind: str  # peak | prepare | default | measure
    cmd: list[str]
    timeout: int
    result: str = ""  # the JSON file the child writes
    output_dir: str = ""
    script: str = ""  # the script and overrides a default or measure run resolves
    overrides: list[str] = field(default_factory=list)
    config: str = ""  # the accelerate preset, if any
    needs: tuple = ()


def slug(key: str) -> str:
    return key.replace("/", "_")


def launch(args: list[str], config: str, port: int) -> list[str]:
    """`accelerate launch` with one process, as a user runs it (a preset file, or the plain single-GPU launch)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    cmd += (
        ["--config_file", config]
        if config
        else ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    )
    return cmd + ["--num_processes", "1", "--main_process_port", str(port), *args]


def plan(scratch: str) -> list[list[Item]]:
    """Groups of items; a group's items run side by side, groups one after another."""
    ports = iter(range(29510, 29600))  # a port per launch: a run killed at its timeout may hold its port a while
    caches = [f"data_cache_dir={scratch}/data_cache", f"clean.cache_dir={scratch}/clean_cache"]
    data = f"{scratch}/data/chats.jsonl"

    def result(key):
        return f"{scratch}/results/{slug(key)}.json"

    # Everything needs peak, which finds the GPU: without one the rest would train on the CPU until the deadline.
    peak = Item("peak", "peak", [sys.executable, ME, "peak", "--result", result("peak")], 60, result("peak"))
    # Timeouts: about 3x what each run should take on an H100/H200, so that a hung one cannot starve the rest.
    # The built-in model leaves the GPU nearly idle: the two defaults run side by side and beside the preparation.
    defaults = []
    for script in SCRIPTS:
        out = f"{scratch}/runs/default_{script}"
        overrides = [f"output_dir={out}", *COMMON, *caches]
        defaults.append(
            Item(
                f"default/{script}",
                "default",
                launch([f"{script}.py", *overrides], "", next(ports)),
                240,
                output_dir=out,
                script=script,
                overrides=overrides,
                needs=("peak",),
            )
        )
    prepare = Item(
        "prepare",
        "prepare",
        [sys.executable, ME, "prepare", "--scratch", scratch, "--result", result("prepare")],
        200,
        result("prepare"),
        needs=("peak",),
    )

    def measured(key, model, extra, config, timeout):
        out = f"{scratch}/runs/{slug(key)}"
        overrides = [
            f"model={scratch}/models/{model}",
            f"data=[{data}]",
            f"output_dir={out}",
            *TRAIN,
            *COMMON,
            *caches,
            *extra,
        ]
        cmd = launch([ME, "measure", "--script", "sft_chat", "--result", result(key), *overrides], config, next(ports))
        return Item(key, "measure", cmd, timeout, result(key), out, "sft_chat", overrides, config, ("prepare",))

    small = next(iter(MODELS))
    packing = [
        measured(f"packing/{name}", small, [*flag, "num_epochs=1", "max_steps=-1"], "", 90)
        for name, flag in (("packed", []), ("padded", ["packing=false"]))
    ]  # packed: the default, packing=auto
    presets = [
        measured(
            f"preset/{model}/{preset}",
            model,
            [f"max_steps={MAX_STEPS}"],
            f"configs/accelerate/{preset}.yaml",
            (90 if model == small else 120) + (30 if preset == "zero3_offload" else 0),
        )
        for model in MODELS
        for preset in PRESETS
    ]
    return [[peak], [*defaults, prepare], *([p] for p in packing), *([p] for p in presets)]


# ---------------------------------------------------------------------------------------------- the children


class TrainingDone(BaseException):
    """Leaves the script once the measured training is over: the export (final/, gathered under ZeRO-3) is not
    what is measured, and writing 3 GB for each of ten runs would spend the budget. A BaseException, so that the
    script's error handling lets it through."""


def measuring(trainer_class, result: str):
    """trainer_class that times each optimizer step (synchronised), writes its counts and peak GPU memory to
    `result` when training ends, and saves no checkpoint (one of a 1.5B model with its optimizer is ~25 GB)."""
    import torch
    from transformers import TrainerCallback

    from common.distributed import is_main

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    class StepClock(TrainerCallback):
        def __init__(self, counts):
            self.counts = counts

        def on_train_begin(self, args, state, control, **kwargs):
            sync()
            self.counts["train_begin"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.counts["step_end"].append(time.perf_counter())
            self.counts["tokens_at_step_end"].append(self.counts["tokens"])
            control.should_save = False

    class Measuring(workload.measured(trainer_class)):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.counts.update(step_end=[], tokens_at_step_end=[])
            self.add_callback(StepClock(self.counts))

        def train(self, *args, **kwargs):
            super().train(*args, **kwargs)
            if is_main():
                c = self.counts
                ends, tokens = [c["train_begin"], *c["step_end"]], [0, *c["tokens_at_step_end"]]
                model = self.accelerator.unwrap_model(self.model)
                write_json(
                    result,
                    dict(
                        steps=len(c["step_end"]),
                        step_s=[b - a for a, b in zip(ends, ends[1:], strict=False)],
                        step_tokens=[b - a for a, b in zip(tokens, tokens[1:], strict=False)],
                        epoch_s=c["epoch_s"],
                        tokens=c["tokens"],
                        padded_tokens=c["padded_tokens"],
                        trained_tokens=c["trained_tokens"],
                        peak_allocated=torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0,
                        peak_reserved=torch.cuda.max_memory_reserved() if torch.cuda.is_available() else 0,
                        attention=getattr(model.config, "_attn_implementation", "?"),
                        threads=torch.get_num_threads(),
                    ),
                )
            raise TrainingDone

    return Measuring


def child_measure(args) -> None:
    import importlib

    import trl

    from common.distributed import shutdown
    from common.params import resolve

    module = importlib.import_module(args.script)
    try:
        module.main(resolve(module.PARAMS, args.overrides), trainer_class=measuring(trl.SFTTrainer, args.result))
    except TrainingDone:
        shutdown()


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def child_peak(args) -> None:
    import platform

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("error: no GPU: torch.cuda.is_available() is False")
    props = torch.cuda.get_device_properties(0)
    write_json(
        args.result,
        dict(
            device=props.name,
            memory_gib=props.total_memory / 2**30,
            cuda=torch.version.cuda,
            versions=versions(),
            python=platform.python_version(),
            cores=os.cpu_count(),
            bf16=torch.cuda.is_bf16_supported(),
            peak_tflops=workload.matmul_peak_gflops(8192, 20, "cuda", torch.bfloat16) / 1e3,
        ),
    )


def parameter_count(folder: str) -> int:
    """Parameters of a saved model, from its safetensors headers (tied weights are stored once)."""
    import glob
    import math
    import struct

    total = 0
    for path in glob.glob(os.path.join(folder, "*.safetensors")):
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def child_prepare(args) -> None:
    """The stand-in models (built on the GPU: random initialisation of 1.5B parameters is slow on a CPU), the chat
    rows, and DeepSpeed's CPU Adam, which zero3_offload would otherwise compile inside its timed run."""
    import shutil

    import stand_in_model
    import torch

    prepared = {"models": {}}
    for name, hub in MODELS.items():
        folder = os.path.join(args.scratch, "models", name)
        if not parameter_count(folder):  # a rerun reuses the models; a folder appears only once whole
            for stale in (folder, folder + ".tmp"):
                shutil.rmtree(stale, ignore_errors=True)
            with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
                stand_in_model.main(hub, folder + ".tmp")
            os.replace(folder + ".tmp", folder)
        prepared["models"][name] = parameter_count(folder)
    os.makedirs(os.path.join(args.scratch, "data"), exist_ok=True)
    rows = workload.chat_rows(ROWS, MEDIAN, MAX_LENGTH - 24)  # room for the chat tokens, as the CPU benchmarks leave
    workload.write_jsonl(os.path.join(args.scratch, "data", "chats.jsonl"), rows)
    start = time.perf_counter()
    try:
        from deepspeed.ops.op_builder import CPUAdamBuilder

        CPUAdamBuilder().load(verbose=False)
        prepared["cpu_adam"] = f"built in {time.perf_counter() - start:.0f} s"
    except Exception as e:  # zero3_offload's own run then reports the cause
        prepared["cpu_adam"] = f"not built: {one_line(f'{type(e).__name__}: {e}')}"
    write_json(args.result, prepared)


def child_fake(args) -> None:
    """check mode's stand-in for a child: its output in the real one's shape, without torch or a GPU."""
    if args.behave == "fail":
        print("Traceback (most recent call last):\nRuntimeError: injected failure", file=sys.stderr)
        raise SystemExit(1)
    if args.behave == "hang":
        time.sleep(60)
    if args.kind == "peak":
        write_json(
            args.result,
            dict(
                device="check (no GPU)",
                memory_gib=0.0,
                cuda="-",
                versions=versions(),
                python=sys.version.split()[0],
                cores=os.cpu_count(),
                bf16=True,
                peak_tflops=800.0,
            ),
        )
    elif args.kind == "prepare":
        write_json(
            args.result, dict(models=dict(zip(MODELS, (494032768, 1543714304), strict=False)), cpu_adam="built in 1 s")
        )
    elif args.kind == "default":
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "metrics.jsonl"), "w", encoding="utf-8") as f:
            f.write(json.dumps({"step": 470, "train_runtime": 31.0}) + "\n")
        print("held-out exact match: 99.5% on data/examples/chat_test.jsonl")
    else:
        padded = "padded" in args.result
        steps = 20 if "packing" in args.result else MAX_STEPS
        write_json(
            args.result,
            dict(
                steps=steps,
                step_s=[2.0] + [0.25] * (steps - 1),
                step_tokens=[10000] * steps,
                epoch_s=[6.75],
                tokens=10000 * steps,
                padded_tokens=(20000 if padded else 10000) * steps,
                trained_tokens=7000 * steps,
                peak_allocated=12 * 2**30,
                peak_reserved=14 * 2**30,
                attention="sdpa" if padded else "sdpa_varlen",
                threads=1,
            ),
        )


# ------------------------------------------------------------------------------------------- the orchestrator


def write_json(path: str, data) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


LAUNCHER_NOISE = (
    "CalledProcessError",
    "ChildFailedError",
    "torch.distributed.elastic",
    "subprocess.",
    "Exception ignored",
)


def failure_line(log: str) -> str:
    """The line of a failed run's output that says why: the script's one-line error, else the last exception
    that is not a launcher reporting its child's exit, else the last line. torchrun's "[rank0]:" prefixes go."""
    lines = [re.sub(r"^\[\w*\d+\]:\s*", "", line.strip()) for line in log.splitlines() if line.strip()]
    for pattern in (r"error: ", r"[\w.]*(Error|Exception|Interrupt)\b"):
        hits = [line for line in lines if re.match(pattern, line) and not any(n in line for n in LAUNCHER_NOISE)]
        if hits:
            return one_line(hits[-1])
    return one_line(lines[-1]) if lines else "no output"


class GpuMemory:
    """nvidia-smi's memory.used, polled every 250 ms in the background; `peak` since the last `reset`."""

    def __init__(self):
        self.peak_mib = None
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "250"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            self.proc = None
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.strip().isdigit() and self.peak_mib is not None:
                self.peak_mib = max(self.peak_mib, int(line))

    def reset(self):
        self.peak_mib = 0 if self.proc else None

    def close(self):
        if self.proc:
            self.proc.kill()


class Suite:
    def __init__(self, scratch: str, table: str, deadline: float, started: float, setup: dict):
        self.scratch, self.table, self.deadline, self.started, self.setup = scratch, table, deadline, started, setup
        self.results: dict[str, dict] = {}
        self.running: dict[str, subprocess.Popen] = {}
        self.gpu = GpuMemory()
        os.makedirs(os.path.join(scratch, "logs"), exist_ok=True)

    def log_path(self, item: Item) -> str:
        return os.path.join(self.scratch, "logs", f"{slug(item.key)}.log")

    def blocked(self, item: Item) -> str | None:
        for need in item.needs:
            if not self.results.get(need, {}).get("ok"):
                return f"skipped: needs {need}, which failed"
        if self.deadline - time.time() < max(30, item.timeout / 3):  # too little left for this run to finish
            return "skipped: the suite's time budget was spent"
        return None

    def run_group(self, group: list[Item]) -> None:
        started = {}
        for item in group:
            reason = self.blocked(item)
            if reason:
                self.results[item.key] = dict(ok=False, reason=reason)
                print(f"{item.key}: {reason}", flush=True)
                continue
            for stale in (item.result, os.path.join(item.output_dir, "metrics.jsonl")):
                if stale and os.path.exists(stale):
                    os.remove(stale)
            timeout = max(1, min(item.timeout, int(self.deadline - time.time()) - 5))
            log = open(self.log_path(item), "w", encoding="utf-8")
            # Its own process group, so that a timeout ends the launcher and every rank it started.
            proc = subprocess.Popen(item.cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, process_group=0)
            self.running[item.key] = proc
            started[item.key] = (item, proc, time.time(), timeout, log)
            print(f"{item.key}: started (timeout {timeout} s)", flush=True)
        self.gpu.reset()
        alone = len(started) == 1
        while started:
            time.sleep(0.2)
            for key, (item, proc, begun, timeout, log) in list(started.items()):
                timed_out = proc.poll() is None and time.time() - begun > timeout
                if timed_out:
                    self.stop(proc)
                if proc.poll() is None:
                    continue
                try:  # a rank its launcher left behind would hold GPU memory into the next run
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                log.close()
                del started[key], self.running[key]
                outcome = self.outcome(item, proc.returncode, timed_out, timeout)
                outcome.update(wall_s=time.time() - begun, gpu_peak_mib=self.gpu.peak_mib if alone else None)
                self.results[key] = outcome
                print(f"{key}: {'ok' if outcome['ok'] else outcome['reason']} ({outcome['wall_s']:.0f} s)", flush=True)

    def stop(self, proc) -> None:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 3)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        for proc in list(self.running.values()):
            self.stop(proc)
        self.gpu.close()

    def outcome(self, item: Item, code: int, timed_out: bool, timeout: int) -> dict:
        with open(self.log_path(item), encoding="utf-8", errors="replace") as f:
            log = f.read()
        if timed_out:
            last = f" (last line: {failure_line(log)})" if log.strip() else ""
            return dict(ok=False, reason=f"timed out after {timeout} s{last}")
        if code != 0:
            return dict(ok=False, reason=f"exit status {code}: {failure_line(log)}")
        if item.kind == "default":
            match = re.search(r"held-out exact match: ([\d.]+%)", log)
            if not match:
                return dict(ok=False, reason="no 'held-out exact match' line in the output")
            runtime = [
                m["train_runtime"]
                for m in read_jsonl(os.path.join(item.output_dir, "metrics.jsonl"))
                if "train_runtime" in m
            ]
            return dict(ok=True, exact_match=match.group(1), train_runtime=runtime[-1] if runtime else None)
        if not os.path.isfile(item.result):
            return dict(ok=False, reason=f"no result file (last line: {failure_line(log)})")
        data = read_json(item.result)
        if item.kind == "measure" and not data["step_s"]:
            return dict(ok=False, reason="no optimizer step was timed")
        return dict(ok=True, **data)

    def write(self) -> None:
        write_json(os.path.join(self.scratch, "results.json"), self.results)
        os.makedirs(os.path.dirname(os.path.abspath(self.table)), exist_ok=True)
        with open(self.table, "w", encoding="utf-8") as f:
            f.write(render(self.results, self.setup, time.time() - self.started))


def read_jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# -------------------------------------------------------------------------------------------------- the table


def cell(text) -> str:
    return str(text).replace("|", "\\|")


def failed(result: dict | None) -> str:
    reason = (result or {}).get("reason", "not run")
    return cell(reason if reason.startswith("skipped") else f"failed: {reason}")


def gib(n) -> str:
    return f"{n / 2**30:.1f} GiB" if n else "n/a"


def steady(r: dict) -> tuple[float, float]:
    """Seconds per optimizer step (median) and tokens/s over the steps after the first, which carries lazy set-up."""
    times, tokens = (r["step_s"][1:], r["step_tokens"][1:]) if r["steps"] > 1 else (r["step_s"], r["step_tokens"])
    return statistics.median(times), sum(tokens) / sum(times)


def mfu(params: int | None, tokens_per_s: float, peak_tflops: float | None) -> str:
    return f"{100 * 6 * params * tokens_per_s / (peak_tflops * 1e12):.1f}%" if params and peak_tflops else "n/a"


def render(results: dict, setup: dict, wall_s: float) -> str:
    peak = results.get("peak", {})
    prepared = results.get("prepare", {})
    params = prepared.get("models", {}) if prepared.get("ok") else {}
    tflops = peak.get("peak_tflops") if peak.get("ok") else None
    lines = [f"## GPU suite ({datetime.date.today()}, `bash bench/gpu_suite.sh`)", ""]
    if peak.get("ok"):
        v = peak["versions"]
        lines.append(
            f"{peak['device']} ({peak['memory_gib']:.0f} GiB, bf16 {'yes' if peak['bf16'] else 'no'}), "
            f"CUDA {peak['cuda']}, "
            + ", ".join(f"{k} {v[k]}" for k in v)
            + f"; Python {peak['python']}, {peak['cores']} CPU cores."
        )
        lines.append(
            f"Measured bf16 matmul peak: **{tflops:.0f} TFLOP/s** (8192 x 8192 products, best of 20). "
            "MFU = 6 x parameters x non-padding tokens/s / that peak (attention FLOPs not counted)."
        )
    else:
        lines.append(f"Machine and bf16 peak: {failed(peak)}")
    lines += [f"Setup: {cell(setup.get('summary', 'no setup record'))}. Whole suite: {wall_s:.0f} s.", ""]

    lines += [
        "### The defaults in bf16 (`dtype=auto`): built-in tiny model, example task",
        "",
        "`accelerate launch --num_processes 1 --mixed_precision no SCRIPT.py overwrite=true progress_bar=false "
        "report_to=none` (output_dir and caches in the scratch folder). The two ran side by side, beside the "
        "stand-in models' build and DeepSpeed's CPU Adam compile, so their wall times are upper bounds.",
        "",
        "| script | wall | train_runtime | held-out exact match |",
        "|---|---|---|---|",
    ]
    for script in SCRIPTS:
        r = results.get(f"default/{script}")
        if r and r.get("ok"):
            runtime = f"{r['train_runtime']:.1f} s" if r.get("train_runtime") else "n/a"
            lines.append(f"| {script}.py | {r['wall_s']:.1f} s | {runtime} | {r['exact_match']} |")
        else:
            lines.append(f"| {script}.py | {failed(r)} | | |")

    small = next(iter(MODELS))
    cpu_adam = f" DeepSpeed's CPU Adam was compiled beforehand ({prepared['cpu_adam']})." if params else ""
    lines += [
        "",
        "### Presets on one GPU (`--num_processes 1`), stand-in models with random weights",
        "",
        f"sft_chat.py on {ROWS} long-tailed chats (median {MEDIAN} tokens), packed, bf16, "
        f"max_length={MAX_LENGTH}, batch_size=16, grad_accum=2, max_steps={MAX_STEPS}; no checkpoint, no final/ "
        "export. s/step: median of "
        f"steps 2-{MAX_STEPS} (step 1 carries the lazy set-up), tokens/s over the same steps; peak allocated: "
        "torch.cuda.max_memory_allocated over the whole process; peak used: nvidia-smi memory.used every 250 ms, "
        "CUDA context included; threads: torch's CPU threads in the run (accelerate sets OMP_NUM_THREADS). "
        f"`none` is the plain launch (the packed run below).{cpu_adam}",
        "",
        "| model | params | preset | s/step | tokens/s | MFU | peak allocated | peak used | threads | process wall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        count = params.get(model)
        rows = [("none", "packing/packed")] if model == small else []
        for preset, key in rows + [(p, f"preset/{model}/{p}") for p in PRESETS]:
            r = results.get(key)
            head = f"| {model} | {count / 1e6:.0f}M | {preset} |" if count else f"| {model} | n/a | {preset} |"
            if r and r.get("ok"):
                per_step, tok_s = steady(r)
                used = f"{r['gpu_peak_mib'] / 1024:.1f} GiB" if r.get("gpu_peak_mib") else "n/a"
                lines.append(
                    f"{head} {per_step:.3f} | {tok_s:,.0f} | {mfu(count, tok_s, tflops)} | "
                    f"{gib(r['peak_allocated'])} | {used} | {r['threads']} | {r['wall_s']:.0f} s |"
                )
            else:
                lines.append(f"{head} {failed(r)} | | | | | | |")

    lines += [
        "",
        f"### Packed vs padded batches, {small} stand-in, one epoch",
        "",
        "The same settings with num_epochs=1: packed rows holding about 16 examples a micro-step with "
        "per-document attention (`packing=auto`, the default: `sdpa_varlen`), against padded batches of 16 in "
        "random order (`packing=false`, sdpa). "
        "tokens/s counts non-padding tokens over the whole epoch, first step included.",
        "",
        "| batching | attention | epoch | optimizer steps | tokens/s | padding share | MFU | peak allocated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("packed", "padded"):
        r = results.get(f"packing/{name}")
        if r and r.get("ok"):
            epoch = r["epoch_s"][0] if r["epoch_s"] else sum(r["step_s"])
            tok_s = r["tokens"] / epoch
            padding = 1 - r["tokens"] / r["padded_tokens"] if r["padded_tokens"] else 0.0
            lines.append(
                f"| {name} | {r['attention']} | {epoch:.1f} s | {r['steps']} | {tok_s:,.0f} | {padding:.1%} | "
                f"{mfu(params.get(small), tok_s, tflops)} | {gib(r['peak_allocated'])} |"
            )
        else:
            lines.append(f"| {name} | {failed(r)} | | | | | | |")
    return "\n".join(lines) + "\n"


def run_suite(args, groups: list[list[Item]]) -> Suite:
    setup = read_json(args.setup) if args.setup and os.path.isfile(args.setup) else {}
    suite = Suite(
        os.path.abspath(args.scratch),
        args.table,
        args.deadline or time.time() + BUDGET_S,
        args.started or time.time(),
        setup,
    )

    def on_term(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        for group in groups:
            suite.run_group(group)
            suite.write()
    finally:
        suite.stop_all()
        suite.write()
    return suite


# ---------------------------------------------------------------------------------------------------- check


def validate(groups: list[list[Item]]) -> list[str]:
    """What would fail on the GPU machine before any GPU work: a preset file, a script, a PARAMS override."""
    import importlib

    import stand_in_model
    import yaml

    from common.errors import UserError
    from common.params import apply_overrides

    problems = []
    for item in (i for group in groups for i in group):
        if item.config:
            with open(os.path.join(ROOT, item.config), encoding="utf-8") as f:
                preset = yaml.safe_load(f)
            deepspeed = preset.get("deepspeed_config", {}).get("deepspeed_config_file")
            if deepspeed and not os.path.isfile(os.path.join(ROOT, deepspeed)):
                problems.append(f"{item.key}: {item.config} points at a missing {deepspeed}")
        if item.script:
            module = importlib.import_module(item.script)
            try:
                apply_overrides(module.PARAMS, item.overrides)
            except UserError as e:
                problems.append(f"{item.key}: {item.script}.py refuses its overrides: {e}")
    problems += [
        f"bench/stand_in_model.py has no shape for {hub}" for hub in MODELS.values() if hub not in stand_in_model.SHAPES
    ]
    return problems


def check(args) -> int:
    groups = plan(os.path.abspath(args.scratch))
    problems = validate(groups)
    for problem in problems:
        print(f"problem: {problem}", flush=True)
    # One failure and one timeout, to show both become a "failed: ..." cell and the suite goes on.
    behave = {f"preset/{list(MODELS)[1]}/zero3_offload": "fail", f"preset/{list(MODELS)[1]}/fsdp2": "hang"}
    for item in (i for group in groups for i in group):
        item.cmd = [
            sys.executable,
            ME,
            "fake",
            "--kind",
            item.kind,
            "--result",
            item.result,
            "--output-dir",
            item.output_dir,
            "--behave",
            behave.get(item.key, "ok"),
        ]
        item.timeout = 2 if item.key in behave else 30
    run_suite(args, groups)
    print(f"table: {args.table}")
    return 1 if problems else 0


# ---------------------------------------------------------------------------------------------------- setup


def requirement_lines() -> list[str]:
    lines = []
    for name in ("requirements.txt", "requirements-deepspeed.txt"):
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            lines += [line.split("#")[0].strip() for line in f]
    return [line for line in lines if line and not line.startswith("-")]


def unmet(target: str) -> list[str]:
    """Requirements to install: pins this interpreter lacks (or has at another version, except the machine's
    compiled builds), and the unmet needs of what was installed into `target` (which must be on sys.path)."""
    from importlib.metadata import PackageNotFoundError, distributions, version

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name

    def have(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    def wanted(req: Requirement, pinned: bool) -> bool:
        name, installed = canonicalize_name(req.name), have(req.name)
        if name in NEVER or name.startswith("nvidia-") or (pinned and name in NOT_NEEDED):
            return False
        if installed is None:
            return True
        return not (pinned and name in MACHINE_BUILDS) and not req.specifier.contains(installed, prereleases=True)

    pins = [line for line in requirement_lines() if wanted(Requirement(line), pinned=True)]
    named = {canonicalize_name(Requirement(line).name) for line in pins}
    needs: dict[str, SpecifierSet] = {}  # one requirement a package, however many packages ask for it
    for dist in distributions(path=[target]):
        for text in dist.requires or []:
            req = Requirement(text)
            name = canonicalize_name(req.name)
            if (req.marker is None or req.marker.evaluate({"extra": ""})) and name not in named and wanted(req, False):
                needs[name] = needs.get(name, SpecifierSet()) & req.specifier
    return pins + [f"{name}{spec}" for name, spec in sorted(needs.items())]


def setup(args) -> None:
    """Install what unmet() names into --target with pip, a few rounds (each round's installs may need more), from
    the wheelhouse when there is one (a GPU machine has no network), else from the index."""
    start = time.time()
    wheels = args.wheels if os.path.isdir(args.wheels) and os.listdir(args.wheels) else None
    source = ["--no-index", "--find-links", args.wheels] if wheels else ["--retries", "1", "--timeout", "15"]
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--upgrade",
        "--target",
        args.target,
        "--no-build-isolation",
        "--no-compile",
        "--disable-pip-version-check",
        "--no-warn-script-location",
        *source,
    ]
    installed, refused = [], []
    for _ in range(4):
        listed = subprocess.run([sys.executable, ME, "unmet", "--target", args.target], capture_output=True, text=True)
        if listed.returncode != 0:
            refused.append(f"unmet: {failure_line(listed.stderr)}")
            break
        need = [r for r in json.loads(listed.stdout) if r not in refused]
        if not need:
            break
        print(f"installing: {' '.join(need)}", flush=True)
        if subprocess.run(pip + need).returncode == 0:
            installed += need
            continue
        for req in need:  # all at once failed: find which
            (installed if subprocess.run(pip + [req]).returncode == 0 else refused).append(req)
    source_text = f"wheelhouse {args.wheels}" if wheels else "the package index"
    summary = f"{args.how}; " + (
        f"installed {len(installed)} packages from {source_text}" if installed else "nothing to install"
    )
    if refused:
        summary += f"; could not install {', '.join(refused)}"
    write_json(
        args.summary, dict(summary=f"{summary} ({time.time() - start:.0f} s)", installed=installed, refused=refused)
    )
    print(summary, flush=True)


def fetch_wheels(args) -> None:
    """Download, for the GPU image's Python 3.12, the pins setup would install there and the needs it lacks."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = [
        line
        for line in requirement_lines()
        if canonicalize_name(Requirement(line).name) not in NEVER | MACHINE_BUILDS | NOT_NEEDED
    ]
    sources = [p for p in pins if canonicalize_name(Requirement(p).name) in SOURCE_ONLY]
    download = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--dest", args.dest]
    for cmd in (
        download + WHEEL_TAGS + ["--no-deps", *(p for p in pins if p not in sources)],
        download + WHEEL_TAGS + [*IMAGE_LACKS, *args.extra],
        download + ["--no-deps", "--no-binary=:all:", *sources],
    ):
        subprocess.run(cmd, check=True)
    size = sum(os.path.getsize(os.path.join(args.dest, f)) for f in os.listdir(args.dest))
    print(
        f"{args.dest}: {len(os.listdir(args.dest))} files, {size / 2**20:.1f} MiB "
        f'(carry it to the GPU machine: the run tool\'s carry=["{args.dest}"])'
    )


# ------------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "check"):
        p = sub.add_parser(name)
        p.add_argument("--scratch", required=True, help="every model, cache, run and log of the suite goes here")
        p.add_argument("--table", required=True, help="the markdown table to write")
        p.add_argument("--setup", default="", help="setup's JSON summary, for the table's header")
        p.add_argument("--deadline", type=float, default=0, help=f"epoch seconds (default: now + {BUDGET_S} s)")
        p.add_argument("--started", type=float, default=0, help="epoch seconds the whole suite started")
    p = sub.add_parser("setup")
    p.add_argument("--target", required=True)
    p.add_argument("--wheels", required=True)
    p.add_argument("--how", default="")
    p.add_argument("--summary", required=True)
    sub.add_parser("unmet").add_argument("--target", required=True)
    p = sub.add_parser("wheels")
    p.add_argument("--dest", required=True)
    p.add_argument("extra", nargs="*", help="more requirements to download with their needs")
    for name in ("peak", "prepare", "measure", "fake"):
        p = sub.add_parser(name)
        p.add_argument("--result", required=True)
    sub.choices["prepare"].add_argument("--scratch", required=True)
    sub.choices["measure"].add_argument("--script", choices=SCRIPTS, required=True)
    sub.choices["measure"].add_argument("overrides", nargs="*")
    for flag, default in (("--kind", "measure"), ("--output-dir", ""), ("--behave", "ok")):
        sub.choices["fake"].add_argument(flag, default=default)
    args = parser.parse_args()

    if args.command == "run":
        run_suite(args, plan(os.path.abspath(args.scratch)))
    elif args.command == "check":
        raise SystemExit(check(args))
    elif args.command == "unmet":
        print(json.dumps(unmet(args.target)))
    else:
        {
            "setup": setup,
            "wheels": fetch_wheels,
            "peak": child_peak,
            "prepare": child_prepare,
            "measure": child_measure,
            "fake": child_fake,
        }[args.command](args)


if __name__ == "__main__":
    main()
