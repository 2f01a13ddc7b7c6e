"""prepare_data end to end: labels, dedup, split, length strategies, drops by reason, packing, show."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from finetune.data.build import prepare_data
from finetune.data.templates import resolve_template
from finetune.data.tokenize import encode_conversations
from finetune.errors import DataError, RecipeError


def prepare(settings, tokenizer, **kwargs):
    return prepare_data(settings, tokenizer, progress=False, **kwargs)


def samples_of(split) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input_ids, labels) of every sample in a split, unpacking packed rows by their `lengths`."""
    out = []
    for row in split:
        lengths = row.get("lengths") or [len(row["input_ids"])]
        start = 0
        for length in lengths:
            out.append((tuple(row["input_ids"][start : start + length]), tuple(row["labels"][start : start + length])))
            start += length
    return out


def test_labels_match_the_tokenizer_module_with_the_first_label_masked(make_conversation, data_settings, write_chats, llama3_tokenizer):
    result = prepare(data_settings([{"path": write_chats(12)}]), llama3_tokenizer)
    template = resolve_template("llama3", None, llama3_tokenizer)
    expected = set()
    for index in range(12):
        ids, labels = encode_conversations([make_conversation(index)["messages"]], template=template, tokenizer=llama3_tokenizer)[0]
        labels = labels.copy()
        labels[0] = -100
        expected.add((tuple(ids.tolist()), tuple(labels.tolist())))
    assert set(samples_of(result.train)) == expected
    summary = result.summary
    assert summary.train_samples == summary.train_rows == 12 and summary.eval_rows == 0 and result.eval is None
    assert summary.tokens == sum(len(ids) for ids, _ in expected)
    assert summary.trained_tokens == sum(sum(1 for t in labels if t != -100) for _, labels in expected)


def test_dedup_removes_exact_duplicates_and_counts_them(make_conversation, data_settings, write_chats, llama3_tokenizer):
    rows = [make_conversation(i) for i in range(10)] + [make_conversation(2), make_conversation(5), make_conversation(5)]
    path = write_chats(rows=rows)
    kept = prepare(data_settings([{"path": path}]), llama3_tokenizer).summary
    assert kept.train_samples == 13 and kept.dropped["duplicate"] == 0
    deduped = prepare(data_settings([{"path": path}], dedup=True), llama3_tokenizer).summary
    assert deduped.train_samples == 10 and deduped.dropped["duplicate"] == 3
    assert deduped.read == {str(path): 13}


@pytest.mark.parametrize("size, expected", [(0.1, 4), (0.25, 10), (3, 3)])
def test_validation_split_by_fraction_or_count_is_deterministic(data_settings, write_chats, llama3_tokenizer, size, expected):
    path = write_chats(40)
    first = prepare(data_settings([{"path": path}], val_set_size=size), llama3_tokenizer)
    assert first.summary.eval_samples == expected and first.summary.train_samples == 40 - expected
    again = prepare(data_settings([{"path": path}], val_set_size=size), llama3_tokenizer, force=True)
    assert samples_of(again.eval) == samples_of(first.eval) and samples_of(again.train) == samples_of(first.train)
    assert not set(samples_of(first.eval)) & set(samples_of(first.train))
    reseeded = prepare(data_settings([{"path": path}], val_set_size=size, seed=1), llama3_tokenizer)
    assert set(samples_of(reseeded.eval)) != set(samples_of(first.eval))


def test_validation_split_leaving_nothing_to_train_names_the_key(data_settings, write_chats, llama3_tokenizer):
    with pytest.raises(RecipeError, match=r"recipe\.yml:\d+: val_set_size 40 takes 40 of the 40"):
        prepare(data_settings([{"path": write_chats(40)}], val_set_size=40), llama3_tokenizer)


def long_rows(make_conversation):
    rows = [make_conversation(i) for i in range(6)]
    rows[3] = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 200}]}
    return rows


def test_excess_length_drop_counts(make_conversation, data_settings, write_chats, llama3_tokenizer):
    summary = prepare(data_settings([{"path": write_chats(rows=long_rows(make_conversation))}], sequence_len=128), llama3_tokenizer).summary
    assert summary.dropped["longer than 128 tokens"] == 1 and summary.train_samples == 5 and summary.truncated == 0


def test_excess_length_truncate_keeps_every_row_within_sequence_len(make_conversation, data_settings, write_chats, llama3_tokenizer):
    settings = data_settings([{"path": write_chats(rows=long_rows(make_conversation))}], sequence_len=128, excess_length_strategy="truncate")
    result = prepare(settings, llama3_tokenizer)
    assert result.summary.truncated == 1 and result.summary.train_samples == 6
    assert max(len(ids) for ids, _ in samples_of(result.train)) == 128


