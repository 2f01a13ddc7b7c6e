"""Preference tuning on CPU with the micro Llama: the DPO loss, the cached reference, and that it learns the preference.

- the loss of a batch equals a plain implementation, -logsigmoid(beta * ((pc - rc) - (pr - rr))), with every
  log-prob from full logits of a plain forward (the reference: the adapter disabled);
- precomputed (cached) reference log-probs equal TRL's on-the-fly reference, for a fresh adapter (adapter
  disabled) and for one continued from `lora_model_dir` (TRL's frozen copy of it); the loss too;
- the cache is reused: a second run and another rl_beta compute nothing; other reference weights miss it;
- after a short run on pairs with a clear preference, held-out pairs get a higher chosen-minus-rejected margin
  than under the reference for most pairs, and `finetune evaluate` reports it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import pair_rows

BETA = 0.1



@pytest.fixture
def dpo_recipe(micro_llama_dir: Path, tmp_path: Path):
    """Factory: (settings, tokenizer, prepared) of a LoRA DPO recipe on `n` clear-preference pairs."""
    from finetune.config import load_recipe
    from finetune.data.build import prepare_data
    from finetune.model.tokenizer import load_tokenizer

    def make(n: int = 12, **keys):
        data = tmp_path / "pairs.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in pair_rows(n)), encoding="utf-8")
        recipe = {
            "base_model": str(micro_llama_dir), "rl": "dpo", "rl_beta": BETA, "adapter": "lora", "lora_r": 4,
            "lora_alpha": 8, "lora_target_linear": True, "chat_template": "llama3", "bf16": False,
            "datasets": [{"path": str(data), "type": "chat_template.default"}],
            "dataset_prepared_path": str(tmp_path / "prepared"), "output_dir": str(tmp_path / "out"),
            "micro_batch_size": 2, "max_steps": 2, "optimizer": "adamw_torch", "lr_scheduler": "constant",
            "warmup_steps": 0, "learning_rate": 0.01,
            "special_tokens": {"pad_token": "<|finetune_right_pad_id|>", "eos_token": "<|eot_id|>"}, **keys,
        }
        path = tmp_path / "recipe.yml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        settings = load_recipe(path).settings
        tokenizer = load_tokenizer(settings)
        return settings, tokenizer, prepare_data(settings, tokenizer, progress=False)

    return make


def _perturb(model, seed: int = 0) -> None:
    """Random lora_B so the policy differs from the reference (a fresh adapter starts as a no-op)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name and ".default." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def _trainer(settings, tokenizer, model, train, tmp_path, precision):
    from finetune.train.dpo import DPOStage
    from finetune.train.run import trainer_arguments
    from finetune.train.trainer import TokenCounter

    stage = DPOStage()
    args = trainer_arguments(stage, settings, len(train), precision=precision, world_size=1,
                             output_dir=tmp_path / "trainer")
    return stage.trainer(settings, model, tokenizer, train, None, args=args, counter=TokenCounter(), callbacks=[])


def _plain_logp(model, prompt: list[int], reply: list[int]) -> float:
    """log p(reply | prompt) from the full logits of one unpadded forward."""
    import torch

    ids = torch.tensor([prompt + reply])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1)
    return float(logps[len(prompt) - 1:].sum())


def test_dpo_loss_of_a_batch_equals_a_plain_implementation(dpo_recipe, tmp_path):
    import torch
    import torch.nn.functional as F

    from finetune.data.collate import pad_token_id
    from finetune.train.reference import with_reference
    from finetune.train.run import setup_model

    settings, tokenizer, prepared = dpo_recipe()
    model, precision = setup_model(settings, tokenizer)
    _perturb(model)
    train, _, _ = with_reference(settings, prepared, model, pad_id=pad_token_id(tokenizer), precision=precision,
                                 progress=False)
    trainer = _trainer(settings, tokenizer, model, train, tmp_path, precision)
    rows = [train[i] for i in range(4)]
    model.eval()
    with torch.no_grad():
        loss = float(trainer.compute_loss(model, trainer._prepare_inputs(trainer.data_collator(rows))))

    expected = []
    for row in rows:
        prompt = list(row["prompt_ids"])
        pc, pr = (_plain_logp(model, prompt, list(row[side])) for side in ("chosen_ids", "rejected_ids"))
        with model.disable_adapter():
            rc, rr = (_plain_logp(model, prompt, list(row[side])) for side in ("chosen_ids", "rejected_ids"))
        assert row["ref_chosen_logps"] == pytest.approx(rc, abs=1e-4)
        assert row["ref_rejected_logps"] == pytest.approx(rr, abs=1e-4)
        expected.append(-F.logsigmoid(torch.tensor(BETA * ((pc - rc) - (pr - rr)))))
    assert abs(loss - float(torch.stack(expected).mean())) < 1e-5
    assert abs(loss - 0.6931) > 1e-3  # the perturbed policy is not the reference


