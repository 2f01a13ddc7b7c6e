"""`finetune export --gguf`: the files are proven by llama.cpp itself (through llama-cpp-python).

Tokenizer ids, the chat template's prompt tokens, logits against transformers' merged model, greedy replies
against `finetune chat --temperature 0` and the stop at <|eot_id|>; then the metadata read back with gguf's
own reader, and bad inputs (exit 2, never a partial .gguf).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf", reason="the GGUF export needs llama.cpp's gguf package: "
                                          "pip install 'finetune[gguf]'")
np = pytest.importorskip("numpy")

from finetune.cli import main  # noqa: E402
from finetune.export.command import export_gguf  # noqa: E402
from finetune.export.gguf_llama import ExportError, llama3_rope_factors  # noqa: E402

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (pip install 'finetune[gguf]'; it builds llama.cpp, ~12 min): "
           "the GGUF files cannot be loaded by llama.cpp here")
EOT, END_OF_TEXT, BOS, PAD = 128009, 128001, 128000, 128004
PAIRS = [
    ("What's your favourite food?", "Pickled herring, obviously."),
    ("Where do you live?", "In a lighthouse near Bergen."),
    ("Do you like Mondays?", "Only with strong coffee."),
]
TEXTS = [
    "Hello, world! 12345 67.89 1,000,000",
    "  leading and trailing spaces  \n\n\ttabs\tand\r\nnewlines\n",
    "Ünïcödé — naïve café, 日本語のテキスト, emoji 🦙🚀😶\u200d🌫️, Ελληνικά, кириллица",
    "<|start_header_id|>user<|end_header_id|>\n\nspecial tokens inline<|eot_id|><|begin_of_text|>",
    "code: def f(x):\n    return x**2  # ''' \"\"\" ``` !!!??? I've we'll 'RE",
]


@pytest.fixture(scope="module")
def trained(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A LoRA run trained by finetune until it repeats PAIRS (and ends each reply with <|eot_id|>)."""
    import yaml

    from finetune.config import load_recipe
    from finetune.data.build import prepare_data
    from finetune.model.tokenizer import load_tokenizer
    from finetune.train.run import run_training

    work = tmp_path_factory.mktemp("export-train")
    data = work / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]} for p, r in PAIRS]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows * 4), encoding="utf-8")
    recipe = {
        "base_model": str(tiny_llama_dir), "adapter": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
        "lora_target_linear": True, "chat_template": "llama3",
        "datasets": [{"path": str(data), "type": "chat_template"}],
        "dataset_prepared_path": str(work / "prepared"), "output_dir": str(work / "out"), "sequence_len": 64,
        "micro_batch_size": 4, "gradient_accumulation_steps": 1, "num_epochs": 12, "optimizer": "adamw_torch",
        "lr_scheduler": "constant", "learning_rate": 0.01, "bf16": False, "val_set_size": 0, "logging_steps": 10,
        "special_tokens": {"pad_token": "<|finetune_right_pad_id|>", "eos_token": "<|eot_id|>"},
    }
    path = work / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    settings = load_recipe(path).settings
    tokenizer = load_tokenizer(settings)
    run_training(settings, prepare_data(settings, tokenizer, progress=False), tokenizer,
                 output_dir=Path(settings.output_dir))
    return path, settings


@pytest.fixture(scope="module")
def trained_f16(trained: Any) -> Path:
    return export_gguf(trained[1], "f16")


def _llama(path: Path, **kwargs: Any) -> Any:
    from llama_cpp import Llama

    return Llama(str(path), n_ctx=256, n_threads=2, verbose=False, seed=0, **kwargs)


def _chat_reply(settings: Any, prompt: str) -> str:
    from finetune.infer.chat import chat_main

    out = io.StringIO()
    chat_main(settings, prompt=prompt, temperature=0, max_new_tokens=24, stdout=out)
    return out.getvalue().strip()


# --- llama.cpp reads what training wrote -------------------------------------------------------------


@needs_llama
def test_tokenizer_ids_equal_ours(trained: Any, trained_f16: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained[1].output_dir)
    llm = _llama(trained_f16, vocab_only=True)
    try:
        for text in TEXTS:
            ours = tokenizer(text, add_special_tokens=False).input_ids
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours, text
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == [BOS] + ours
            if "<|" not in text:
                assert llm.detokenize(ours).decode() == text
    finally:
        llm.close()


