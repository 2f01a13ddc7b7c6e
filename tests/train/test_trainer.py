"""The trainer: trained-tokens loss, gradient-accumulation equivalence, summary and plot."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from finetune.model.loss import trained_token_nll
from finetune.train.trainer import summarize, write_loss_plot


def test_trained_token_nll_equals_full_logits_cross_entropy() -> None:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 40000, bias=False)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    labels = torch.randint(0, 40000, (2, 9))
    labels[0, :4] = -100
    labels[1, 6:] = -100
    nll, count = trained_token_nll(hidden, labels, head, SimpleNamespace())
    logits = head(hidden)[:, :-1]
    expected = F.cross_entropy(logits.reshape(-1, 40000), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
    assert int(count) == int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(nll, expected, rtol=1e-5, atol=1e-4)
    (grad,) = torch.autograd.grad(nll, hidden)
    (expected_grad,) = torch.autograd.grad(expected, hidden)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_summary_and_plot(tmp_path: Path) -> None:
    history = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "epoch": 1.0, "eval_loss": 2.5},
               {"step": 2, "train_loss": 2.5}]
    summary = summarize(history, steps=2, tokens=100, trained_tokens=40, wall_s=2.0, peak_memory=123)
    assert summary["train_loss"] == 2.0 and summary["first_train_loss"] == 3.0 and summary["eval_loss"] == 2.5
    assert summary["tokens_per_s"] == 50 and summary["trained_tokens_per_s"] == 20
    write_loss_plot(history, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _rows():
    """Packed rows with very different numbers of trained tokens (a per-micro-batch mean would weigh them equally)."""
    import random

    rng = random.Random(0)
    rows = []
    for length, trained in ((40, 30), (24, 2), (33, 12), (17, 5)):
        ids = [rng.randrange(100, 5000) for _ in range(length)]
        labels = [-100] * (length - trained) + ids[length - trained:]
        cut = length // 2
        rows.append({"input_ids": ids, "labels": labels, "position_ids": list(range(cut)) + list(range(length - cut))})
    return rows


def _one_step(base: Path, out: Path, micro: int, accumulation: int):
    from datasets import Dataset
    from safetensors.torch import load_file

    from finetune.config import load_recipe_text
    from finetune.model.tokenizer import load_tokenizer
    from finetune.train.run import run_training

    settings = load_recipe_text(
        f"base_model: {base}\ndatasets: [{{path: x.jsonl}}]\nadapter: lora\nlora_target_linear: true\n"
        "lora_r: 4\nlora_alpha: 8\nsample_packing: true\nsequence_len: 64\nbf16: false\noptimizer: sgd\n"
        "learning_rate: 0.5\nlr_scheduler: constant\nwarmup_steps: 0\nmax_grad_norm: 0\nmax_steps: 1\n"
        f"micro_batch_size: {micro}\ngradient_accumulation_steps: {accumulation}\n"
        'special_tokens: {pad_token: "<|finetune_right_pad_id|>", eos_token: "<|eot_id|>"}\n'
    ).settings
    prepared = SimpleNamespace(train=Dataset.from_list(_rows()), eval=None)
    result = run_training(settings, prepared, load_tokenizer(settings), output_dir=out)
    return load_file(str(out / "adapter_model.safetensors")), result


def test_grad_accumulation_is_normalised_by_trained_tokens(micro_llama_dir: Path, tmp_path: Path) -> None:
    import torch

    one_by_four, result = _one_step(micro_llama_dir, tmp_path / "a", micro=1, accumulation=4)
    four_by_one, _ = _one_step(micro_llama_dir, tmp_path / "b", micro=4, accumulation=1)
    assert result.global_step == 1
    # 30 + 2 + 12 + 5 trained labels, less the one that starts the second sample of the first row
    assert result.summary["trained_tokens"] == 48
    moved = [name for name in one_by_four if "lora_B" in name and one_by_four[name].abs().max() > 1e-4]
    assert moved, "the step must change the adapter"
    for name, value in one_by_four.items():
        torch.testing.assert_close(value, four_by_one[name], rtol=1e-4, atol=1e-6, msg=name)


def test_eval_loss_is_per_trained_token_over_the_split(micro_llama_dir: Path, tmp_path: Path) -> None:
    """The trainer's eval_loss weighs rows by their trained tokens (as `finetune evaluate` does)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from finetune.config import load_recipe_text
    from finetune.data.collate import make_collator
    from finetune.model.tokenizer import load_tokenizer
    from finetune.train.run import run_training

    settings = load_recipe_text(
        f"base_model: {micro_llama_dir}\ndatasets: [{{path: x.jsonl}}]\nadapter: lora\nlora_target_linear: true\n"
        "lora_r: 4\nlora_alpha: 8\nsample_packing: true\nsequence_len: 64\nbf16: false\noptimizer: sgd\n"
        "learning_rate: 1.0e-12\nlr_scheduler: constant\nwarmup_steps: 0\nmax_steps: 1\nval_set_size: 4\n"
        "eval_steps: 1\neval_batch_size: 1\n"
        'special_tokens: {pad_token: "<|finetune_right_pad_id|>", eos_token: "<|eot_id|>"}\n'
    ).settings
    rows = _rows()
    prepared = SimpleNamespace(train=Dataset.from_list(rows), eval=Dataset.from_list(rows))
    tokenizer = load_tokenizer(settings)
    result = run_training(settings, prepared, tokenizer, output_dir=tmp_path / "out")

    # LoRA B starts at zero and the step is ~0, so the evaluated model is the base.
    model = AutoModelForCausalLM.from_pretrained(micro_llama_dir, dtype=torch.float32)
    collate = make_collator(settings, tokenizer)
    per_row = []
    with torch.no_grad():
        for row in rows:
            batch = collate([row])
            labels = batch.pop("labels")
            out = model(**batch, use_cache=False, output_hidden_states=True, logits_to_keep=1)
            nll, count = trained_token_nll(out.hidden_states[-1], labels, model.get_output_embeddings(), model.config)
            per_row.append((float(nll), int(count)))
    token_weighted = sum(n for n, _ in per_row) / sum(c for _, c in per_row)
    mean_of_means = sum(n / c for n, c in per_row) / len(per_row)
    assert abs(token_weighted - mean_of_means) > 1e-3  # the two notions differ on these rows
    assert result.summary["eval_loss"] == pytest.approx(token_weighted, rel=1e-4)