@pytest.mark.parametrize("continued", [False, True], ids=["fresh adapter", "continued from lora_model_dir"])
def test_precomputed_reference_equals_the_on_the_fly_reference(dpo_recipe, make_adapter_run, micro_llama_dir,
                                                               tmp_path, continued):
    import torch

    from finetune.data.collate import pad_token_id
    from finetune.train.reference import with_reference
    from finetune.train.run import setup_model

    keys = {}
    if continued:  # an "SFT" adapter with random lora_B: base + adapter != base
        sft_dir, _ = make_adapter_run(base_dir=micro_llama_dir, seed=3)
        keys = {"lora_model_dir": str(sft_dir)}
    settings, tokenizer, prepared = dpo_recipe(**keys)
    model, precision = setup_model(settings, tokenizer)
    cached, _, _ = with_reference(settings, prepared, model, pad_id=pad_token_id(tokenizer), precision=precision,
                                  progress=False)
    precomputed = _trainer(settings, tokenizer, model, cached, tmp_path, precision)
    assert "ref" not in model.peft_config  # a cached reference needs no frozen adapter copy
    on_the_fly = _trainer(settings, tokenizer, model, prepared.train, tmp_path, precision)
    assert ("ref" in model.peft_config) == continued  # a fresh adapter's reference: the adapter disabled, no copy
    _perturb(model)  # as if training had moved the policy: the reference must not move with it
    model.eval()
    for first in range(0, len(cached), 4):
        rows = [cached[i] for i in range(first, min(first + 4, len(cached)))]
        batch = on_the_fly._prepare_inputs(on_the_fly.data_collator([
            {k: v for k, v in row.items() if not k.startswith("ref_")} for row in rows]))
        chosen, rejected = on_the_fly.compute_ref_log_probs(model, batch)
        torch.testing.assert_close(chosen, torch.tensor([r["ref_chosen_logps"] for r in rows]), atol=1e-4, rtol=0)
        torch.testing.assert_close(rejected, torch.tensor([r["ref_rejected_logps"] for r in rows]), atol=1e-4, rtol=0)
        with torch.no_grad():
            fly = float(on_the_fly.compute_loss(model, batch))
            pre = float(precomputed.compute_loss(model, precomputed._prepare_inputs(precomputed.data_collator(rows))))
        assert pre == pytest.approx(fly, abs=1e-5)


def test_the_reference_cache_is_keyed_by_the_reference_weights_not_beta(dpo_recipe, tmp_path):
    from finetune.data.collate import pad_token_id
    from finetune.train import reference
    from finetune.train.run import setup_model

    settings, tokenizer, prepared = dpo_recipe()
    model, precision = setup_model(settings, tokenizer)
    _, _, first = reference.with_reference(settings, prepared, model, pad_id=pad_token_id(tokenizer),
                                           precision=precision, progress=False)
    written = (first / "train.npy").stat().st_mtime_ns  # computing always rewrites the file
    other_beta = settings.model_copy(update={"rl_beta": 0.5})
    _, _, again = reference.with_reference(other_beta, prepared, model, pad_id=pad_token_id(tokenizer),
                                           precision=precision, progress=False)
    assert again == first and (first / "train.npy").stat().st_mtime_ns == written
    base = Path(settings.base_model)
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # same bytes, new mtime: the digest is recomputed, and equal
    assert reference.reference_dir(settings, prepared, precision) == first
    copy = tmp_path / "other-base"
    copy.mkdir()
    for file in base.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(copy / "model.safetensors"))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
    changed = settings.model_copy(update={"base_model": str(copy)})
    assert reference.reference_dir(changed, prepared, precision) != first


