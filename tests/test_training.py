import pytest
from datasets import Dataset

from common.training import packed_batch_size


@pytest.mark.parametrize(
    "batch_size, seq_lengths, expected",
    [
        (32, [[40] * 13] * 10, 2),  # 13 short examples a row: 32 examples are about 2 rows
        (32, [[40] * 8] * 10, 4),
        (4, [[2000, 2000]] * 5, 2),
        (4, [[4096]] * 5, 4),  # one example a row: as many rows as examples
        (1, [[40] * 13] * 10, 1),  # never fewer than one row
    ],
)
def test_packed_batch_holds_about_batch_size_examples(batch_size, seq_lengths, expected):
    assert packed_batch_size(batch_size, Dataset.from_dict({"seq_lengths": seq_lengths})) == expected


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys, bad):
    from trl import SFTTrainer

    import sft_chat
    from common.checkpoint import checkpoints, unusable
    from common.params import resolve
    from tests.conftest import FAST, ROOT

    class Diverges(SFTTrainer):  # the loss blows up on step 5
        def compute_loss(self, model, inputs, *args, **kwargs):
            loss = super().compute_loss(model, inputs, *args, **kwargs)
            return loss * bad if self.state.global_step == 4 else loss

    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    params = resolve(
        sft_chat.PARAMS, sft_chat.RULES, [*FAST, "max_steps=8", f"output_dir={out}", "test_data=", "grad_accum=1"]
    )
    with pytest.raises(SystemExit) as exit_:
        sft_chat.main(params, trainer_class=Diverges)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_.value.code == 3 and len(errors) == 1
    assert f"the loss is {bad} at step 5" in errors[0] and "last good checkpoint: checkpoint-3" in errors[0]
    assert [c.rsplit("/", 1)[1] for c in checkpoints(str(out))] == ["checkpoint-3"] and unusable(
        f"{out}/checkpoint-3"
    ) is None
    assert not (out / "final").exists()