def test_evaluations_do_not_change_what_a_4bit_base_trains(tiny_llama_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Issue 21, item 10: a run with evaluations trains exactly as the same run without them (QLoRA + DoRA, CPU).

    bitsandbytes is made to behave as on a CPU with AVX512-BF16, where an evaluation's no-grad forward used to repack
    the 4-bit weights for its inference kernel and every later training step ran through it."""
    import bitsandbytes.nn.modules
    import torch
    from datasets import Dataset
    from safetensors.torch import load_file

    from finetune.config import load_recipe_text
    from finetune.model.tokenizer import load_tokenizer
    from finetune.train.run import run_training

    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)
    rows = _rows()

    def train(name: str, evaluations: str):
        settings = load_recipe_text(
            f"base_model: {tiny_llama_dir}\ndatasets: [{{path: x.jsonl}}]\nadapter: qlora\nload_in_4bit: true\n"
            "peft_use_dora: true\nlora_target_linear: true\nlora_r: 4\nlora_alpha: 8\nlora_dropout: 0\n"
            "sample_packing: true\nsequence_len: 64\nbf16: false\noptimizer: adamw_torch\nlearning_rate: 0.01\n"
            "lr_scheduler: constant\nwarmup_steps: 0\nnum_epochs: 2\nmicro_batch_size: 1\n"
            f"gradient_accumulation_steps: 2\n{evaluations}"
            'special_tokens: {pad_token: "<|finetune_right_pad_id|>", eos_token: "<|eot_id|>"}\n'
        ).settings
        prepared = SimpleNamespace(train=Dataset.from_list(rows), eval=Dataset.from_list(rows[:2]))
        result = run_training(settings, prepared, load_tokenizer(settings), output_dir=tmp_path / name)
        return load_file(str(tmp_path / name / "adapter_model.safetensors")), result

    plain, _ = train("plain", "")
    evaluated, result = train("evaluated", "val_set_size: 2\nevals_per_epoch: 1\n")
    assert len(result.summary["eval_losses"]) == 2 and result.global_step == 4
    assert plain.keys() == evaluated.keys()
    assert any("lora_B" in name and value.abs().max() > 1e-4 for name, value in plain.items())  # it trained
    for name, value in plain.items():
        assert torch.equal(evaluated[name], value), name