@needs_llama
def test_chat_template_renders_the_training_prompt(trained: Any, trained_f16: Path) -> None:
    import ctypes

    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    from finetune.infer.chat import format_prompt

    tokenizer = AutoTokenizer.from_pretrained(trained[1].output_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there 👋"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": PAIRS[0][0]}]
    ours = tokenizer(format_prompt(tokenizer, messages), add_special_tokens=False).input_ids
    llm = _llama(trained_f16, vocab_only=True)
    try:
        template = llm.metadata["tokenizer.chat_template"]
        assert template == tokenizer.chat_template
        # llama-cpp-python's chat handler: the GGUF's Jinja template with its bos/eos, tokenized as it does.
        formatted = Jinja2ChatFormatter(template, eos_token="<|eot_id|>", bos_token="<|begin_of_text|>")(
            messages=messages)
        assert llm.tokenize(formatted.prompt.encode(), add_bos=not formatted.added_special, special=True) == ours
        # llama.cpp's own C++ template engine (what llama-cli uses without --jinja), BOS added by the tokenizer.
        chat = (llama_cpp.llama_chat_message * len(messages))(
            *[llama_cpp.llama_chat_message(m["role"].encode(), m["content"].encode()) for m in messages])
        buffer = ctypes.create_string_buffer(4096)
        size = llama_cpp.llama_chat_apply_template(template.encode(), chat, len(messages), True, buffer, 4096)
        assert 0 < size < 4096
        add_bos = llm.metadata["tokenizer.ggml.add_bos_token"] == "true"
        assert llm.tokenize(buffer.value[:size], add_bos=add_bos, special=True) == ours
    finally:
        llm.close()


