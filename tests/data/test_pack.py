"""Packing (conservation, capacity, positions, determinism, efficiency) and the collator."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from finetune.data.collate import Collator
from finetune.data.pack import Ragged, pack, packing_efficiency, plan_bins
from finetune.data.tokenize import IGNORE_INDEX


def chat_lengths(n: int, seed: int) -> np.ndarray:
    """A realistic chat-token length distribution: log-normal (median ~600), a long tail up to 4096."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(6.4, 0.8, n).astype(np.int64), 16, 4096)


def ragged_samples(lengths) -> tuple[Ragged, Ragged]:
    """Sample i holds tokens 1000*i + (0..len-1); labels equal the ids."""
    arrays = [np.arange(length) + 1000 * i for i, length in enumerate(lengths)]
    ids = Ragged.from_arrays(arrays, dtype=np.int64)
    return ids, Ragged(ids.values.copy(), ids.offsets.copy())


def test_bins_hold_every_sample_once_and_respect_capacity():
    lengths = chat_lengths(2000, 1)
    bins = plan_bins(lengths, 4096, seed=3)
    assert sorted(np.concatenate(bins).tolist()) == list(range(len(lengths)))
    assert max(int(lengths[b].sum()) for b in bins) <= 4096


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_efficiency_on_realistic_chat_lengths_at_4096(seed):
    lengths = chat_lengths(5000, seed)
    bins = plan_bins(lengths, 4096, seed=seed)
    assert packing_efficiency(int(lengths.sum()), len(bins), 4096) >= 0.99
    # never worse than one row per sample, never better than the bound
    assert int(np.ceil(lengths.sum() / 4096)) <= len(bins) < len(lengths)


def test_plan_is_deterministic_for_a_seed_and_varies_with_it():
    lengths = chat_lengths(500, 7)
    same = [b.tolist() for b in plan_bins(lengths, 4096, seed=11)]
    assert same == [b.tolist() for b in plan_bins(lengths, 4096, seed=11)]
    assert same != [b.tolist() for b in plan_bins(lengths, 4096, seed=12)]


def test_too_long_or_empty_samples_are_rejected():
    with pytest.raises(ValueError):
        plan_bins(np.array([10, 5000]), 4096, seed=0)
    with pytest.raises(ValueError):
        plan_bins(np.array([10, 0]), 4096, seed=0)


def test_packed_rows_conserve_samples_and_restart_positions():
    lengths = [5, 300, 17, 120, 64, 256, 1, 90, 200]
    ids, labels = ragged_samples(lengths)
    rows = pack(ids, labels, 512, seed=0)
    seen = []
    for r in range(rows.num_rows):
        row_ids, row_pos, row_labels = rows.input_ids[r], rows.position_ids[r], rows.labels[r]
        assert len(row_ids) <= 512 and len(row_ids) == len(row_pos) == len(row_labels)
        assert int(rows.sample_lengths[r].sum()) == len(row_ids)
        start = 0
        for length in rows.sample_lengths[r].tolist():
            sample = row_ids[start : start + length]
            seen.append(sample.tolist())
            assert row_pos[start : start + length].tolist() == list(range(length))
            # the first label of each sample is masked (no prediction across the boundary), the rest kept
            assert row_labels[start] == IGNORE_INDEX
            assert row_labels[start + 1 : start + length].tolist() == sample[1:].tolist()
            start += length
    expected = [(np.arange(n) + 1000 * i).tolist() for i, n in enumerate(lengths)]
    assert Counter(map(tuple, seen)) == Counter(map(tuple, expected))


def test_ragged_take_and_truncate():
    ids, _ = ragged_samples([3, 1, 4])
    assert [ids.take(np.array([2, 0]))[i].tolist() for i in range(2)] == [[2000, 2001, 2002, 2003], [0, 1, 2]]
    cut = ids.truncated(2)
    assert [cut[i].tolist() for i in range(3)] == [[0, 1], [1000], [2000, 2001]]


# --- collator -------------------------------------------------------------------------------------------


def test_collator_packed_rows_get_position_ids_and_no_attention_mask():
    rows = [
        {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, 6, -100, 8, 9], "position_ids": [0, 1, 0, 1, 2]},
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "position_ids": [0, 1, 2]},
    ]
    batch = Collator(pad_id=99)(rows)
    assert "attention_mask" not in batch
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [1, 2, 3, 99, 99]]
    assert batch["labels"].tolist() == [[-100, 6, -100, 8, 9], [-100, 2, 3, -100, -100]]
    # padding forms its own position run, so it is a separate block of the mask
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2], [0, 1, 2, 0, 1]]


def test_collator_never_trains_a_sample_start_in_packed_rows():
    # Labels are unshifted: a trained label at a sample start would be predicted from the previous sample.
    packed = Collator(pad_id=0)([{"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9], "position_ids": [0, 1, 2, 0, 1]}])
    assert packed["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    plain = Collator(pad_id=0)([{"input_ids": [5, 6], "labels": [5, 6]}])
    assert plain["labels"].tolist() == [[5, 6]]


def test_collator_unpacked_rows_get_attention_mask_and_pad_to_sequence_len():
    rows = [{"input_ids": [1, 2], "labels": [-100, 2]}, {"input_ids": [3], "labels": [-100]}]
    batch = Collator(pad_id=0, pad_to=4)(rows)
    assert "position_ids" not in batch
    assert batch["input_ids"].tolist() == [[1, 2, 0, 0], [3, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, -100, -100], [-100, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]
    assert str(batch["input_ids"].dtype) == "torch.int64"
    with pytest.raises(ValueError, match="more than the padded length"):
        Collator(pad_id=0, pad_to=1)(rows)


def test_make_collator_needs_a_pad_token(data_settings, tmp_path, llama3_tokenizer):
    from finetune.data.collate import make_collator
    from finetune.errors import RecipeError

    settings = data_settings([{"path": tmp_path / "x.jsonl"}], pad_to_sequence_len=True, sequence_len=64)
    with pytest.raises(RecipeError, match="pad_token"):
        make_collator(settings, llama3_tokenizer)

    class WithPad:
        pad_token_id = 128004

    collator = make_collator(settings, WithPad())
    assert collator == Collator(pad_id=128004, pad_to=64)
