"""The TRL hooks common/trl_patches.py overrides still exist in the pinned TRL, with the same parameters, and are
still called where the override expects; compose keeps an experiment's constructor arguments."""

import functools
import inspect

import pytest
from trl import DPOTrainer, GRPOTrainer, SFTTrainer

from common import trl_patches
from common.trl_patches import (
    OVERRIDDEN,
    CachedReference,
    PretokenizedPairs,
    RenderedPrompts,
    StopOnNonFiniteLoss,
    compose,
)


@pytest.mark.parametrize("mixin,trl_class,hook,parameters,caller", OVERRIDDEN, ids=[o[2] for o in OVERRIDDEN])
def test_hook_has_its_signature_and_is_still_called(mixin, trl_class, hook, parameters, caller):
    assert hook in vars(mixin), f"{mixin.__name__} no longer overrides {hook}"
    assert hasattr(trl_class, hook), f"the pinned TRL has no {trl_class.__name__}.{hook}: the override is dead"
    assert tuple(inspect.signature(getattr(trl_class, hook)).parameters) == parameters, (
        f"{trl_class.__name__}.{hook} changed its parameters: review {mixin.__name__}"
    )
    assert tuple(inspect.signature(vars(mixin)[hook]).parameters) == parameters
    source = inspect.getsource(getattr(trl_class, caller))
    assert f"self.{hook}" in source, f"{trl_class.__name__}.{caller} no longer calls {hook}"


def test_every_private_override_is_listed():
    listed = {(o[0], o[2]) for o in OVERRIDDEN}
    for mixin in (StopOnNonFiniteLoss, PretokenizedPairs, CachedReference, RenderedPrompts):
        for name in vars(mixin):
            if (
                name.startswith("_")
                and not name.startswith("__")
                and any(hasattr(c, name) for c in (SFTTrainer, DPOTrainer, GRPOTrainer))
            ):
                assert (mixin, name) in listed, f"{mixin.__name__}.{name} overrides TRL but is not in OVERRIDDEN"


def test_training_step_is_the_public_hook():
    from transformers import Trainer

    assert tuple(inspect.signature(Trainer.training_step).parameters)[:3] == ("self", "model", "inputs")
    assert "self.training_step(model, inputs" in inspect.getsource(Trainer)


def test_compose_keeps_name_order_and_experiment_arguments():
    class Mine(DPOTrainer):
        def __init__(self, *args, weight: float, **kwargs):
            self.weight = weight

    plain = compose(DPOTrainer, StopOnNonFiniteLoss, PretokenizedPairs)
    assert plain.__name__ == "DPOTrainer" and plain.__mro__[1:4] == (StopOnNonFiniteLoss, PretokenizedPairs, DPOTrainer)
    made = compose(functools.partial(Mine, weight=3.0), StopOnNonFiniteLoss)
    assert isinstance(made, functools.partial) and made.keywords == {"weight": 3.0}
    trainer = made()
    assert isinstance(trainer, Mine) and isinstance(trainer, StopOnNonFiniteLoss) and trainer.weight == 3.0
    assert type(trainer).__name__ == "Mine"


def test_patches_are_all_in_one_module():
    import pathlib

    root = pathlib.Path(trl_patches.__file__).parents[1]
    hooks = {o[2] for o in OVERRIDDEN}
    for path in [*root.glob("*.py"), *root.glob("common/**/*.py")]:
        if path.name == "trl_patches.py":
            continue
        text = path.read_text(encoding="utf-8")
        for hook in hooks:
            assert f"def {hook}(" not in text, f"{path} overrides {hook} outside common/trl_patches.py"


def test_the_fused_head_projects_only_labelled_positions_on_cpu_with_the_same_result(monkeypatch):
    """LabelledPositionsHead relies on add_fused_lm_head choosing its compact path through trl.trainer.utils'
    _use_triton (trl==1.16.0); when TRL moves that choice, the head gets every position again and this fails."""
    import inspect

    import torch
    import trl.trainer.utils as trl_utils
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    assert "compact = _use_triton(hidden_states.device)" in inspect.getsource(trl_utils.add_fused_lm_head)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    ids = torch.randint(0, 300, (2, 24))
    labels = ids.clone()
    labels[:, :17] = -100  # a prompt of 17 tokens: 7 labelled next-token positions per row, 14 in all
    rows_projected = []
    apply = ChunkedLogProbFunction.apply
    monkeypatch.setattr(
        ChunkedLogProbFunction, "apply", lambda hidden, *a: rows_projected.append(len(hidden)) or apply(hidden, *a)
    )

    def log_probs_and_grad():
        torch.manual_seed(1)
        model = LlamaForCausalLM(config)
        trl_utils.add_fused_lm_head(model)
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.log_probs.sum().backward()
        return out.log_probs.detach(), model.lm_head.weight.grad

    # TRL's own choice first: a script run earlier in this process may have patched it
    monkeypatch.setattr(trl_utils, "_use_triton", trl_patches._TRL_COMPACT)
    every_position = log_probs_and_grad()
    compose(object, trl_patches.LabelledPositionsHead)()  # what a script's trainer does when it is built
    labelled_only = log_probs_and_grad()
    assert rows_projected == [2 * 23, 14]
    assert torch.allclose(every_position[0], labelled_only[0], atol=1e-6)
    assert torch.allclose(every_position[1], labelled_only[1], atol=1e-6)
