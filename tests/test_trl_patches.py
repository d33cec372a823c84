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
