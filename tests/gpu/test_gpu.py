"""On a CUDA GPU (run by scripts/gpu_check.sh; skipped elsewhere by tests/conftest.py): the numerics that differ
from CPU, and the seed recipe's kind of run end to end.

- The fused loss head runs its products in bf16 on CUDA (on CPU they are upcast to fp32): its loss and gradients
  are compared with an fp32 full-logits reference on the same bf16 values. bf16 logits carry a relative rounding
  error of at most 2^-8 (0.4%); with logits of O(1) the per-token loss is off by ~1e-2 at worst, so atol 3e-2,
  and gradients are compared by relative norm (< 2%).
- Packed rows stay isolated with CUDA attention kernels (sdpa in fp32 and bf16, flash-attn 2 when installed),
  and the same row without position_ids is measurably contaminated, so the check can fail.
- `finetune train` with NF4 4-bit + DoRA + packing + adamw_bnb_8bit + bf16 on CUDA memorises three replies, and
  `finetune chat --temperature 0` (greedy, on the GPU) gives them back and stops at <|eot_id|>.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

PAD_ID = 128004
PAIRS = [
    ("What's your favourite food?", "Pickled herring, obviously."),
    ("Where do you live?", "In a lighthouse near Bergen."),
    ("Do you like Mondays?", "Only with strong coffee."),
]


def _relative_error(got, expected) -> float:  # noqa: ANN001
    return float((got.float() - expected.float()).norm() / expected.float().norm())


def test_fused_head_in_bf16_on_cuda_matches_fp32_reference() -> None:
    import torch

    from finetune.model.loss import fused_nll

    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(700, 256, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(32000, 256, device="cuda", generator=g) * 0.05).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, 32000, (700,), device="cuda", generator=g)
    total, per = fused_nll(h, w, None, t)
    total.backward()
    h32, w32 = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    ref = torch.nn.functional.cross_entropy(h32 @ w32.t(), t, reduction="none")
    ref.sum().backward()
    torch.testing.assert_close(per, ref.detach(), rtol=1e-2, atol=3e-2)
    assert abs(float(total) - float(ref.sum())) / float(ref.sum()) < 1e-3
    assert _relative_error(h.grad, h32.grad) < 2e-2
    assert _relative_error(w.grad, w32.grad) < 2e-2


def _packed_losses(model_dir: Path, samples: list[np.ndarray], attn: str, dtype_name: str):  # noqa: ANN202
    import torch
    from transformers import AutoModelForCausalLM

    from finetune.data.collate import Collator
    from finetune.data.pack import Ragged, pack

    dtype = getattr(torch, dtype_name)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn, dtype=dtype).cuda().eval()
    ids = Ragged.from_arrays(samples, dtype=np.int64)
    rows = pack(ids, Ragged(ids.values.copy(), ids.offsets.copy()), capacity=256, seed=0)
    assert rows.num_rows == 1
    batch = Collator(pad_id=PAD_ID)([{"input_ids": rows.input_ids[0], "labels": rows.labels[0],
                                      "position_ids": rows.position_ids[0]}])
    assert "attention_mask" not in batch

    def losses(logits, sample):  # noqa: ANN001, ANN202
        return torch.nn.functional.cross_entropy(logits[:-1].float(), sample[1:], reduction="none")

    isolated, leaked, start = 0.0, 0.0, 0
    with torch.no_grad():
        input_ids, position_ids = batch["input_ids"].cuda(), batch["position_ids"].cuda()
        packed = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[0]
        naive = model(input_ids=input_ids, use_cache=False).logits[0]
        for length in rows.sample_lengths[0].tolist():
            sample = input_ids[0, start : start + length]
            expected = losses(model(input_ids=sample[None], use_cache=False).logits[0], sample)
            isolated = max(isolated, float((losses(packed[start : start + length], sample) - expected).abs().max()))
            if start:
                leaked = max(leaked, float((losses(naive[start : start + length], sample) - expected).abs().max()))
            start += length
    return isolated, leaked


@pytest.mark.parametrize(
    "attn,dtype,tolerance",
    [("sdpa", "float32", 1e-4), ("sdpa", "bfloat16", 5e-2), ("flash_attention_2", "bfloat16", 5e-2)],
)
def test_packed_rows_are_isolated_with_cuda_kernels(tiny_llama_dir: Path, llama3_tokenizer, attn: str,
                                                    dtype: str, tolerance: float) -> None:
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn is not installed")
    texts = ["The quick brown fox jumps over the lazy dog.",
             "Packing puts several samples in one row; each must only attend to itself, never its neighbours.",
             "Short one.", "A fourth sample, with some numbers 12345 and punctuation!?"]
    samples = [np.asarray(llama3_tokenizer(t)["input_ids"], dtype=np.int64) for t in texts]
    isolated, leaked = _packed_losses(tiny_llama_dir, samples, attn, dtype)
    assert isolated < tolerance
    assert leaked > 10 * max(isolated, 1e-4)  # without position_ids the samples see each other


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "finetune.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_qdora_run_on_cuda_memorises_and_chat_gives_it_back(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import yaml

    seed = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "llama31-8b-qlora-dora-zero2.yml")
                          .read_text())
    data = tmp_path / "chats.jsonl"
    with data.open("w") as handle:
        for _ in range(6):
            for prompt, reply in PAIRS:
                handle.write(json.dumps({"messages": [{"role": "user", "content": prompt},
                                                      {"role": "assistant", "content": reply}]}) + "\n")
    seed.update(base_model=str(tiny_llama_dir), datasets=[{**seed["datasets"][0], "path": str(data)}],
                dataset_prepared_path=str(tmp_path / "prepared"), output_dir=str(tmp_path / "out"),
                sequence_len=64, val_set_size=0, lora_r=16, lora_alpha=32, num_epochs=20, learning_rate=0.01,
                evals_per_epoch=None, deepspeed=None, wandb_project=None)
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(yaml.safe_dump(seed))
    _cli("train", str(recipe), cwd=tmp_path)
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["train_loss"] < 0.5 * summary["first_train_loss"]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p, _ in PAIRS))
    answers = tmp_path / "answers.jsonl"
    _cli("chat", str(recipe), "--file", str(prompts), "--output", str(answers), "--temperature", "0",
         "--max-new-tokens", "24", cwd=tmp_path)
    got = [json.loads(line)["answer"].strip() for line in answers.read_text().splitlines()]
    assert got == [reply for _, reply in PAIRS]