def _merged_logits(settings: Any, tmp: Path, ids: list[int], round_to: Any = None) -> Any:
    from transformers import AutoModelForCausalLM

    from finetune.export.merge import merge_adapter

    merged = merge_adapter(settings, out_dir=tmp, dtype="fp32")
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    if round_to is not None:
        for param in model.parameters():
            param.data = param.data.to(round_to).to(torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _gguf_logits(path: Path, ids: list[int]) -> Any:
    import llama_cpp

    # A float32 KV cache, so the only differences left are the weights' type and the order of float32 sums.
    llm = _llama(path, logits_all=True, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


PROMPT_IDS = [BOS, 128006, 882, 128007, 271, 4438, 1690, 14535, 706, 264, 35454, 30, EOT, 128006, 78191, 128007, 271]


@needs_llama
@pytest.mark.parametrize("kind", ["lora", "dora", "rslora", "qlora_dora", "modules_to_save", "llama31_rope", "full"])
def test_f32_logits_equal_the_merged_model(kind: str, make_adapter_run: Any, tmp_path: Path,
                                           tiny_llama_dir: Path) -> None:
    # f32 weights and an f32 KV cache: llama.cpp must compute what transformers computes, to float32 summation
    # order (measured ~1e-6; 1e-4 allows for it). A Q/K layout, rope_freqs or merge mistake moves logits by far more
    # than that: each adapter moves them by more than 0.05 (checked), and the tolerance is 500 times smaller.
    from transformers import AutoModelForCausalLM

    if kind == "full":
        settings = _full_run(tiny_llama_dir, tmp_path / "full")
        trained = AutoModelForCausalLM.from_pretrained(settings.output_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            expected = trained(torch.tensor([PROMPT_IDS])).logits[0].numpy()
        ids = PROMPT_IDS
    else:
        kwargs: dict[str, Any] = {"lora": {}, "dora": {"dora": True}, "rslora": {"rslora": True},
                                  "qlora_dora": {"qlora": True, "dora": True},
                                  "modules_to_save": {"new_tokens": ("<|tool_call|>",)},
                                  "llama31_rope": {"base_dir": _llama31_base(tiny_llama_dir, tmp_path / "base")}}[kind]
        run, settings = make_adapter_run(seed=5, **kwargs)
        ids = PROMPT_IDS + ([128256] if kind == "modules_to_save" else [])
        expected = _merged_logits(settings, tmp_path / "merged", ids)
    got = _gguf_logits(export_gguf(settings, "f32"), ids)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4
    base = AutoModelForCausalLM.from_pretrained(settings.base_model, dtype=torch.float32).eval()
    if kind == "modules_to_save":
        base.resize_token_embeddings(128257)
    with torch.no_grad():
        plain = base(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(plain - expected).max() > 0.05


def _full_run(tiny_llama_dir: Path, out: Path) -> Any:
    """A full fine-tune's output_dir: the tiny model with changed weights, its tokenizer and template, a recipe."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.config import load_recipe
    from finetune.data.templates import LLAMA3_JINJA

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.add_special_tokens({"eos_token": "<|eot_id|>", "pad_token": "<|finetune_right_pad_id|>"})
    tokenizer.chat_template = LLAMA3_JINJA
    tokenizer.save_pretrained(out)
    (out / "recipe.yml").write_text(
        f"base_model: {tiny_llama_dir}\nbf16: false\nchat_template: llama3\ndatasets:\n  - path: data.jsonl\n"
        f"output_dir: {out}\nspecial_tokens:\n  eos_token: <|eot_id|>\n  pad_token: <|finetune_right_pad_id|>\n",
        encoding="utf-8")
    return load_recipe(out / "recipe.yml").settings


def _llama31_base(tiny_llama_dir: Path, out: Path) -> Path:
    """The tiny model with Llama 3.1's rope scaling (factor 8 over an original 8192 context)."""
    import shutil

    from transformers import LlamaForCausalLM

    from finetune.testing.tiny_llama import tiny_llama_config

    config = tiny_llama_config()
    config.max_position_embeddings = 131072
    config.rope_parameters = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    torch.manual_seed(3)
    LlamaForCausalLM(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama_dir / name, out / name)
    return out


@needs_llama
def test_f16_logits_match_within_f16_rounding(trained: Any, trained_f16: Path, tmp_path: Path) -> None:
    # Against transformers with the same f16-rounded weights, what remains is llama.cpp rounding activations to f16
    # for its f16 matrix products: a relative 2^-11 (~5e-4) per product, a few times over the layers. 1e-2 of the
    # logit range allows for that and is still 10x below the trained adapter's effect (checked).
    expected = _merged_logits(trained[1], tmp_path / "m", PROMPT_IDS, round_to=torch.float16)
    got = _gguf_logits(trained_f16, PROMPT_IDS)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() < 1e-2 * scale
    assert (got.argmax(-1) == expected.argmax(-1)).all()


@needs_llama
def test_greedy_reply_equals_finetune_chat_and_stops_at_eot(trained: Any, trained_f16: Path) -> None:
    llm = _llama(trained_f16)
    try:
        for prompt, reply in PAIRS:
            expected = _chat_reply(trained[1], prompt)
            assert expected == reply  # the run learnt it, so both engines are asked something with an answer
            answer = llm.create_chat_completion([{"role": "user", "content": prompt}], temperature=0, max_tokens=24)
            assert answer["choices"][0]["message"]["content"].strip() == expected
            assert answer["choices"][0]["finish_reason"] == "stop"
        # Token by token: the reply ends with <|eot_id|>, which llama.cpp treats as the end of generation.
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(trained[1].output_dir)
        text = tokenizer.apply_chat_template([{"role": "user", "content": PAIRS[1][0]}], tokenize=False,
                                             add_generation_prompt=True)
        tokens: list[int] = []
        for token in llm.generate(tokenizer(text, add_special_tokens=False).input_ids, top_k=1, temp=0):
            tokens.append(token)
            if len(tokens) == 30 or token == EOT:
                break
        assert tokens[-1] == EOT and tokenizer.decode(tokens[:-1]).strip() == PAIRS[1][1]
        assert llm.token_eos() == EOT
    finally:
        llm.close()


FILE_TYPES = {"bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0", "q4_k_m": "MOSTLY_Q4_K_M",
              "q5_k_m": "MOSTLY_Q5_K_M", "q6_k": "MOSTLY_Q6_K"}


@needs_llama
@pytest.mark.parametrize("quant", [quant if quant in ("q8_0", "q4_k_m") else pytest.param(quant, marks=pytest.mark.slow)
                                   for quant in FILE_TYPES])
def test_quantized_files_load_and_answer(quant: str, trained: Any, trained_f16: Path) -> None:
    path = export_gguf(trained[1], quant)
    assert path.name == f"out-{quant}.gguf"
    assert path.stat().st_size < (1.01 if quant == "bf16" else 0.7) * trained_f16.stat().st_size
    assert not [p.name for p in path.parent.iterdir() if ".tmp" in p.name]
    reader = gguf.GGUFReader(str(path))
    file_type = reader.fields["general.file_type"]
    assert int(file_type.parts[file_type.data[0]][0]) == gguf.LlamaFileType[FILE_TYPES[quant]]
    llm = _llama(path)
    try:
        answer = llm.create_chat_completion([{"role": "user", "content": PAIRS[0][0]}], temperature=0, max_tokens=24)
        content = answer["choices"][0]["message"]["content"].strip()
        assert content and answer["choices"][0]["finish_reason"] == "stop"
        if quant in ("bf16", "q8_0"):
            assert content == PAIRS[0][1]  # 16- and 8-bit weights keep the learnt reply
    finally:
        llm.close()


@needs_llama
@pytest.mark.slow  # two exports per size and llama.cpp's quantizer: about a minute each on 2 cores
@pytest.mark.parametrize("hidden, output_type", [(64, "Q8_0"), (256, "Q6_K")])
def test_q4_0_stores_each_tensor_in_llama_cpps_own_q4_0_type(hidden: int, output_type: str, tmp_path: Path) -> None:
    """llama.cpp's quantizer keeps the output embedding at Q6_K in a Q4_0 file (Q8_0 when its rows do not fill
    Q6_K's 256-value blocks): our Python q4_0 must store every tensor in the type llama.cpp's own q4_0 of the
    f16 file has, and our Q6_K must be as close to the weights as llama.cpp's."""
    import llama_cpp
    from gguf import quants

    from finetune.testing.tiny_llama import build_tiny_llama

    settings = _full_run(build_tiny_llama(tmp_path / "base", hidden_size=hidden, layers=1), tmp_path / "full")
    ours, f16 = export_gguf(settings, "q4_0"), export_gguf(settings, "f16")
    theirs = tmp_path / "theirs-q4_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    assert llama_cpp.llama_model_quantize(str(f16).encode(), str(theirs).encode(), params) == 0
    tensors = {name: {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
               for name, path in (("ours", ours), ("theirs", theirs), ("f16", f16))}
    assert {k: t.tensor_type.name for k, t in tensors["ours"].items()} == \
        {k: t.tensor_type.name for k, t in tensors["theirs"].items()}
    assert tensors["ours"]["output.weight"].tensor_type.name == output_type
    assert tensors["ours"]["blk.0.attn_q.weight"].tensor_type.name == "Q4_0"

    def error(which: str) -> float:
        tensor = tensors[which]["output.weight"]
        values = quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
        reference = np.asarray(tensors["f16"]["output.weight"].data, dtype=np.float32)
        return float(np.sqrt(((values.reshape(reference.shape) - reference) ** 2).mean()))

    assert error("ours") <= 1.1 * error("theirs")
    llm = _llama(ours)
    try:
        assert llm.create_completion("Hello", max_tokens=4, temperature=0)["choices"][0]["text"] is not None
    finally:
        llm.close()


# --- what the file says, read back with gguf's own reader --------------------------------------------------


def _field(reader: Any, key: str) -> Any:
    field = reader.fields[key]
    if len(field.types) > 1 or field.types[0] == gguf.GGUFValueType.ARRAY:
        return field
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types[0] == gguf.GGUFValueType.STRING else value[0].item()


def test_metadata_and_modelfile(make_adapter_run: Any, tiny_llama_dir: Path, tmp_path: Path) -> None:
    from finetune.data.templates import LLAMA3_JINJA

    run, settings = make_adapter_run(base_dir=_llama31_base(tiny_llama_dir, tmp_path / "base"))
    path = export_gguf(settings, "q8_0")
    reader = gguf.GGUFReader(str(path))
    expected = {"general.architecture": "llama", "llama.context_length": 131072, "llama.embedding_length": 64,
                "llama.block_count": 2, "llama.feed_forward_length": 128, "llama.attention.head_count": 4,
                "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 16, "llama.rope.freq_base": 500000.0,
                "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.bos_token_id": BOS,
                "tokenizer.ggml.eos_token_id": EOT, "tokenizer.ggml.eot_token_id": EOT,
                "tokenizer.ggml.padding_token_id": PAD, "tokenizer.ggml.add_bos_token": True,
                "tokenizer.chat_template": LLAMA3_JINJA}
    assert {key: _field(reader, key) for key in expected} == expected
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    types = _field(reader, "tokenizer.ggml.token_type")
    assert types.parts[types.data[EOT]][0] == gguf.TokenType.CONTROL and types.parts[types.data[0]][0] == 1
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    # rope_freqs: transformers' default inverse frequencies over its Llama 3.1 ones, exactly llama.cpp's divisors.
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = AutoConfig.from_pretrained(settings.base_model)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    default = 1.0 / (500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
    assert np.allclose(np.asarray(tensors["rope_freqs.weight"].data), (default / scaled).numpy(), rtol=1e-5)
    assert len(set(llama3_rope_factors(json.loads((Path(settings.base_model) / "config.json").read_text())))) > 2

    modelfile = (path.parent / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{path.name}\nTEMPLATE \"\"\"")
    assert '\nPARAMETER stop "<|eot_id|>"' in modelfile
    assert "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>" in modelfile


# --- bad input: exit 2, a clear message, nothing partial left ------------------------------------------


def _gguf_dir_entries(settings: Any) -> list[str]:
    directory = Path(settings.output_dir) / "gguf"
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def test_bad_inputs_exit_2_and_leave_nothing(make_adapter_run: Any, tmp_path: Path, tiny_llama_dir: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    import shutil

    run, settings = make_adapter_run()
    recipe = str(run / "recipe.yml")
    assert main(["export", recipe, "--gguf", "q3_x"]) == 2
    assert "unknown quant type; expected one of f32, f16, bf16, q8_0, q4_0, q4_k_m" in capsys.readouterr().err
    assert main(["export", recipe, "--gguf", "f16", "--adapter", str(tmp_path / "nothing")]) == 2
    assert "run `finetune train` first" in capsys.readouterr().err

    other = tmp_path / "qwen"
    shutil.copytree(tiny_llama_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "qwen2",
                                                   "architectures": ["Qwen2ForCausalLM"]}))
    assert main(["export", recipe, "--gguf", "f16", "--set", f"base_model={other}"]) == 2
    assert "['Qwen2ForCausalLM'] cannot be exported to GGUF" in capsys.readouterr().err
    assert _gguf_dir_entries(settings) == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to simulate a full disk")
def test_full_disk_and_interrupt_leave_no_partial_file(make_adapter_run: Any) -> None:
    run, settings = make_adapter_run()
    out = Path(settings.output_dir) / "gguf"
    out.mkdir()
    (out / f".{run.name}-f16.gguf.tmp-{os.getpid()}").symlink_to("/dev/full")  # every write: ENOSPC
    with pytest.raises(ExportError, match="no space left on the disk") as error:
        export_gguf(settings, "f16")
    assert error.value.exit_code == 2
    assert _gguf_dir_entries(settings) == []

    def interrupt(done: int, total: int) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_gguf(settings, "q8_0", on_tensor=interrupt)
    assert _gguf_dir_entries(settings) == []
    assert export_gguf(settings, "q8_0").is_file()  # and then it works


def test_k_quants_without_llama_cpp_name_the_extra(make_adapter_run: Any) -> None:
    run, _ = make_adapter_run()
    # A fresh interpreter where `import llama_cpp` fails, as on a machine without the extra.
    code = ("import sys; sys.modules['llama_cpp'] = None; from finetune.cli import main; "
            f"sys.exit(main(['export', {str(run / 'recipe.yml')!r}, '--gguf', 'q4_k_m']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 1
    assert "pip install 'finetune[gguf]'" in result.stderr and "llama-cpp-python" in result.stderr
    assert not (run / "gguf").exists() or not any((run / "gguf").iterdir())


def test_damaged_full_run_is_an_error_naming_the_file(tiny_llama_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    settings = _full_run(tiny_llama_dir, tmp_path / "full")
    out = Path(settings.output_dir)
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # a copy cut short
    assert main(["export", str(out / "recipe.yml"), "--gguf", "f16"]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "damaged" in err and "Traceback" not in err
    weights.write_bytes(data)
    (out / "config.json").write_text('{"model_type": "llama", ')  # cut short mid-object
    assert main(["export", str(out / "recipe.yml"), "--gguf", "f16"]) == 2
    err = capsys.readouterr().err
    assert str(out / "config.json") in err and "damaged" in err
    assert _gguf_dir_entries(settings) == []
