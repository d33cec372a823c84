"""Tracking: where metrics go (wandb when asked), metrics.jsonl always, and loss.png at the end."""

import json
import os

import matplotlib
import matplotlib.pyplot as plt
from transformers import TrainerCallback

from common.distributed import describe_sharding
from common.params import redact


def report_to(choice: str) -> str:
    """ "auto" means wandb when WANDB_PROJECT is set (WANDB_MODE=offline works without network), else none."""
    if choice == "auto":
        return "wandb" if os.environ.get("WANDB_PROJECT") else "none"
    return choice


def init_wandb(params: dict, run_name: str) -> None:
    """Start the wandb run ourselves so its config is the redacted PARAMS (the Trainer then reuses the run)."""
    import wandb  # noqa: PLC0415 - optional: only a run that reports to wandb imports it

    if wandb.run is None:
        wandb.init(project=os.environ.get("WANDB_PROJECT"), name=run_name, config=redact(params))


class MetricsFile(TrainerCallback):
    """Appends every logged dict, with its step and epoch, to output_dir/metrics.jsonl (main process only)."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, "metrics.jsonl")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


class ShardingReport(TrainerCallback):
    """Prints, from every rank when training starts, how much of the model it holds under ZeRO-3."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):

        line = describe_sharding(model) if model is not None else None
        if line:
            print(line, flush=True)


def read_metrics(output_dir: str) -> list[dict]:
    path = os.path.join(output_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss(output_dir: str) -> None:
    """loss.png: training loss and, when there is one, eval loss against the step; for RL runs (metrics with a
    reward), the mean reward with its spread beside it."""

    matplotlib.use("Agg")

    metrics = read_metrics(output_dir)
    rewards = [(m["step"], m["reward"], m.get("reward_std", 0.0)) for m in metrics if "reward" in m]
    fig, axes = plt.subplots(1, 2 if rewards else 1, figsize=(12 if rewards else 7, 4), squeeze=False)
    ax = axes[0][0]
    for key, label in (("loss", "train"), ("eval_loss", "eval")):
        points = [(m["step"], m[key]) for m in metrics if key in m]
        if points:
            ax.plot(*zip(*points, strict=False), label=label, marker="o" if label == "eval" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if ax.lines:  # a run shorter than logging_steps logged no loss
        ax.legend()
    ax.grid(alpha=0.3)
    if rewards:
        steps, mean, std = zip(*rewards, strict=False)
        ax = axes[0][1]
        ax.plot(steps, mean, label="reward (mean)")
        ax.fill_between(
            steps,
            [m - s for m, s in zip(mean, std, strict=False)],
            [m + s for m, s in zip(mean, std, strict=False)],
            alpha=0.2,
            label="± std",
        )
        ax.set_xlabel("step")
        ax.set_ylabel("reward")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "loss.png"), dpi=100)
    plt.close(fig)