@pytest.mark.slow
def test_a_short_run_raises_the_held_out_margin_for_most_pairs(dpo_recipe, micro_llama_dir, tmp_path, capsys):
    from finetune.infer.evaluate import evaluate_main
    from finetune.infer.evaluate_pairs import pair_margins
    from finetune.train.run import run_training

    settings, tokenizer, prepared = dpo_recipe(n=40, val_set_size=10, max_steps=20, eval_steps=10,
                                               learning_rate=0.02)
    result = run_training(settings, prepared, tokenizer)
    out = result.output_dir
    for name in ("adapter_model.safetensors", "run_summary.json", "loss.png", "recipe.yml", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert not (out / "ref").exists()  # no reference adapter saved alongside
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["steps"] == 20 and summary["train_loss"] < summary["first_train_loss"]
    assert summary["eval_rewards/margins"] > 0 and "rewards/accuracies" in summary

    margins = pair_margins(settings, tokenizer, prepared.eval, run_dir=out, batch_size=4)
    reference = margins["reference"][:, 0] - margins["reference"][:, 1]
    tuned = margins["fine-tuned"][:, 0] - margins["fine-tuned"][:, 1]
    assert (tuned > reference).mean() >= 0.8, (tuned, reference)

    evaluate_main(settings, output=tmp_path / "eval.json", progress=False)
    results = {r["model"]: r for r in json.loads((tmp_path / "eval.json").read_text())}
    assert results["fine-tuned"]["reward_accuracy"] >= 0.8 and results["fine-tuned"]["mean_reward_margin"] > 0
    assert results["reference"]["reward_accuracy"] is None
    assert results["fine-tuned"]["preference_accuracy"] >= results["reference"]["preference_accuracy"]
    assert "reward margin" in capsys.readouterr().out


def test_preprocess_computes_the_reference_once_and_shows_pairs(dpo_recipe, capsys):
    from finetune.train.preprocess import preprocess

    settings, _, _ = dpo_recipe(val_set_size=2)
    prepared = preprocess(settings, show=1, progress=False)
    out = capsys.readouterr().out
    assert "reference log-probs: " in out and "── chosen" in out and "yes, " in out
    directory = Path(out.split("reference log-probs: ")[1].splitlines()[0])
    assert directory.parent == prepared.path
    files = {name: (directory / f"{name}.npy").stat().st_mtime_ns for name in ("train", "eval")}
    preprocess(settings, progress=False)  # a cache hit: nothing recomputed, no model loaded
    assert {name: (directory / f"{name}.npy").stat().st_mtime_ns for name in files} == files


@pytest.mark.parametrize("trainer", ["dpo", "sft"])
def test_building_the_trainer_keeps_the_exact_adapter_values_on_a_4bit_base(trainer, dpo_recipe, tmp_path):
    # TRL casts the trainable parameters of a quantized model to bf16; an upcast afterwards would keep the bf16
    # rounding (an SFT adapter continued by DPO would start away from its own reference). They must come back
    # bit for bit, in float32.
    import torch

    from finetune.train.run import setup_model

    settings, tokenizer, prepared = dpo_recipe(adapter="qlora", load_in_4bit=True)
    model, precision = setup_model(settings, tokenizer)
    _perturb(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    assert any(not torch.equal(v, v.to(torch.bfloat16).float()) for v in before.values())
    if trainer == "dpo":
        built = _trainer(settings, tokenizer, model, prepared.train, tmp_path, precision)
    else:
        import datasets
        from trl import SFTConfig

        from finetune.train.trainer import FinetuneTrainer, TokenCounter

        args = SFTConfig(output_dir=str(tmp_path / "sft"), use_cpu=True, report_to="none", bf16=True,
                         max_steps=1, dataset_kwargs={"skip_prepare_dataset": True})
        built = FinetuneTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_dict({"input_ids": [[1, 2]]}), processing_class=tokenizer,
                                counter=TokenCounter(), pad_id=tokenizer.pad_token_id)
    after = dict(built.model.named_parameters())
    for name, value in before.items():
        assert after[name].dtype == torch.float32 and torch.equal(after[name].detach(), value), name
