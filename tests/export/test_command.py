"""`finetune export --gguf`: which merged model is exported (the GGUF files themselves: tests/commands)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

from finetune.export.command import export_gguf  # noqa: E402
from finetune.export.merge import merge_adapter, merge_record, read_merge_record  # noqa: E402
from finetune.runs.layout import MERGE_SOURCE, MERGED_DIR  # noqa: E402

KEY, GGUF_NAME = "model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight"  # V rows are not permuted


def _bf16_bits(tensor: Any) -> Any:
    return tensor.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).ravel()


def _gguf_bits(path: Path) -> Any:
    tensor = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == GGUF_NAME)
    assert tensor.tensor_type == gguf.GGMLQuantizationType.BF16
    return np.asarray(tensor.data).view(np.uint16).ravel()


def _merged_bits(merged: Path) -> Any:
    from safetensors.torch import load_file

    weights = {}
    for shard in merged.glob("*.safetensors"):
        weights.update(load_file(shard))
    return _bf16_bits(weights[KEY])


@pytest.mark.slow  # two GGUF exports and three merges of the 128k-token tiny model: about 2 minutes on 2 cores
def test_a_merge_of_an_earlier_checkpoint_is_not_exported_as_the_final_run(make_adapter_run: Any, tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """`finetune merge --adapter out/checkpoint-40` leaves output_dir/merged, newer than the final adapter; the
    export must still hold the final adapter's weights."""
    run, settings = make_adapter_run()
    earlier, _ = make_adapter_run(seed=1)  # another adapter: stands for checkpoint-40
    shutil.copytree(earlier, run / "checkpoint-40")
    merge_adapter(settings, adapter_dir=run / "checkpoint-40")  # -> output_dir/merged, bf16
    stale = _merged_bits(run / MERGED_DIR)
    expected = _merged_bits(merge_adapter(settings, out_dir=tmp_path / "final"))
    assert not np.array_equal(stale, expected)

    exported = export_gguf(settings, "bf16")
    assert np.array_equal(_gguf_bits(exported), expected)

    # A merged folder that is this adapter in this dtype is reused, and says so.
    merge_adapter(settings)
    assert read_merge_record(run / MERGED_DIR) == merge_record(run, settings.base_model, "bf16")
    with caplog.at_level(logging.INFO, logger="finetune.export.command"):
        assert np.array_equal(_gguf_bits(export_gguf(settings, "bf16")), expected)
    assert "using the merged model" in caplog.text


def test_the_record_changes_with_the_weights_the_dtype_and_the_base(make_adapter_run: Any, tmp_path: Path) -> None:
    run, settings = make_adapter_run()
    merged = merge_adapter(settings, out_dir=tmp_path / "merged")
    record = json.loads((merged / MERGE_SOURCE).read_text())
    assert record == merge_record(run, settings.base_model, "bf16")
    assert record["adapter"] == str(run.resolve()) and len(record["adapter_sha256"]) == 64
    assert merge_record(run, settings.base_model, "fp16") != record
    assert merge_record(run, "/another/base", "bf16") != record
    weights = run / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # retrained in place: same path, same size, other weights
    weights.write_bytes(bytes(data))
    assert merge_record(run, settings.base_model, "bf16") != record
    (merged / MERGE_SOURCE).unlink()  # merged by an older finetune: no record, never reused
    assert read_merge_record(merged) is None
