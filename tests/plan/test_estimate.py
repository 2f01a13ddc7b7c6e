"""`finetune plan`: the per-GPU memory estimate (finetune.plan.estimate) against known counts, peft, bitsandbytes and a
measured CPU peak."""

from __future__ import annotations

import json
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import yaml

from finetune.config import load_recipe_text
from finetune.errors import RecipeError
from conftest import SEED_RECIPE
from finetune.config.deepspeed import bundled_deepspeed_dir
from finetune.model.shapes import model_shapes, shapes_from_config
from finetune.model.loss import VOCAB_TILE
from finetune.plan.estimate import plan_memory
from finetune.plan.items import GIB, MIB
from finetune.plan.command import format_plan, plan_main

# The seed recipe (chat-like-me.yml, from the article: 2 x RTX 3090, ZeRO-1 ran out of memory, ZeRO-2 fit).
LLAMA31_8B_PARAMS = 8_030_261_248


def seed(*overrides: str):
    return load_recipe_text(SEED_RECIPE, overrides).settings


def test_seed_fits_on_two_24gib_gpus_with_zero2_and_no_modules_to_save() -> None:
    plan = plan_memory(seed("lora_modules_to_save="), world_size=2, gpu_memory_bytes=24 * GIB)
    assert plan.zero_stage == 2 and plan.fits
    assert plan.counts["modules_to_save_params"] == 0
    assert plan.peak_bytes < 20 * GIB
    assert "fits in 24.0 GiB" in format_plan(plan)


def test_modules_to_save_costs_more_under_zero1_than_zero2() -> None:
    z1 = plan_memory(seed("deepspeed=zero1.json"), world_size=2, gpu_memory_bytes=24 * GIB)
    z2 = plan_memory(seed(), world_size=2, gpu_memory_bytes=24 * GIB)
    assert (z1.zero_stage, z2.zero_stage) == (1, 2)
    assert z1.peak_bytes > z2.peak_bytes
    trainable = z2.counts["trainable_params"]
    assert trainable > 1.05e9  # two 128256 x 4096 copies dominate
    # ZeRO-1 keeps every process's full bf16 gradients (+ the reduced partition); ZeRO-2 only the partition.
    assert z1.get("gradients (full") == 2 * trainable
    assert z2.get("gradients") == pytest.approx(2 * trainable / 2, abs=2)
    assert z1.get("gradients") - z2.get("gradients") == pytest.approx(2 * trainable, rel=1e-6)
    # gradient buckets: reduce_bucket_size bf16 elements, two of them with overlap_comm (read from the JSON)
    for plan, name in ((z1, "zero1.json"), (z2, "zero2.json")):
        zero = json.loads((bundled_deepspeed_dir() / name).read_text())["zero_optimization"]
        buckets = 2 if zero.get("overlap_comm") else 1
        assert plan.get("DeepSpeed gradient buckets") == buckets * 2 * int(zero.get("reduce_bucket_size", 5e8))
    # everything else is identical (apart from fragmentation, a share of the rest)
    same = {i.name: i.bytes for i in z1.items if not i.name.startswith(("gradients", "DeepSpeed gradient", "allocator"))}
    assert same == {i.name: i.bytes for i in z2.items if i.name in same}
    # and without modules_to_save the ZeRO stage hardly matters
    z1_small = plan_memory(seed("deepspeed=zero1.json", "lora_modules_to_save="), world_size=2)
    assert z1.peak_bytes - z1_small.peak_bytes > 8 * GIB
    assert z1_small.fits


def test_full_vocabulary_logits_would_cost_gigabytes_at_4096_tokens() -> None:
    chunked = plan_memory(seed("lora_modules_to_save="), world_size=2)
    full = plan_memory(seed("lora_modules_to_save="), world_size=2, loss_head="full")
    assert full.get("logits") > 6 * GIB > chunked.get("loss head")


def test_builtin_llama31_shapes_give_the_known_parameter_counts() -> None:
    for name in ("meta-llama/Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-8B", "NousResearch/Meta-Llama-3.1-8B",
                 "meta-llama/Llama-3.1-8B-Instruct", "NousResearch/Meta-Llama-3.1-8B-Instruct"):
        assert model_shapes(name).total_params == pytest.approx(LLAMA31_8B_PARAMS, rel=1e-3)
    assert model_shapes("meta-llama/Llama-3.1-8B").total_params == LLAMA31_8B_PARAMS
    assert model_shapes("meta-llama/Llama-3.1-70B-Instruct").total_params == pytest.approx(70.55e9, rel=1e-3)


def test_unknown_model_asks_for_a_local_directory() -> None:
    settings = seed("base_model=some-org/unknown-model-xyz")
    with pytest.raises(RecipeError, match="local model directory"):
        plan_memory(settings, world_size=1)


