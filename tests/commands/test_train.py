"""End to end on CPU: the seed recipe (chat-like-me) on the tiny Llama, apart from size and learning rate.

4-bit NF4 + QLoRA + DoRA + packing + assistant-only masks + adamw_bnb_8bit + cosine + warmup +
evals_per_epoch 1 + saves_per_epoch 1 + modules_to_save [embed_tokens, lm_head] + bf16 + gradient
checkpointing; then the adapter reloads with PeftModel.from_pretrained and greedy decoding reproduces a
trained reply.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

PAIRS = [
    ("What's your favourite food?", "Pickled herring, obviously."),
    ("Where do you live?", "In a lighthouse near Bergen."),
    ("Do you like Mondays?", "Only with strong coffee."),
]
SEED = Path(__file__).resolve().parents[2] / "configs" / "llama31-8b-qlora-dora-zero2.yml"  # the seed, as shipped
pytestmark = pytest.mark.slow  # ~70 s on an idle 2-core CPU (32 optimizer steps of a 4-bit DoRA model)


def _seed_recipe() -> dict:
    return yaml.safe_load(SEED.read_text())


@pytest.fixture(scope="module")
def trained(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from finetune.config import load_recipe_text
    from finetune.data.build import prepare_data
    from finetune.model.tokenizer import load_tokenizer
    from finetune.train.run import run_training

    work = tmp_path_factory.mktemp("e2e")
    data = work / "chats.jsonl"
    with data.open("w") as handle:
        for _ in range(6):
            for prompt, reply in PAIRS:
                messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
                handle.write(json.dumps({"messages": messages}) + "\n")
    recipe = _seed_recipe()
    recipe.update(
        base_model=str(tiny_llama_dir),
        datasets=[{**recipe["datasets"][0], "path": str(data)}],
        dataset_prepared_path=str(work / "prepared"),
        output_dir=str(work / "out"),
        sequence_len=64,  # size: 3 conversations per packed row
        val_set_size=3,
        lora_r=16,
        lora_alpha=32,
        num_epochs=8,
        learning_rate=0.01,  # a tiny random model needs a large step to memorise
        deepspeed=None,
        wandb_project=None,
    )
    settings = load_recipe_text(yaml.safe_dump(recipe)).settings
    tokenizer = load_tokenizer(settings)
    prepared = prepare_data(settings, tokenizer, progress=False)
    warned = _Collect()
    logging.getLogger("finetune").addHandler(warned)
    try:
        result = run_training(settings, prepared, tokenizer, output_dir=Path(settings.output_dir))
    finally:
        logging.getLogger("finetune").removeHandler(warned)
    assert any("flash_attention_2" in r.getMessage() for r in warned.records if r.levelno == logging.WARNING)
    return settings, prepared, result


class _Collect(logging.Handler):
    """The records logged while attached (caplog is per test; the fixture above is per module)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_loss_falls_and_eval_runs_each_epoch(trained) -> None:
    settings, prepared, result = trained
    summary = result.summary
    assert summary["train_loss"] < 0.5 * summary["first_train_loss"]
    assert len(summary["eval_losses"]) == settings.num_epochs
    assert [round(e["epoch"]) for e in summary["eval_losses"]] == list(range(1, int(settings.num_epochs) + 1))
    assert summary["eval_losses"][-1]["eval_loss"] < summary["eval_losses"][0]["eval_loss"]
    assert 0 < summary["trained_tokens"] < summary["tokens"]
    assert summary["trained_tokens_per_s"] > 0


def test_outputs_and_checkpoints(trained) -> None:
    settings, prepared, result = trained
    out = result.output_dir
    for name in ("adapter_model.safetensors", "adapter_config.json", "run_summary.json", "loss.png",
                 "recipe.yml", "tokenizer.json", "generation_config.json"):
        assert (out / name).is_file(), name
    assert len(result.checkpoints) == settings.num_epochs  # saves_per_epoch: 1
    assert (result.checkpoints[-1] / "adapter_model.safetensors").is_file()
    recipe = yaml.safe_load((out / "recipe.yml").read_text())
    assert recipe["peft_use_dora"] is True and recipe["optimizer"] == "adamw_bnb_8bit"
    generation = json.loads((out / "generation_config.json").read_text())
    assert 128009 in generation["eos_token_id"]  # <|eot_id|>, the trained end of turn
    assert generation["pad_token_id"] == 128004


def test_adapter_reloads_and_reproduces_a_reply(trained, tiny_llama_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings, prepared, result = trained
    tokenizer = AutoTokenizer.from_pretrained(result.output_dir)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|eot_id|>"
    from finetune.model.load import quantization_config

    base = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, quantization_config=quantization_config(settings), device_map={"": "cpu"}
    )
    model = PeftModel.from_pretrained(base, result.output_dir).eval()
    prompt, reply = PAIRS[1]
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=20, do_sample=False,
                             generation_config=model.generation_config)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert text.strip() == reply
    assert out[0, -1].item() == tokenizer.eos_token_id  # stops on <|eot_id|>
