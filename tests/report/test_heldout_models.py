"""Reading replies out of tokenized rows, and choosing the models to score."""

from __future__ import annotations

import pytest

from finetune.data.tokenize import IGNORE_INDEX as X
from finetune.errors import FinetuneError
from finetune.report.cache import GenerationCache, prompt_key
from finetune.report.heldout import label_runs
from finetune.report.models import select_targets, weights_hash
from finetune.infer.generate import Generated


def test_label_runs_are_the_trained_spans():
    assert list(label_runs([X, X, 5, 6, X, X, 7, X])) == [(2, 4), (6, 7)]
    assert list(label_runs([1, 2])) == [(0, 2)]
    assert list(label_runs([X, X])) == []


def _run(tmp_path, steps, final=True):
    from finetune.config import load_recipe_text

    for step in steps:
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "adapter_config.json").write_text("{}")
    settings = load_recipe_text(f"base_model: x\nadapter: lora\nlora_target_linear: true\ndatasets:\n  - path: d.jsonl\noutput_dir: {tmp_path}\n"
                                ).settings
    return settings


def test_checkpoint_selection(tmp_path):
    settings = _run(tmp_path, [20, 5, 100])
    names = lambda sel: [t.name for t in select_targets(settings, tmp_path, sel)]  # noqa: E731
    assert names("all") == ["base", "checkpoint-5", "checkpoint-20", "checkpoint-100"]
    assert names("last") == ["base", "checkpoint-100"]
    assert names("100,5") == ["base", "checkpoint-5", "checkpoint-100"]
    with pytest.raises(FinetuneError, match=r"no checkpoint-7 .*steps present: 5, 20, 100"):
        names("7")
    with pytest.raises(FinetuneError, match="expected all, last, or steps"):
        names("best")


def test_no_trained_model_says_what_to_do(tmp_path):
    settings = _run(tmp_path, [])
    with pytest.raises(FinetuneError, match="run `finetune train` first"):
        select_targets(settings, tmp_path, "all")


def test_the_cache_is_keyed_by_weights_and_prompt_and_survives_a_reload(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"one")
    first = weights_hash(tmp_path / "a")
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"two")
    assert weights_hash(tmp_path / "a") != first
    key = prompt_key([1, 2, 3], {"temperature": 0.0})
    assert key != prompt_key([1, 2, 3], {"temperature": 0.7}) and key != prompt_key([1, 2], {"temperature": 0.0})
    cache = GenerationCache(tmp_path / "gen", first)
    cache.put({key: Generated("hi there", 3)})
    assert GenerationCache(tmp_path / "gen", first).get(key) == Generated("hi there", 3)
    assert GenerationCache(tmp_path / "gen", weights_hash(tmp_path / "a")).get(key) is None
    cache.path.write_text("{not json")  # damaged: ignored, regenerated
    assert GenerationCache(tmp_path / "gen", first).get(key) is None
    assert not list((tmp_path / "gen").glob("*.tmp"))
