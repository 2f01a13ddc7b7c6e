"""`finetune export --gguf QUANT --adapter-only`: the LoRA adapter as a llama.cpp GGUF adapter, proven by llama.cpp.

llama.cpp running a base GGUF with our adapter (`--lora`) must compute what PEFT computes with the same adapter on
the same base weights; what an adapter cannot hold (DoRA, modules_to_save) is refused, never exported wrongly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf", reason="the GGUF export needs llama.cpp's gguf package: "
                                          "pip install 'finetune[gguf]'")
np = pytest.importorskip("numpy")

from finetune.cli import main  # noqa: E402
from finetune.export.gguf_llama import ExportError  # noqa: E402
from finetune.export.lora import export_lora_gguf  # noqa: E402

needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python is not installed (pip install 'finetune[gguf]')")
EOT = 128009
PROMPT_IDS = [128000, 128006, 882, 128007, 271, 4438, 1690, 14535, 706, 264, 35454, 30, EOT, 128006, 78191, 128007]


@pytest.fixture(scope="module")
def base_gguf(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base itself as an f32 GGUF (what a user gets from `convert_hf_to_gguf.py` or a full export)."""
    from transformers import AutoTokenizer

    from finetune.export.gguf_llama import read_vocab, write_gguf
    from finetune.runs.read import read_json

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    rows = read_json(tiny_llama_dir / "config.json")["vocab_size"]
    path = tmp_path_factory.mktemp("base-gguf") / "base-f32.gguf"
    write_gguf(path, tiny_llama_dir, read_vocab(tokenizer, tiny_llama_dir, rows, eos=EOT, eot=EOT), "base", "f32")
    return path


def _llama_logits(model: Path, ids: list[int], lora: Path | None = None) -> Any:
    import llama_cpp

    llm = llama_cpp.Llama(str(model), lora_path=str(lora) if lora else None, n_ctx=64, n_threads=2, verbose=False,
                          logits_all=True, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def _peft_logits(base_dir: Path, adapter_dir: Path | None, ids: list[int]) -> Any:
    """PEFT's forward with the adapter on the float32 base (QLoRA adapters too: the base GGUF is not NF4)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    with torch.no_grad():
        return model.eval()(torch.tensor([ids])).logits[0].numpy()


@needs_llama
@pytest.mark.parametrize("kind", ["lora", "rslora", "qlora"])
def test_llama_cpp_with_the_adapter_equals_peft(kind: str, make_adapter_run: Any, base_gguf: Path,
                                                tiny_llama_dir: Path) -> None:
    # f32 weights and KV cache: only float32 summation order differs (~1e-6). A wrong scale (rsLoRA's sqrt(r)),
    # a missing Q/K row permutation of lora_B, or A/B swapped moves logits by far more: the adapter itself moves
    # them by more than 0.05, 500 times the tolerance.
    run, settings = make_adapter_run(seed=7, **{"lora": {}, "rslora": {"rslora": True}, "qlora": {"qlora": True}}[kind])
    adapter = export_lora_gguf(settings, "f32")
    assert adapter.name == f"{run.name}-lora-f32.gguf"
    assert adapter.stat().st_size < base_gguf.stat().st_size / 4
    expected = _peft_logits(tiny_llama_dir, run, PROMPT_IDS)
    got = _llama_logits(base_gguf, PROMPT_IDS, lora=adapter)
    assert np.abs(got - expected).max() < 1e-4
    plain = _llama_logits(base_gguf, PROMPT_IDS)
    assert np.abs(plain - _peft_logits(tiny_llama_dir, None, PROMPT_IDS)).max() < 1e-4
    assert np.abs(plain - expected).max() > 0.05


@needs_llama
@pytest.mark.parametrize("quant,tolerance", [("f16", 0.02), ("q8_0", 0.05)])
def test_smaller_adapter_types_stay_close(quant: str, tolerance: float, make_adapter_run: Any, base_gguf: Path,
                                          tiny_llama_dir: Path) -> None:
    # Relative to the logit range: f16 rounding of A and B moves logits a little, q8_0 a little more.
    run, settings = make_adapter_run(seed=7)
    expected = _peft_logits(tiny_llama_dir, run, PROMPT_IDS)
    got = _llama_logits(base_gguf, PROMPT_IDS, lora=export_lora_gguf(settings, quant))
    assert np.abs(got - expected).max() < tolerance * (expected.max() - expected.min())


def test_metadata_and_tensor_names(make_adapter_run: Any) -> None:
    from gguf import GGUFReader

    run, settings = make_adapter_run(rslora=True)
    reader = GGUFReader(export_lora_gguf(settings, "f16"))
    field = reader.fields["adapter.lora.alpha"]
    assert float(field.parts[field.data[0]][0]) == pytest.approx(16 * 8 ** 0.5)  # rsLoRA: alpha * sqrt(r)
    kind = reader.fields["general.type"]
    assert bytes(kind.parts[kind.data[0]]).decode() == "adapter"
    names = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    # 7 adapted linears in each of the tiny model's layers, an A and a B for each; GGUF shapes are (cols, rows).
    assert {"blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b", "blk.1.ffn_down.weight.lora_b"} <= set(names)
    assert len(names) % 14 == 0
    assert names["blk.0.attn_q.weight.lora_a"][1] == 8 and names["blk.0.attn_q.weight.lora_b"][0] == 8


@pytest.mark.parametrize("kind,message", [
    ("dora", "DoRA adapter"),
    ("modules_to_save", "lora_modules_to_save"),
])
def test_what_an_adapter_cannot_hold_is_refused(kind: str, message: str, make_adapter_run: Any,
                                                capsys: pytest.CaptureFixture) -> None:
    run, settings = make_adapter_run(**{"dora": {"dora": True},
                                        "modules_to_save": {"new_tokens": ("<|tool_call|>",)}}[kind])
    code = main(["export", str(run / "recipe.yml"), "--gguf", "f16", "--adapter-only"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "drop --adapter-only" in err
    assert not list((run / "gguf").glob("*.gguf")) if (run / "gguf").exists() else True


def test_bad_arguments_exit_2(make_adapter_run: Any, capsys: pytest.CaptureFixture) -> None:
    run, settings = make_adapter_run()
    assert main(["export", str(run / "recipe.yml"), "--gguf", "q4_k_m", "--adapter-only"]) == 2
    assert "adapters are written as f32, f16, bf16, q8_0" in capsys.readouterr().err
    assert main(["export", str(run / "recipe.yml"), "--gguf", "f16", "--base-gguf", "x.gguf"]) == 2
    assert "--base-gguf goes with --adapter-only" in capsys.readouterr().err
    assert main(["export", str(run / "recipe.yml"), "--gguf", "f16", "--adapter-only",
                 "--base-gguf", str(run / "missing.gguf")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(ExportError, match="no adapter"):
        export_lora_gguf(settings, "f16", adapter_dir=run / "nowhere")


def test_modelfile_stacks_the_adapter_on_the_base(make_adapter_run: Any, base_gguf: Path) -> None:
    run, settings = make_adapter_run()
    adapter = export_lora_gguf(settings, "f16", base_gguf=base_gguf)
    lines = (run / "gguf" / "Modelfile").read_text(encoding="utf-8").splitlines()
    assert lines[0] == f"FROM {base_gguf.resolve()}"
    assert lines[1] == f"ADAPTER ./{adapter.name}"
    assert 'PARAMETER stop "<|eot_id|>"' in lines
    assert any(line.startswith('TEMPLATE """') for line in lines)