def test_shapes_come_from_a_local_config_json(tiny_llama_dir: Path) -> None:
    shapes = model_shapes(str(tiny_llama_dir))
    assert (shapes.hidden_size, shapes.vocab_size, shapes.num_hidden_layers) == (64, 128256, 2)
    assert shapes.source.endswith("config.json")


def _tiny_recipe(base: Path, **extra) -> str:
    recipe = {"base_model": str(base), "datasets": [{"path": "x.jsonl"}], "adapter": "lora", "lora_r": 64,
              "lora_alpha": 32, "lora_target_linear": True, "peft_use_dora": True, "bf16": False, **extra}
    return yaml.safe_dump(recipe)


@pytest.mark.parametrize("modules_to_save", [None, ["embed_tokens", "lm_head"]])
def test_adapter_parameter_count_matches_peft(tiny_llama_dir: Path, modules_to_save) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from finetune.model.adapters import apply_adapter

    settings = load_recipe_text(_tiny_recipe(tiny_llama_dir, lora_modules_to_save=modules_to_save)).settings
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    peft_model = apply_adapter(settings, model)
    trainable, _ = peft_model.get_nb_trainable_parameters()
    plan = plan_memory(settings, world_size=1)
    assert plan.counts["trainable_params"] == trainable
    magnitudes = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_magnitude_vector" in n)
    assert plan.counts["dora_magnitude_params"] == magnitudes
    # training keeps every trainable tensor in fp32, and so does the estimate
    assert {p.dtype for p in peft_model.parameters() if p.requires_grad} == {torch.float32}
    assert plan.get("trainable params (fp32)") == 4 * trainable


def test_nf4_storage_matches_bitsandbytes(tiny_llama_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=quant, dtype=torch.bfloat16,
                                                 device_map={"": "cpu"})
    packed = constants = 0
    for module in model.modules():
        if type(module).__name__ == "Linear4bit":
            weight = module.weight
            packed += weight.numel() * weight.element_size()
            state = weight.quant_state
            tensors = [state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code]
            constants += sum(t.numel() * t.element_size() for t in tensors)
    settings = load_recipe_text(_tiny_recipe(tiny_llama_dir, adapter="qlora", load_in_4bit=True, bf16=True)).settings
    plan = plan_memory(settings, world_size=1)
    assert plan.get("base weights: NF4") == packed + constants


# --- estimate vs a measured peak ---------------------------------------------------------------------------


class LiveTensorBytes:
    """Exact live-tensor accounting on CPU: every storage an ATen op creates is counted until it is freed.

    The CPU analogue of torch.cuda.max_memory_allocated (no allocator caching or rounding): a TorchDispatchMode
    sees each op's outputs; new storages are added and a weakref finalizer subtracts them when freed. Views
    allocate nothing and are skipped. Tensors that existed before (the model) are not counted.
    """

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        meter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                out = func(*args, **(kwargs or {}))
                if not func.is_view:
                    for t in tree_flatten(out)[0]:
                        meter._track(t)
                return out

        self.mode, self.live, self.current, self.peak = Mode(), {}, 0, 0

    def _track(self, t) -> None:  # noqa: ANN001
        import torch

        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            return
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if not key or key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


def _measure_step(settings, config) -> int:  # noqa: ANN001
    """Peak live bytes (above the model) of one forward + backward, the way finetune's trainer computes the loss."""
    import torch
    from transformers import LlamaForCausalLM

    from finetune.model.adapters import apply_adapter
    from finetune.model.loss import trained_token_nll

    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float()
    model.config.use_cache = False
    peft_model = apply_adapter(settings, model)
    if settings.gradient_checkpointing:
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model.train()
    ids = torch.randint(0, config.vocab_size, (settings.micro_batch_size, settings.sequence_len))
    meter = LiveTensorBytes()
    with meter.mode:
        out = peft_model(input_ids=ids, use_cache=False, output_hidden_states=True, logits_to_keep=1)
        nll, count = trained_token_nll(out.hidden_states[-1], ids, peft_model.get_output_embeddings(), config,
                                       loss_head=settings.loss_head)
        (nll / count).backward()
    return meter.peak


