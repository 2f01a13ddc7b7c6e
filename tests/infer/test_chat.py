"""`finetune chat`: the saved template, the trained stop token, history, and the file and prompt modes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from finetune.infer.chat import (  # noqa: E402
    answer,
    chat_main,
    format_prompt,
    interactive,
    load_chat_model,
    read_prompt_file,
)
from finetune.errors import DataError, FinetuneError, RecipeError  # noqa: E402
from finetune.infer.generate import GenerationSettings  # noqa: E402
from finetune.runs.read import stop_token_ids  # noqa: E402

EOT, END_OF_TEXT, PAD = 128009, 128001, 128004
QUESTION = "How many legs has a spider?"


@pytest.fixture(scope="module")
def run(make_adapter_run: Any) -> tuple[Path, Any]:
    return make_adapter_run(dora=True, seed=1)


@pytest.fixture(scope="module")
def chat(run: tuple[Path, Any]) -> Any:
    return load_chat_model(run[1])


def _peft_model(run_dir: Path, base_dir: Path) -> Any:
    """Base + adapter loaded independently of finetune.infer.chat."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, run_dir).eval()


def test_prompt_prints_the_greedy_answer_of_base_plus_adapter(run: tuple[Path, Any], tiny_llama_dir: Path) -> None:
    from transformers import AutoTokenizer

    run_dir, settings = run
    out = io.StringIO()
    assert chat_main(settings, prompt=QUESTION, temperature=0, max_new_tokens=12, stdout=out) == 0

    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    text = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + QUESTION
                    + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    assert ids[0, 0].item() == 128000 and (ids == 128000).sum() == 1  # one BOS: the template's
    with torch.no_grad():
        generated = _peft_model(run_dir, tiny_llama_dir).generate(
            ids, max_new_tokens=12, do_sample=False, eos_token_id=[EOT, END_OF_TEXT], pad_token_id=PAD)
    expected = tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert expected
    assert out.getvalue().strip() == expected


def test_stop_ids_are_the_trained_end_of_turn_first(chat: Any) -> None:
    assert chat.tokenizer.eos_token == "<|eot_id|>"
    assert chat.stop_ids[0] == EOT and END_OF_TEXT in chat.stop_ids
    # A tokenizer whose eos was never changed still stops at the template's end-of-turn marker.
    from transformers import AutoTokenizer

    from finetune.data.templates import LLAMA3_JINJA

    plain = AutoTokenizer.from_pretrained(chat.tokenizer.name_or_path)
    plain.eos_token = "<|end_of_text|>"
    plain.chat_template = LLAMA3_JINJA
    assert stop_token_ids(plain) == [END_OF_TEXT, EOT]


def test_generation_stops_at_end_of_turn(make_adapter_run: Any) -> None:
    # Make <|eot_id|> the adapter's strongest prediction: its lm_head row becomes 100x the row of the token
    # greedy decoding picks first. The answer must then end at once, not run to max_new_tokens.
    from safetensors.torch import load_file, save_file

    run_dir, settings = make_adapter_run(new_tokens=("<|tool_call|>",), seed=2)
    chat = load_chat_model(settings)
    messages = [{"role": "user", "content": QUESTION}]
    free = answer(chat, messages, GenerationSettings(temperature=0, max_new_tokens=6))
    assert free  # before the edit the model talks
    first = chat.tokenizer(free, add_special_tokens=False).input_ids[0]
    tensors = load_file(run_dir / "adapter_model.safetensors")
    for key in ("base_model.model.lm_head.modules_to_save.weight", "base_model.model.lm_head.weight"):
        tensors[key][EOT] = 100 * tensors[key][first]
    save_file(tensors, run_dir / "adapter_model.safetensors")

    chat = load_chat_model(settings)
    text = format_prompt(chat.tokenizer, messages)
    ids = chat.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    from finetune.infer.chat import chat_generation_config

    with torch.no_grad():
        out = chat.model.generate(ids, generation_config=chat_generation_config(chat, GenerationSettings(temperature=0,
                                                                                           max_new_tokens=6)))
    assert out[0, ids.shape[1]:].tolist() == [EOT]
    assert answer(chat, messages, GenerationSettings(temperature=0, max_new_tokens=6)) == ""


