"""`finetune evaluate`: token-weighted eval loss of the base and the fine-tuned model."""

from __future__ import annotations

import json
import math

import pytest

from finetune.errors import FinetuneError


def test_evaluate_base_and_adapter(make_adapter_run, write_chats, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from finetune.evaluate import evaluate_main

    run_dir, settings = make_adapter_run()
    data = write_chats(12)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "eval.json"
    assert evaluate_main(settings, dataset=str(data), output=out, progress=False) == 0
    results = {r["model"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"base", "fine-tuned"}
    assert abs(results["base"]["loss"] - results["fine-tuned"]["loss"]) > 1e-4  # the adapter is applied
    assert results["base"]["perplexity"] == pytest.approx(math.exp(results["base"]["loss"]))

    # The base figure equals a plain full-logits cross-entropy over the same trained tokens.
    from finetune.data.build import prepare_data
    from finetune.evaluate import _dataset_settings
    from finetune.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(settings)
    rows = prepare_data(_dataset_settings(settings, str(data)), tokenizer, progress=False).train
    model = AutoModelForCausalLM.from_pretrained(settings.base_model, dtype=torch.float32)
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor([row["labels"]])
            logits = model(input_ids=ids).logits[0, :-1]
            target = labels[0, 1:]
            keep = target != -100
            total += float(torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum"))
            count += int(keep.sum())
    assert results["base"]["trained_tokens"] == count
    assert results["base"]["loss"] == pytest.approx(total / count, rel=1e-4)


def test_evaluate_without_adapter_says_what_to_do(make_adapter_run, tmp_path):
    from finetune.evaluate import evaluate_main

    _, settings = make_adapter_run()
    with pytest.raises(FinetuneError, match="run `finetune train` first or pass --adapter"):
        evaluate_main(settings, adapter_dir=tmp_path, progress=False)
