"""`finetune evaluate`: token-weighted eval loss of the base and the fine-tuned model."""

from __future__ import annotations

import json
import math

import pytest

from finetune.errors import FinetuneError


def test_evaluate_base_and_adapter(make_adapter_run, write_chats, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from finetune.infer.evaluate import evaluate_main

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
    from finetune.infer.common import dataset_settings
    from finetune.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(settings)
    rows = prepare_data(dataset_settings(settings, str(data)), tokenizer, progress=False).train
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
    from finetune.infer.evaluate import evaluate_main

    _, settings = make_adapter_run()
    with pytest.raises(FinetuneError, match="run `finetune train` first or pass --adapter"):
        evaluate_main(settings, adapter_dir=tmp_path, progress=False)


def test_a_full_fine_tune_without_its_model_is_refused_not_scored_as_the_base(make_adapter_run, tmp_path):
    from finetune.infer.evaluate import evaluate_main

    _, settings = make_adapter_run()
    full = settings.model_copy(update={"adapter": None, "output_dir": str(tmp_path / "out")})
    (tmp_path / "out").mkdir()
    with pytest.raises(FinetuneError, match="config.json missing.*untouched base"):
        evaluate_main(full, dataset=str(tmp_path / "unused.jsonl"), output=tmp_path / "eval.json", progress=False)
    assert not (tmp_path / "eval.json").exists()


def test_a_full_fine_tune_is_compared_with_its_base(make_adapter_run, write_chats, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from finetune.infer.evaluate import evaluate_main

    _, settings = make_adapter_run()
    trained = AutoModelForCausalLM.from_pretrained(settings.base_model, dtype=torch.float32)
    with torch.no_grad():
        trained.lm_head.weight.mul_(1.5)  # any change to the weights the fine-tuned figure must reflect
    trained.save_pretrained(tmp_path / "out")
    full = settings.model_copy(update={"adapter": None, "output_dir": str(tmp_path / "out")})
    out = tmp_path / "eval.json"
    assert evaluate_main(full, dataset=str(write_chats(6)), output=out, progress=False) == 0
    results = {r["model"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"base", "fine-tuned"}
    assert abs(results["base"]["loss"] - results["fine-tuned"]["loss"]) > 1e-4


def test_skipping_the_base_says_so(make_adapter_run, write_chats, tmp_path, caplog):
    import logging

    from finetune.infer.evaluate import evaluate_main

    caplog.set_level(logging.INFO, logger="finetune")
    _, settings = make_adapter_run()
    out = tmp_path / "eval.json"
    assert evaluate_main(settings, dataset=str(write_chats(4)), output=out, base=False, progress=False) == 0
    assert [r["model"] for r in json.loads(out.read_text())] == ["fine-tuned"]
    assert any("base comparison skipped" in r.getMessage() and "--no-base" in r.getMessage() for r in caplog.records)
