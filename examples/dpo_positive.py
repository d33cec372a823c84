"""DPO-Positive (DPOP, Pal et al. 2024, arXiv:2402.13228): DPO that may not lower the chosen answer.

Plain DPO only widens the gap between chosen and rejected; on pairs that differ in a few tokens (the
example task's, or synth_data.py's) it can push both down, and exact match with them. DPOP subtracts
lambda * max(0, log ref(chosen) - log policy(chosen)) inside the sigmoid, so a chosen answer that falls
below the reference is penalised. TRL's DPOTrainer has no such loss_type; this file overrides its
compute_loss and keeps everything else of dpo.py (the cached reference log-probs, LoRA, overrides, dry run,
resume, checkpoints, export, wandb). It logs `dpop/penalty` next to TRL's reward metrics.

    accelerate launch examples/dpo_positive.py
    accelerate launch examples/dpo_positive.py dpop_lambda=5 data=outputs/synth_data/preferences.jsonl
"""

import os
import sys
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: dpo, common

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from trl import DPOTrainer  # noqa: E402

from common.params import resolve  # noqa: E402
from dpo import PARAMS as DPO_PARAMS  # noqa: E402
from dpo import RULES, main  # noqa: E402

PARAMS = {**DPO_PARAMS, "output_dir": "outputs/dpo_positive", "dpop_lambda": 50.0}  # the paper's value


def dpop_loss(chosen, rejected, ref_chosen, ref_rejected, beta: float, lam: float):
    """Per-pair loss and penalty from sequence log-probs; lam=0 is DPO's sigmoid loss."""
    penalty = torch.clamp(ref_chosen - chosen, min=0)
    margin = (chosen - ref_chosen) - (rejected - ref_rejected) - lam * penalty
    return -F.logsigmoid(beta * margin), penalty


def sequence_logps(model, inputs):
    """Summed log-probs of the completion tokens, split into (chosen, rejected) as TRL stacks them."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits
    targets = inputs["input_ids"][:, 1:]
    logps = torch.gather(logits[:, :-1].float().log_softmax(-1), 2, targets.unsqueeze(-1)).squeeze(-1)
    return (logps * inputs["completion_mask"][:, 1:]).sum(dim=1).chunk(2)


class DPOPTrainer(DPOTrainer):
    def __init__(self, *args, dpop_lambda: float, **kwargs):
        self.dpop_lambda = dpop_lambda
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = sequence_logps(model, inputs)
        if "ref_chosen_logps" in inputs:  # full fine-tuning: precomputed (and cached) by dpo.py
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:  # LoRA: the reference is the model with its adapter off
            with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
                ref_chosen, ref_rejected = sequence_logps(model, inputs)
        losses, penalty = dpop_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta, self.dpop_lambda)
        metrics = self._metrics["train" if model.training else "eval"]
        rewards = self.beta * ((chosen - ref_chosen) - (rejected - ref_rejected)).detach()
        metrics["dpop/penalty"].append(self.accelerator.gather(penalty.detach()).mean().item())
        metrics["rewards/margins"].append(self.accelerator.gather(rewards).mean().item())
        metrics["rewards/accuracies"].append(self.accelerator.gather((rewards > 0).float()).mean().item())
        loss = losses.mean()
        return (loss, None) if return_outputs else loss


if __name__ == "__main__":
    params = resolve(PARAMS, RULES)
    main(params, trainer_class=partial(DPOPTrainer, dpop_lambda=params["dpop_lambda"]))
