import json

import pytest
import torch
from safetensors.torch import save_file

from common.checkpoint import prepare_output_dir, unusable


def make_checkpoint(folder, step: int):
    folder.mkdir(parents=True)
    save_file({"w": torch.arange(1000, dtype=torch.float32)}, folder / "model.safetensors")
    torch.save({"state": torch.ones(500)}, folder / "optimizer.pt")
    (folder / "global_step3").mkdir()  # as DeepSpeed lays out its shards
    torch.save({"shard": torch.ones(10)}, folder / "global_step3" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage, problem",
    [
        (None, None),
        (lambda c: truncate(c / "model.safetensors"), "model.safetensors is"),
        (lambda c: (c / "model.safetensors").write_bytes(b"\x00" * 4), "model.safetensors"),
        (lambda c: truncate(c / "optimizer.pt"), "optimizer.pt"),
        (
            lambda c: truncate(c / "global_step3" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"),
            "global_step3/zero_pp_rank_0",
        ),
        (lambda c: truncate(c / "trainer_state.json"), "trainer_state.json"),
    ],
)
def test_unusable_names_the_damaged_file(tmp_path, damage, problem):
    checkpoint = make_checkpoint(tmp_path / "checkpoint-3", 3)
    if damage:
        damage(checkpoint)
    found = unusable(str(checkpoint))
    assert found is None if problem is None else problem in found


def test_resume_sets_broken_checkpoints_aside_and_uses_the_newest_whole_one(tmp_path, capsys):
    for step in (3, 6, 9):
        make_checkpoint(tmp_path / f"checkpoint-{step}", step)
    truncate(tmp_path / "checkpoint-9" / "model.safetensors")
    truncate(tmp_path / "checkpoint-6" / "trainer_state.json")
    (tmp_path / "checkpoint-12").mkdir()  # killed before trainer_state.json: not a checkpoint yet
    (tmp_path / "metrics.jsonl").write_text('{"step": 3, "loss": 1}\n{"step": 6, "loss": 1}\n{"step": 9, "lo')
    assert prepare_output_dir(str(tmp_path), resume=True, overwrite=False) == str(tmp_path / "checkpoint-3")
    err = capsys.readouterr().err
    assert "warning: checkpoint-9 is unusable (model.safetensors is" in err and "resuming from checkpoint-6" in err
    assert "warning: checkpoint-6 is unusable (trainer_state.json" in err and "resuming from checkpoint-3" in err
    assert (tmp_path / "unusable-checkpoint-9").is_dir() and (tmp_path / "unusable-checkpoint-6").is_dir()
    assert (
        tmp_path / "metrics.jsonl"
    ).read_text() == '{"step": 3, "loss": 1}\n'  # later steps run again; torn line gone
