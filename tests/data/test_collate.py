"""Packed samples must not see each other: per-token losses of a packed row (collated: position_ids,
no attention_mask, use_cache=False) equal those of each sample run alone, with sdpa and eager.

The trap is checked too: the same row WITHOUT position_ids (plain causal attention over the whole
row) gives different losses, so this test would catch cross-contamination.
"""

from __future__ import annotations

import numpy as np
import pytest

from finetune.data.collate import Collator
from finetune.data.pack import Ragged, pack

PAD_ID = 128004


@pytest.fixture(scope="module")
def samples(llama3_tokenizer):
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "Packing puts several samples in one row; each must only attend to itself, never its neighbours.",
        "Short one.",
        "A fourth sample, with some numbers 12345 and punctuation!?",
    ]
    return [np.asarray(llama3_tokenizer(t)["input_ids"], dtype=np.int64) for t in texts]


def token_losses(logits, input_ids):
    """Cross-entropy of predicting input_ids[t+1] from position t, per token (no reduction)."""
    import torch

    return torch.nn.functional.cross_entropy(logits[:-1].float(), input_ids[1:], reduction="none")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_losses_equal_separate_runs(tiny_llama_dir, samples, attn):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation=attn, dtype=torch.float32)
    model.eval()
    ids = Ragged.from_arrays(samples, dtype=np.int64)
    rows = pack(ids, Ragged(ids.values.copy(), ids.offsets.copy()), capacity=256, seed=0)
    assert rows.num_rows == 1  # all samples share one row
    row = {
        "input_ids": rows.input_ids[0], "labels": rows.labels[0], "position_ids": rows.position_ids[0],
    }
    # a second, shorter row in the batch gets padding with its own position run
    batch = Collator(pad_id=PAD_ID)([row, {"input_ids": samples[2], "labels": samples[2], "position_ids": np.arange(len(samples[2]))}])
    assert "attention_mask" not in batch

    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        naive = model(input_ids=batch["input_ids"][:1], use_cache=False).logits  # no position_ids: one causal block
        start, compared, contaminated = 0, 0, 0.0
        for length in rows.sample_lengths[0].tolist():
            sample = batch["input_ids"][0, start : start + length]
            alone = model(input_ids=sample[None], use_cache=False).logits[0]
            expected = token_losses(alone, sample)
            got = token_losses(packed[0, start : start + length], sample)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            if start > 0:
                leaked = token_losses(naive[0, start : start + length], sample)
                contaminated = max(contaminated, float((leaked - expected).abs().max()))
            start += length
            compared += 1
        assert compared == len(samples)
        # the trap: without position_ids the later samples attend to earlier ones and their losses change
        assert contaminated > 1e-3

        # the padded second row: its real tokens are unaffected by the padding after them
        short = batch["input_ids"][1, : len(samples[2])]
        alone = model(input_ids=short[None], use_cache=False).logits[0]
        torch.testing.assert_close(
            token_losses(packed[1, : len(samples[2])], short), token_losses(alone, short), atol=1e-5, rtol=1e-5
        )


def test_model_loss_on_collated_batch_ignores_boundaries_and_padding(tiny_llama_dir, samples):
    """The model's own loss (labels from the collator) equals the token-weighted mean of separate runs."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa", dtype=torch.float32)
    model.eval()
    ids = Ragged.from_arrays(samples, dtype=np.int64)
    rows = pack(ids, Ragged(ids.values.copy(), ids.offsets.copy()), capacity=256, seed=0)
    row = {"input_ids": rows.input_ids[0], "labels": rows.labels[0], "position_ids": rows.position_ids[0]}
    batch = Collator(pad_id=PAD_ID, pad_to=128)([row])
    with torch.no_grad():
        loss = model(**batch, use_cache=False).loss
        total, count = 0.0, 0
        for sample in samples:
            tensor = torch.as_tensor(sample)
            losses = token_losses(model(input_ids=tensor[None], use_cache=False).logits[0], tensor)
            total, count = total + float(losses.sum()), count + len(losses)
    assert abs(float(loss) - total / count) < 1e-5
