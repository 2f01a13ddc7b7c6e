"""`finetune report` on a 4-bit (QLoRA) run with `--dataset`, and on a DPO run (the chosen replies are yours).

Finished runs are built directly (a random LoRA adapter saved as a run, see conftest.make_adapter_run): the
report must load them as `evaluate` does and score what it says it scores.
"""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import pair_rows


@pytest.mark.slow  # 4-bit matmuls on CPU: ~40 s alone, more on a loaded machine
def test_report_on_a_4bit_run_with_a_dataset_file(make_adapter_run, write_chats, tmp_path, monkeypatch):
    from finetune.infer.evaluate import evaluate_main
    from finetune.report.command import report_main
    from finetune.infer.generate import GenerationSettings

    pytest.importorskip("bitsandbytes")
    run_dir, settings = make_adapter_run(qlora=True)
    monkeypatch.chdir(tmp_path)
    write_chats(12, name="data.jsonl")  # the recipe's training data (relative path data.jsonl)
    held = write_chats(3, name="held.jsonl", seed=7)
    assert report_main(settings, dataset=str(held), max_conversations=3, progress=False,
                       generation=GenerationSettings(max_new_tokens=8)) == 0
    report = json.loads((run_dir / "report" / "report.json").read_text(encoding="utf-8"))
    assert [m["name"] for m in report["models"]] == ["base", "final"]
    assert report["heldout"]["conversations"] == 3 and "--dataset" in report["heldout"]["how"]
    assert report["heldout"]["training_conversations"] > 0
    evaluated = tmp_path / "eval.json"
    assert evaluate_main(settings, dataset=str(held), output=evaluated, progress=False) == 0
    losses = {r["model"]: r["loss"] for r in json.loads(evaluated.read_text())}
    models = {m["name"]: m for m in report["models"]}
    assert models["base"]["heldout_loss"] == pytest.approx(losses["base"], rel=1e-4)
    assert models["final"]["heldout_loss"] == pytest.approx(losses["fine-tuned"], rel=1e-4)


def test_report_on_a_dpo_run_scores_the_chosen_replies(make_adapter_run, tmp_path, monkeypatch):
    from finetune.config import load_recipe
    from finetune.infer.generate import GenerationSettings
    from finetune.report.command import report_main

    run_dir, _ = make_adapter_run()
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in pair_rows(12)), encoding="utf-8")
    recipe = yaml.safe_load((run_dir / "recipe.yml").read_text())
    recipe.update(rl="dpo", rl_beta=0.1, val_set_size=4, dataset_prepared_path=str(tmp_path / "prepared"),
                  datasets=[{"path": str(data), "type": "chat_template.default", "field_messages": "messages",
                             "field_chosen": "chosen", "field_rejected": "rejected"}])
    (tmp_path / "dpo.yml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    settings = load_recipe(tmp_path / "dpo.yml").settings
    assert report_main(settings, progress=False, generation=GenerationSettings(max_new_tokens=6)) == 0
    report = json.loads((run_dir / "report" / "report.json").read_text(encoding="utf-8"))
    assert len(report["samples"]) == 4
    for sample in report["samples"]:
        assert sample["real"].startswith("yes, ")  # the chosen reply, never the rejected "no, ..."
        assert "Is " in sample["context"] and "a number?" in sample["context"]
    models = {m["name"]: m for m in report["models"]}
    assert models["base"]["heldout_loss"] != pytest.approx(models["final"]["heldout_loss"])
    assert report["recommended"]["name"] == "final"


def test_report_on_a_full_fine_tune_loads_each_checkpoint_in_turn(make_adapter_run, write_chats, tmp_path,
                                                                   monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from finetune.infer.evaluate import evaluate_main
    from finetune.infer.generate import GenerationSettings
    from finetune.report.command import report_main

    _, settings = make_adapter_run()
    monkeypatch.chdir(tmp_path)
    write_chats(8, name="data.jsonl")
    held = write_chats(2, name="held.jsonl", seed=3)
    for where, scale in ((tmp_path / "out" / "checkpoint-1", 1.2), (tmp_path / "out", 1.5)):
        trained = AutoModelForCausalLM.from_pretrained(settings.base_model, dtype=torch.float32)
        with torch.no_grad():
            trained.lm_head.weight.mul_(scale)
        trained.save_pretrained(where)
    full = settings.model_copy(update={"adapter": None, "output_dir": str(tmp_path / "out")})
    assert report_main(full, dataset=str(held), progress=False, generation=GenerationSettings(max_new_tokens=4)) == 0
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text(encoding="utf-8"))
    models = {m["name"]: m for m in report["models"]}
    assert list(models) == ["base", "checkpoint-1", "final"]
    evaluated = tmp_path / "eval.json"
    assert evaluate_main(full, dataset=str(held), output=evaluated, progress=False) == 0
    losses = {r["model"]: r["loss"] for r in json.loads(evaluated.read_text())}
    assert models["base"]["heldout_loss"] == pytest.approx(losses["base"], rel=1e-5)
    assert models["final"]["heldout_loss"] == pytest.approx(losses["fine-tuned"], rel=1e-5)
    assert models["checkpoint-1"]["heldout_loss"] != pytest.approx(losses["fine-tuned"], rel=1e-5)