def test_generation_stops_at_a_text_end_of_turn_and_never_shows_it(chat: Any) -> None:
    """chatml's `<|im_end|>` on a Llama 3 tokenizer is text (several tokens): no stop id sees it. Here the stop
    string is a piece of the model's own greedy reply, so where it would stop is known."""
    import dataclasses

    messages = [{"role": "user", "content": QUESTION}]
    greedy = GenerationSettings(temperature=0, max_new_tokens=24)
    free_chat = dataclasses.replace(chat, stop_strings=[])
    free = answer(free_chat, messages, greedy)
    assert free_chat.last_new_tokens == 24  # the tiny model never ends by itself
    start = next(k for k in range(len(free) // 3, len(free) - 4) if free.find(free[k:k + 4]) == k
                 and free[k:k + 4].strip() == free[k:k + 4])
    stop = free[start:start + 4]
    stopping = dataclasses.replace(chat, stop_strings=[stop, "<|never|>"])
    streamed = io.StringIO()
    reply = answer(stopping, messages, greedy, stream=streamed)
    assert reply == free[:start].strip()
    assert stopping.last_new_tokens < 24  # generation stopped there, it was not only cut afterwards
    assert stop not in streamed.getvalue() and streamed.getvalue().strip() == reply


def test_a_chatml_run_on_a_llama3_tokenizer_stops_on_im_end(chat: Any) -> None:
    import copy

    from finetune.data.templates import CHATML_JINJA
    from finetune.runs.read import stop_strings

    tokenizer = copy.deepcopy(chat.tokenizer)
    tokenizer.chat_template = CHATML_JINJA
    assert len(tokenizer("<|im_end|>", add_special_tokens=False).input_ids) > 1  # text, not a token
    assert stop_strings(tokenizer) == ["<|im_end|>", "<|eot_id|>"]
    assert stop_strings(chat.tokenizer) == ["<|eot_id|>"]


def test_file_writes_one_jsonl_answer_per_prompt(run: tuple[Path, Any], tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": QUESTION, "id": 1},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
            {"prompt": "Name a colour."}]
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    output = tmp_path / "answers.jsonl"
    assert chat_main(run[1], file=prompts, output=output, temperature=0, max_new_tokens=4) == 0
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(lines) == 3
    for row, line in zip(rows, lines):
        assert {k: line[k] for k in row} == row
        assert isinstance(line["answer"], str)
    stdout = io.StringIO()
    chat_main(run[1], file=prompts, temperature=0, max_new_tokens=4, stdout=stdout)
    assert [json.loads(line) for line in stdout.getvalue().splitlines()] == lines  # greedy: same answers


def test_bad_prompt_file_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"question": "no"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: expected"):
        read_prompt_file(bad)
    bad.write_text('{"prompt": "ok"}\n{oops\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: not valid JSON"):
        read_prompt_file(bad)


def test_history_carries_the_first_exchange_into_the_second_prompt(chat: Any) -> None:
    prompts: list[str | None] = []
    script = iter(["Hello there", "And again?", "/reset", "Fresh start", "/exit"])

    def read(_: str) -> str:
        prompts.append(chat.last_prompt)  # the prompt of the turn just answered
        return next(script)

    out = io.StringIO()
    assert interactive(chat, GenerationSettings(temperature=0, max_new_tokens=4), system="Be kind.", read=read, out=out) == 0
    _, first, second, _, third = prompts
    assert first.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|>")
    assert "Hello there" in first and "And again?" not in first
    # The second prompt replays the first exchange, the model's answer included, then the new question.
    assert second.startswith(first)
    assert second.index("Hello there") < second.index("<|start_header_id|>assistant") < second.index("And again?")
    assert second.count("<|start_header_id|>assistant<|end_header_id|>") == 2
    # /reset forgot it all but the system prompt.
    assert "Hello there" not in third and "Fresh start" in third and "Be kind." in third
    assert "conversation cleared" in out.getvalue()


def test_base_only_ignores_the_adapter(run: tuple[Path, Any], chat: Any, tiny_llama_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    base_chat = load_chat_model(run[1], base_only=True)
    assert base_chat.tokenizer.chat_template == chat.tokenizer.chat_template  # the same saved template
    ids = torch.tensor([[128000, 128006, 882, 128007, 271, 4438, 1690, 14535]])
    with torch.no_grad():
        with_adapter = chat.model(ids).logits
        base_only = base_chat.model(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)(ids).logits
    assert (with_adapter - base_only).abs().max() > 0.05
    assert torch.allclose(base_only, base, atol=1e-5)


def test_missing_adapter_and_missing_base(run: tuple[Path, Any], tmp_path: Path) -> None:
    from finetune.config import load_recipe

    _, settings = run
    with pytest.raises(FinetuneError, match=r"run `finetune train` first or pass --adapter"):
        load_chat_model(settings, adapter_dir=tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FinetuneError, match=r"adapter_config.json is missing.*finetune train"):
        chat_main(settings, adapter_dir=tmp_path / "empty", prompt="hi")

    recipe = tmp_path / "recipe.yml"
    lines = (run[0] / "recipe.yml").read_text().splitlines()
    assert lines[0].startswith("base_model:")
    recipe.write_text("\n".join([f"base_model: {tmp_path / 'gone'}"] + lines[1:]) + "\n")
    with pytest.raises(RecipeError, match=rf"{recipe}:1: base_model .*no such directory"):
        load_chat_model(load_recipe(recipe).settings)


def test_sampling_arguments_are_checked(run: tuple[Path, Any]) -> None:
    with pytest.raises(FinetuneError, match="--top-p"):
        chat_main(run[1], prompt="x", top_p=0)
    with pytest.raises(FinetuneError, match="exclusive"):
        chat_main(run[1], prompt="x", file="y.jsonl")


def test_seeded_sampling_is_reproducible(run: tuple[Path, Any]) -> None:
    outs = []
    for _ in range(2):
        out = io.StringIO()
        chat_main(run[1], prompt=QUESTION, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=7, stdout=out)
        outs.append(out.getvalue())
    assert outs[0] == outs[1] and outs[0].strip()


def test_qlora_run_loads_4bit_and_answers(make_adapter_run: Any) -> None:
    _, settings = make_adapter_run(dora=True, qlora=True, seed=4)
    chat = load_chat_model(settings)
    kinds = {type(m).__name__ for m in chat.model.modules()}
    assert "Linear4bit" in kinds  # quantized as trained, with the adapter on top
    assert chat.model.peft_config["default"].use_dora
    out = io.StringIO()
    assert chat_main(settings, prompt=QUESTION, temperature=0, max_new_tokens=5, stdout=out) == 0
    assert out.getvalue().strip()