@pytest.mark.parametrize("loss_head", ["fused", "trl"])
def test_estimate_matches_measured_peak_on_cpu(loss_head: str) -> None:
    """A 4-layer Llama (hidden 256, MLP 768) with LoRA+DoRA r16 and dropout, fp32, 512 tokens: the measured peak of
    live tensors during forward+backward vs the estimate's activations + loss head + gradients, with and without
    gradient checkpointing. On CPU, TRL's chunked log-prob folds each vocabulary tile with plain torch ops (a fused
    Triton kernel on CUDA): that CPU-only allowance (7 tile-sized fp32 temporaries) is added to its estimate.
    """
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)
    shapes = shapes_from_config(config.to_dict(), "tiny-measured", "test")
    seq = 512
    measured, estimated = {}, {}
    for checkpointing in (True, False):
        recipe = {"base_model": "tiny", "datasets": [{"path": "x.jsonl"}], "adapter": "lora", "lora_r": 16,
                  "lora_alpha": 32, "lora_dropout": 0.05, "lora_target_linear": True, "peft_use_dora": True,
                  "bf16": False, "sequence_len": seq, "gradient_checkpointing": checkpointing,
                  "attn_implementation": "sdpa", "loss_head": loss_head}
        settings = load_recipe_text(yaml.safe_dump(recipe)).settings
        cpu_fold = 7 * (seq - 1) * min(config.vocab_size, VOCAB_TILE) * 4 if loss_head == "trl" else 0
        plan = plan_memory(settings, world_size=1, shapes=shapes)
        transient = plan.peak_bytes - plan.phase_bytes("always")
        estimated[checkpointing] = transient + plan.get("gradients") + cpu_fold
        measured[checkpointing] = _measure_step(settings, config)
        assert 0.6 < measured[checkpointing] / estimated[checkpointing] < 1.6, (checkpointing, measured, estimated)
    assert measured[True] < measured[False] and estimated[True] < estimated[False]
    saved_measured, saved_estimated = measured[False] - measured[True], estimated[False] - estimated[True]
    assert 0.5 < saved_measured / saved_estimated < 2.0, (saved_measured, saved_estimated)


# --- sizes, suggestions, output -------------------------------------------------------------------------------


def test_suggestions_when_it_does_not_fit() -> None:
    settings = seed("deepspeed=zero1.json", "gradient_checkpointing=false", "optimizer=adamw_torch",
                    "micro_batch_size=2")
    plan = plan_memory(settings, world_size=2, gpu_memory_bytes=24 * GIB)
    assert not plan.fits
    changes = [s.change for s in plan.suggestions]
    order = ["drop lora_modules_to_save", "deepspeed: zero2.json", "optimizer: adamw_bnb_8bit",
             "gradient_checkpointing: true", "micro_batch_size: 1", "deepspeed: zero3.json",
             "deepspeed: zero3_offload.json", "sequence_len: 2048"]
    assert [next(i for i, c in enumerate(changes) if c.startswith(o)) for o in order] == list(range(len(order)))
    assert all(s.peak_bytes < plan.peak_bytes for s in plan.suggestions)
    cumulative = [s.cumulative_bytes for s in plan.suggestions]
    assert cumulative == sorted(cumulative, reverse=True) and cumulative[-1] <= plan.gpu_memory_bytes
    text = format_plan(plan)
    assert "does NOT fit" in text and "to make it fit" in text and "adamw_bnb_8bit" in text


def test_no_suggestions_when_it_fits() -> None:
    plan = plan_memory(seed("lora_modules_to_save="), world_size=2, gpu_memory_bytes=80 * GIB)
    assert plan.fits and plan.suggestions == ()


def test_plan_main_prints_the_table_and_returns_the_verdict(capsys) -> None:
    assert plan_main(seed("lora_modules_to_save="), world_size=2, gpu_memory="24GiB") == 0
    out = capsys.readouterr().out
    assert "ZeRO-2" in out and "NF4" in out and "DoRA weight-norm transient" in out and "peak" in out
    assert plan_main(seed(), world_size=1, gpu_memory="8GiB") == 1


def test_the_estimator_does_not_import_torch() -> None:
    code = ("import sys; from finetune.config import load_recipe_text; from finetune.plan.estimate import plan_memory; "
            f"plan_memory(load_recipe_text({SEED_RECIPE!r}).settings, world_size=2); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


EXAMPLE_RECIPE = """
base_model: NousResearch/Meta-Llama-3.1-8B
load_in_4bit: true
chat_template: llama3
datasets:
  - path: /path/to/training_data.json
    type: chat_template
output_dir: ./outputs/lora-out
sequence_len: 4096
adapter: qlora
lora_target_linear: true
micro_batch_size: 1
bf16: true
gradient_checkpointing: true
"""


def _example_with_deepspeed(deepspeed: str):
    return load_recipe_text(EXAMPLE_RECIPE, [f"deepspeed={deepspeed}"]).settings


@pytest.mark.parametrize("deepspeed", ["/path/to/deepspeed_configs/my_zero3.json", "/nowhere/my_zero2.json"])
def test_plan_never_guesses_the_zero_stage_from_a_file_name(deepspeed: str) -> None:
    # a missing custom file is an error for `train`; `plan` used to say "fits" with the stage read off the name.
    with pytest.raises(RecipeError, match="deepspeed"):
        plan_memory(_example_with_deepspeed(deepspeed), world_size=2)


def test_plan_resolves_a_bundled_stand_in_like_train() -> None:
    plan = plan_memory(_example_with_deepspeed("/path/to/deepspeed_configs/zero2.json"), world_size=2)
    assert plan.zero_stage == 2 and Path(plan.deepspeed).name == "zero2.json" and Path(plan.deepspeed).is_file()
