"""Formats: chat (OpenAI / ShareGPT / custom roles), alpaca, completion, and errors naming the row."""

from __future__ import annotations

import json

import pytest

from finetune.data.formats import format_table
from finetune.data.readers import read_dataset
from finetune.errors import DataError


def formatted(data_settings, tmp_path, rows, **entry):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    dataset = data_settings([{"path": path, **entry}]).datasets[0]
    return format_table(read_dataset(dataset), dataset), path


def test_openai_style_messages_with_default_role_names(data_settings, tmp_path):
    rows = [{"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "human", "content": "Hi", "weight": 0},
        {"role": "gpt", "content": "Hello"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "model", "content": "ok"},
    ]}]
    samples, _ = formatted(data_settings, tmp_path, rows)
    assert samples == [[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "ok"},
    ]]


def test_sharegpt_with_property_mappings_and_custom_roles(data_settings, tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Q"}, {"from": "bot", "value": "A"}]}]
    samples, _ = formatted(
        data_settings, tmp_path, rows,
        field_messages="conversations",
        message_property_mappings={"role": "from", "content": "value"},
        roles={"user": ["human"], "assistant": ["bot"]},
    )
    assert samples == [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]]


def test_deprecated_message_field_spelling_reads_sharegpt(data_settings, tmp_path):
    rows = [{"messages": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]
    samples, _ = formatted(data_settings, tmp_path, rows, message_field_role="from", message_field_content="value")
    assert samples == [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]]


def test_alpaca_with_and_without_input_and_system(data_settings, tmp_path):
    rows = [
        {"instruction": "Add", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi", "input": "", "output": "hi", "system": "Be nice."},
        {"instruction": "Q", "output": "A"},
    ]
    samples, _ = formatted(data_settings, tmp_path, rows, type="alpaca")
    assert samples == [
        [{"role": "user", "content": "Add\n\n2 and 3"}, {"role": "assistant", "content": "5"}],
        [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
    ]


def test_completion_reads_the_text_field(data_settings, tmp_path):
    samples, _ = formatted(data_settings, tmp_path, [{"body": "x y"}, {"body": "z"}], type="completion", field="body")
    assert samples == ["x y", "z"]


@pytest.mark.parametrize(
    "rows, entry, expected",
    [
        ([{"conversations": []}], {}, r":1: missing the messages field `messages` .*set `field_messages: conversations`"),
        ([{"messages": "hi"}], {}, r":1: `messages`: expected a list of messages, got str"),
        ([{"messages": [{"role": "user", "content": "a"}]}, {"messages": ["hi"]}], {},
         r":2: messages\[0\]: expected a message object"),
        ([{"messages": [{"role": "narrator", "content": "a"}]}], {},
         r":1: messages\[0\]: unknown role `narrator` .*roles: \{user: \[narrator\]\}"),
        ([{"messages": [{"role": "user", "content": 3}]}], {}, r":1: messages\[0\]\.content: expected a string, got int"),
        ([{"messages": [{"role": "user", "content": None}]}], {}, r":1: messages\[0\]\.content: expected a string, got NoneType"),
        ([{"messages": [{"from": "human", "value": "a"}]}], {},
         r":1: messages\[0\]: message has no `role` key .*message_property_mappings: \{role: from, content: value\}"),
        ([{"instruction": "a"}], {"type": "alpaca"}, r":1: missing `output` .*set `field_output:`"),
        ([{"instruction": "a", "output": 5}], {"type": "alpaca"}, r":1: `output`: expected a string, got int"),
        ([{"text": "a"}, {"txt": "b"}], {"type": "completion"}, r":2: missing `text` .*set `field:`"),
    ],
)
def test_bad_rows_raise_with_origin_and_fix(data_settings, tmp_path, rows, entry, expected):
    with pytest.raises(DataError, match=r"rows\.jsonl" + expected):
        formatted(data_settings, tmp_path, rows, **entry)


def test_error_points_at_the_dataset_entry_of_the_recipe(data_settings, tmp_path):
    with pytest.raises(DataError, match=r"on the dataset at .*recipe\.yml:\d+"):
        formatted(data_settings, tmp_path, [{"messages": [{"role": "narrator", "content": "a"}]}])