def test_excess_length_raise_names_the_row(make_conversation, data_settings, write_chats, llama3_tokenizer):
    path = write_chats(rows=long_rows(make_conversation))
    settings = data_settings([{"path": path}], sequence_len=128, excess_length_strategy="raise")
    with pytest.raises(DataError, match=rf"{path}:4: this sample is \d+ tokens, longer than sequence_len 128"):
        prepare(settings, llama3_tokenizer)


def test_rows_without_trainable_tokens_and_empty_rows_are_dropped_and_counted(make_conversation, data_settings, write_chats, llama3_tokenizer):
    rows = [make_conversation(i) for i in range(4)]
    rows += [{"messages": [{"role": "user", "content": "only a question"}]}, {"messages": []}]
    summary = prepare(data_settings([{"path": write_chats(rows=rows)}]), llama3_tokenizer).summary
    assert summary.dropped["no trainable tokens"] == 1 and summary.dropped["empty"] == 1
    assert summary.train_samples == 4


def test_several_datasets_of_different_types_are_mixed(data_settings, write_chats, tmp_path, llama3_tokenizer):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(5)]))
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"plain text {i}"}) + "\n" for i in range(3)))
    chats = write_chats(8)
    settings = data_settings([{"path": chats}, {"path": alpaca, "type": "alpaca"}, {"path": text, "type": "completion"}])
    result = prepare(settings, llama3_tokenizer)
    assert result.summary.read == {str(chats): 8, str(alpaca): 5, str(text): 3}
    assert result.summary.train_samples == 16
    first_ids = [row["input_ids"][:3] for row in result.train]
    assert len(set(map(tuple, first_ids))) > 1  # shuffled: not grouped by dataset order
    completion = [ids for ids, labels in samples_of(result.train) if llama3_tokenizer.decode(list(ids)).endswith("<|end_of_text|>")]
    assert len(completion) == 3


def test_packed_rows_hold_exactly_the_unpacked_samples(data_settings, write_chats, llama3_tokenizer):
    path = write_chats(60)
    plain = prepare(data_settings([{"path": path}], sequence_len=256, val_set_size=6), llama3_tokenizer)
    packed = prepare(
        data_settings([{"path": path}], sequence_len=256, val_set_size=6, sample_packing=True, eval_sample_packing=False),
        llama3_tokenizer,
    )
    assert Counter(samples_of(packed.train)) == Counter(samples_of(plain.train))
    assert Counter(samples_of(packed.eval)) == Counter(samples_of(plain.eval))
    assert "position_ids" in packed.train.column_names and "position_ids" not in packed.eval.column_names
    assert packed.summary.train_rows < plain.summary.train_rows
    assert all(len(row["input_ids"]) <= 256 for row in packed.train)
    for row in packed.train:
        positions = np.asarray(row["position_ids"])
        assert np.flatnonzero(positions == 0).size == len(row["lengths"])
    table = packed.summary.format_table()
    assert "packing efficiency @256" in table and "train rows" in table and str(path) in table


def test_progress_goes_to_stderr_and_can_be_silenced(data_settings, write_chats, llama3_tokenizer, capsys):
    settings = data_settings([{"path": write_chats(5)}])
    prepare_data(settings, llama3_tokenizer, progress=True)
    assert "tokenizing 5/5 conversations" in capsys.readouterr().err
    prepare_data(settings, llama3_tokenizer, progress=False, force=True)
    assert capsys.readouterr().err == ""


def test_show_marks_masked_tokens_and_sample_boundaries(data_settings, write_chats, llama3_tokenizer):
    from finetune.data.show import render_rows

    result = prepare(data_settings([{"path": write_chats(10)}], sample_packing=True), llama3_tokenizer)
    text = render_rows(result.train, llama3_tokenizer, 1, color=False)
    assert "⟦<|begin_of_text|><|start_header_id|>" in text
    assert "<|eot_id|>⟦<|start_header_id|>user" in text or "<|eot_id|>\n── sample" in text  # trained eot
    assert "── sample 2/" in text
    colored = render_rows(result.train, llama3_tokenizer, 1, color=True)
    assert "\033[32m" in colored and "⟦" not in colored


def test_pipeline_preprocess_prints_path_summary_and_samples(data_settings, write_chats, capsys):
    from finetune.train.preprocess import preprocess

    settings = data_settings([{"path": write_chats(10)}], special_tokens={"pad_token": "<|finetune_right_pad_id|>"})
    first = preprocess(settings, show=1, progress=False)
    out = capsys.readouterr().out
    assert f"prepared data built: {first.path}" in out and "train samples" in out and "legend:" in out
    second = preprocess(settings, progress=False)
    assert second.from_cache and "cache hit" in capsys.readouterr().out
