"""Chat SFT that weighs the function name more than the rest of the answer.

In the example task a call with the wrong function is useless, while the slot values are copied from
the request. This experiment scales each answer token's cross-entropy by `name_weight` for the tokens up
to and including the first "(" (the function name), and by 1 elsewhere; `name_weight=1` is sft_chat.py's
own loss (tested). Everything else (overrides, dry run, resume, checkpoints, export, wandb) is sft_chat.py's.

    accelerate launch examples/sft_chat_weighted_name.py
    accelerate launch examples/sft_chat_weighted_name.py name_weight=5 learning_rate=3e-3
"""

import os
import sys
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: sft_chat, common

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from trl import SFTTrainer  # noqa: E402

from common.params import resolve  # noqa: E402
from sft_chat import PARAMS as SFT_CHAT_PARAMS  # noqa: E402
from sft_chat import RULES, main  # noqa: E402

PARAMS = {**SFT_CHAT_PARAMS, "output_dir": "outputs/sft_chat_weighted_name", "name_weight": 3.0}


def weighted_token_loss(logits, labels, weights, num_items_in_batch=None):
    """Cross-entropy of each trained token times its weight, over the trained tokens (the Trainer's count
    across gradient accumulation when it gives one), as the model's own loss normalises."""
    logits, labels, weights = logits[:, :-1], labels[:, 1:], weights[:, 1:]  # position t predicts token t+1
    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none")
    trained = labels != -100
    total = (ce.view_as(labels) * weights * trained).sum()
    return total / (num_items_in_batch if num_items_in_batch is not None else trained.sum())


def name_weights(labels, tokenizer, weight: float):
    """`weight` on each answer's tokens up to and including the first one holding "(", 1 elsewhere."""
    weights = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
    for row, row_weights in zip(labels.tolist(), weights, strict=False):
        in_name, previous = False, -100
        for i, token in enumerate(row):
            if token != -100 and previous == -100:  # an answer starts
                in_name = True
            if token != -100 and in_name:
                row_weights[i] = weight
                in_name = "(" not in tokenizer.decode([token])
            previous = token
    return weights


class WeightedNameTrainer(SFTTrainer):
    def __init__(self, *args, name_weight: float, **kwargs):
        self.name_weight = name_weight
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
        weights = name_weights(labels, self.processing_class, self.name_weight)
        loss = weighted_token_loss(outputs.logits, labels, weights, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss


if __name__ == "__main__":
    params = resolve(PARAMS, RULES)
    main(params, trainer_class=partial(WeightedNameTrainer, name_weight=params["name_weight"]))
