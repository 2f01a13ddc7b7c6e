"""Preference pairs: recipe keys and contradictions, the pair formats, tokenizing, filters, cache and --show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.data.build import prepare_data
from finetune.errors import DataError, RecipeError

EOT = "<|eot_id|>"


def write_rows(tmp_path: Path, rows: list, name: str = "pairs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def pair_row(index: int) -> dict:
    return {"messages": [{"role": "user", "content": f"question {index}?"}],
            "chosen": {"role": "assistant", "content": f"good answer {index}"},
            "rejected": {"role": "assistant", "content": f"bad answer {index}"}}


def recipe(data_settings, path: Path, dataset_type: str = "chat_template.default", **top):
    return data_settings([{"path": path, "type": dataset_type}], rl="dpo", **top)


def prepare(settings, tokenizer, **kwargs):
    return prepare_data(settings, tokenizer, progress=False, **kwargs)


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False)


# --- recipe ---------------------------------------------------------------------------------------


def _load(text: str):
    from finetune.config import load_recipe_text

    return load_recipe_text(text, file="r.yml")


BASE = "base_model: m\ndatasets:\n  - path: p.jsonl\n    type: chat_template.default\n"


def test_a_dpo_recipe_validates_and_says_which_model_is_the_reference():
    from finetune.config.describe import derived_values

    settings = _load(BASE + "rl: dpo\nrl_beta: 0.2\nadapter: lora\nlora_target_linear: true\n").settings
    assert settings.loss_type == "sigmoid" and settings.precompute_ref_log_probs is True
    rows = dict(derived_values(settings, 1))
    assert "m with the adapter disabled" in rows["reference model"]
    assert "beta 0.2" in rows["preference tuning"]
    continued = _load(BASE + "rl: ipo\nadapter: lora\nlora_target_linear: true\nlora_model_dir: sft-out\n").settings
    assert continued.loss_type == "ipo"
    assert "m + the adapter in sft-out" in dict(derived_values(continued, 1))["reference model"]


@pytest.mark.parametrize("text, where, message", [
    ("rl: dpo\nsample_packing: true\n", "r.yml:6", "sample_packing does not apply to rl: dpo"),
    ("rl: dpo\ntrain_on_inputs: true\n", "r.yml:6", "scores only the replies"),
    ("rl_beta: 0.3\n", "r.yml:5", "rl_beta is used only with rl"),
    ("rl: ipo\ndpo_loss_type: hinge\n", "r.yml:6", "rl: ipo is the ipo loss"),
    ("rl: dpo\ndpo_loss_type: exo_pair\n", "r.yml:1", "exo_pair needs dpo_label_smoothing"),
    ("rl: dpo\nrl_adapter_ref_model: true\n", "r.yml:6", "never loads a second model"),
    ("rl: dpo\nprecompute_ref_log_probs: false\n", "r.yml:6", "keeps no reference model"),
    ("rl: dpo\nchat_template: chatml\ndatasets:\n  - path: p.jsonl\n    type: llama3.intel\n", "r.yml:6",
     "names the llama3 template but chat_template is chatml"),
])
def test_contradictions_are_located_errors(text, where, message):
    base = "base_model: m\n" + ("" if "datasets:" in text else "datasets:\n  - path: p.jsonl\n    type: chat_template.default\n")
    with pytest.raises(RecipeError) as info:
        _load(base + text)
    assert message in str(info.value)
    line = next(line for line in str(info.value).splitlines() if message in line)
    assert line.startswith(where + ":") or where == "r.yml:1", line  # an unset key: the file's top


def test_rl_without_pairs_and_pairs_without_rl_point_at_the_lines():
    with pytest.raises(RecipeError, match=r"r.yml:4: rl: dpo needs a preference dataset"):
        _load("base_model: m\ndatasets:\n  - path: p.jsonl\nrl: dpo\n")
    with pytest.raises(RecipeError, match=r"r.yml:4: type: chat_template.default is preference data; set `rl: dpo`"):
        _load(BASE)
    with pytest.raises(RecipeError, match=r"r.yml:6: type: chat_template is SFT data"):
        _load(BASE + "  - path: q.jsonl\n    type: chat_template\nrl: dpo\n")


# --- formats --------------------------------------------------------------------------------------


def test_the_four_formats_give_the_same_pair(data_settings, tmp_path, llama3_tokenizer):
    system = {"role": "system", "content": "Be brief."}
    user = {"role": "user", "content": "Tea or coffee?"}
    good, bad = "Tea, always.", "I cannot say."
    layouts = {
        "chat_template.default": [{"messages": [system, user], "chosen": good, "rejected": [
            {"role": "assistant", "content": bad}]}],
        "chat_template.argilla_chat": [{"chosen": [system, user, {"role": "assistant", "content": good}],
                                        "rejected": [system, user, {"role": "assistant", "content": bad}]}],
        "llama3.intel": [{"system": "Be brief.", "question": "Tea or coffee?", "chosen": good, "rejected": bad}],
    }
    prepared = []
    for index, (dataset_type, rows) in enumerate(layouts.items()):
        path = write_rows(tmp_path, rows, f"{index}.jsonl")
        prepared.append(prepare(recipe(data_settings, path, dataset_type), llama3_tokenizer).train[0])
    assert prepared[0] == prepared[1] == prepared[2]
    row = prepared[0]
    assert decode(llama3_tokenizer, row["chosen_ids"]) == good + EOT  # only the reply and its end of turn scored
    assert decode(llama3_tokenizer, row["rejected_ids"]) == bad + EOT
    prompt = decode(llama3_tokenizer, row["prompt_ids"])
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system") and prompt.endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_chatml_intel_with_the_trl_prompt_column(data_settings, tmp_path, llama3_tokenizer):
    path = write_rows(tmp_path, [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}])
    row = prepare(recipe(data_settings, path, "chatml.intel", chat_template="chatml"), llama3_tokenizer).train[0]
    assert decode(llama3_tokenizer, row["prompt_ids"]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    # The Llama 3 vocabulary has no <|im_end|> token: its last piece `>\n` starts inside the end-of-turn marker,
    # so it is scored (the labelling rule of finetune.data.tokenize); nothing after it is.
    assert decode(llama3_tokenizer, row["chosen_ids"]) == "Hello!<|im_end|>\n"


@pytest.mark.parametrize("row, message", [
    ({"messages": [{"role": "user", "content": "q"}], "chosen": "a"}, r"pairs.jsonl:2: missing `rejected`"),
    ({"messages": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": 5}, r"pairs.jsonl:2: `rejected`: expected a string"),
    ({"messages": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": {"role": "assistant", "content": 3}},
     r"pairs.jsonl:2: `rejected.content`: expected a string"),
    ({"messages": [{"role": "user", "content": "q"}], "chosen": "  ", "rejected": "b"}, r"pairs.jsonl:2: `chosen`: the reply is empty"),
    ({"chosen": "a", "rejected": "b"}, r"pairs.jsonl:2: missing the prompt turns `messages`"),
])
def test_bad_pairs_name_file_and_line(data_settings, tmp_path, llama3_tokenizer, row, message):
    path = write_rows(tmp_path, [pair_row(0), row])
    with pytest.raises(DataError, match=message):
        prepare(recipe(data_settings, path), llama3_tokenizer)


def test_argilla_sides_must_share_the_prompt(data_settings, tmp_path, llama3_tokenizer):
    row = {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
           "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]}
    with pytest.raises(DataError, match=r"pairs.jsonl:1: .*differ before their last message"):
        prepare(recipe(data_settings, write_rows(tmp_path, [row]), "chat_template.argilla_chat"), llama3_tokenizer)


# --- filters, split, cache, show --------------------------------------------------------------------------


def test_identical_pairs_are_dropped_and_counted(data_settings, tmp_path, llama3_tokenizer):
    same = {"messages": [{"role": "user", "content": "q"}], "chosen": "same", "rejected": "same"}
    result = prepare(recipe(data_settings, write_rows(tmp_path, [pair_row(0), same, pair_row(1), same])),
                     llama3_tokenizer)
    assert result.summary.dropped["identical chosen and rejected"] == 2
    assert result.summary.train_samples == len(result.train) == 2
    assert set(result.train.column_names) == {"prompt_ids", "chosen_ids", "rejected_ids"}


def test_excess_length_drop_truncate_raise(data_settings, tmp_path, llama3_tokenizer):
    long = {"messages": [{"role": "user", "content": "q"}], "chosen": "word " * 80, "rejected": "no " * 80}
    path = write_rows(tmp_path, [pair_row(0), long])
    dropped = prepare(recipe(data_settings, path, sequence_len=48), llama3_tokenizer)
    assert dropped.summary.dropped["longer than 48 tokens"] == 1 and len(dropped.train) == 1
    cut = prepare(recipe(data_settings, path, sequence_len=48, excess_length_strategy="truncate"), llama3_tokenizer)
    assert cut.summary.truncated == 1 and len(cut.train) == 2
    assert max(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in cut.train) == 48
    with pytest.raises(DataError, match=r"pairs.jsonl:2: this pair is .* longer than sequence_len 48"):
        prepare(recipe(data_settings, path, sequence_len=48, excess_length_strategy="raise"), llama3_tokenizer)


def test_validation_split_dedup_and_cache_hit(data_settings, tmp_path, llama3_tokenizer):
    path = write_rows(tmp_path, [pair_row(i) for i in range(10)] + [pair_row(3)])
    settings = recipe(data_settings, path, val_set_size=3, dedup=True)
    first = prepare(settings, llama3_tokenizer)
    assert first.summary.dropped["duplicate"] == 1
    assert (len(first.train), len(first.eval)) == (7, 3) and not first.from_cache
    again = prepare(settings, llama3_tokenizer)
    assert again.from_cache and again.train[:] == first.train[:] and again.eval[:] == first.eval[:]
    other_beta = recipe(data_settings, path, val_set_size=3, dedup=True, rl_beta=0.5)
    assert prepare(other_beta, llama3_tokenizer).path == first.path  # rl_beta does not touch the data


def test_preprocess_show_prints_pairs(data_settings, tmp_path, llama3_tokenizer):
    from finetune.data.show import render_pairs

    result = prepare(recipe(data_settings, write_rows(tmp_path, [pair_row(0)])), llama3_tokenizer)
    text = render_pairs(result.train, llama3_tokenizer, 1, color=False)
    assert "── chosen" in text and "good answer 0<|eot_id|>" in text and "bad answer 0<|eot_id|>" in text
    assert "⟦<|begin_of_text|><|start_header_id|>user" in text
