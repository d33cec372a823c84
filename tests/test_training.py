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
