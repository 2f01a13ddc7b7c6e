"""GGUF tensor types as llama.cpp's quantizer picks them, and the Python Q6_K writer (files: tests/commands)."""

from __future__ import annotations

import pytest

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

from finetune.export.gguf_llama import quantize_q6_k, tensor_type  # noqa: E402


@pytest.mark.parametrize("quant, name, tied, width, expected", [
    ("q4_0", "output.weight", False, 4096, "Q6_K"),
    ("q4_0", "output.weight", False, 64, "Q8_0"),   # rows shorter than a Q6_K block: llama.cpp's fallback
    ("q4_0", "output.weight", False, 40, "F16"),
    ("q4_0", "token_embd.weight", True, 4096, "Q6_K"),  # tied: the embedding is the output
    ("q4_0", "token_embd.weight", False, 4096, "Q4_0"),
    ("q4_0", "blk.0.ffn_down.weight", False, 4096, "Q4_0"),
    ("q8_0", "output.weight", False, 4096, "Q8_0"),
    ("f16", "output.weight", False, 4096, "F16"),
    ("q4_0", "output_norm.weight", False, 4096, "F32"),
])
def test_the_output_embedding_is_promoted_as_llama_cpp_does(quant: str, name: str, tied: bool, width: int,
                                                             expected: str) -> None:
    shape = [width] if name.endswith("_norm.weight") else [128, width]
    assert tensor_type(name, shape, quant, tied=tied).name == expected


def test_q6_k_round_trips_through_ggufs_reader_within_a_step() -> None:
    rng = np.random.default_rng(0)
    rows = (rng.standard_normal((6, 512)) * rng.uniform(0.01, 3.0, (6, 1))).astype(np.float32)
    rows[0, :16] = 0.0  # an all-zero sub-block
    rows[1, :256] = 0.0  # an all-zero block
    blocks = quantize_q6_k(rows)
    assert blocks.shape == tuple(gguf.quant_shape_to_byte_shape(list(rows.shape), gguf.GGMLQuantizationType.Q6_K))
    back = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q6_K)
    assert np.all(back[0, :16] == 0) and np.all(back[1, :256] == 0)
    sub = np.abs(rows).reshape(6, -1, 16).max(axis=2, keepdims=True)
    # within one 6-bit step of each 16-value sub-block (plus the int8 rounding of its scale)
    assert np.all(np.abs(back - rows).reshape(6, -1, 16) <= sub / 32 * 1.05 + 1e-6)
    q4 = gguf.quants.dequantize(gguf.quants.quantize(rows, gguf.GGMLQuantizationType.Q4_0),
                                gguf.GGMLQuantizationType.Q4_0)
    assert np.abs(back - rows).mean() < np.abs(q4 - rows).mean() / 3
