"""Readers: every local format, origins (file:line / file:record N), and clear errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.data.readers import read_dataset
from finetune.errors import DataError, RecipeError

ROWS = [{"text": "one"}, {"text": "two", "n": 2}, {"text": "three"}]


def dataset(data_settings, path: Path, **extra):
    return data_settings([{"path": path, "type": "completion", **extra}]).datasets[0]


def test_jsonl_rows_and_line_origins_skip_blank_lines(data_settings, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two", "n": 2}\r\n   \n{"text": "three"}', encoding="utf-8")
    table = read_dataset(dataset(data_settings, path))
    assert table.rows == ROWS
    assert [table.origins[i] for i in range(3)] == [f"{path}:1", f"{path}:3", f"{path}:5"]


def test_json_array_keeps_the_line_of_each_record(data_settings, tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"text": "one"},\n  {"text": "two",\n   "n": 2},\n\n  {"text": "three"}\n]\n', encoding="utf-8")
    table = read_dataset(dataset(data_settings, path))
    assert table.rows == ROWS
    assert [table.origins[i] for i in range(3)] == [f"{path}:2", f"{path}:3", f"{path}:6"]


def test_json_file_holding_json_lines_is_accepted(data_settings, tmp_path):
    path = tmp_path / "d.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    table = read_dataset(dataset(data_settings, path))
    assert table.rows == ROWS and table.origins[2] == f"{path}:3"


def test_parquet_rows_and_record_origins(data_settings, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": r["text"]} for r in ROWS]), path)
    table = read_dataset(dataset(data_settings, path))
    assert [r["text"] for r in table.rows] == ["one", "two", "three"]
    assert table.origins[1] == f"{path}:record 2"


def test_csv_multiline_field_origin_is_the_start_line(data_settings, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,n\none,1\n"two\nlines",2\nthree,3\n', encoding="utf-8")
    table = read_dataset(dataset(data_settings, path))
    assert table.rows == [{"text": "one", "n": "1"}, {"text": "two\nlines", "n": "2"}, {"text": "three", "n": "3"}]
    assert [table.origins[i] for i in range(3)] == [f"{path}:2", f"{path}:3", f"{path}:5"]


def test_saved_dataset_and_dataset_dict_split(data_settings, tmp_path):
    import datasets

    single = tmp_path / "single"
    datasets.Dataset.from_list(ROWS[:2]).save_to_disk(str(single))
    table = read_dataset(dataset(data_settings, single))
    assert [r["text"] for r in table.rows] == ["one", "two"] and table.origins[0] == f"{single}:record 1"

    multi = tmp_path / "multi"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list([{"text": "a"}]), "test": datasets.Dataset.from_list([{"text": "b"}])}
    ).save_to_disk(str(multi))
    assert read_dataset(dataset(data_settings, multi, split="test")).rows == [{"text": "b"}]
    with pytest.raises(RecipeError, match=r"recipe\.yml:\d+: .*no split `validation`; it has: train, test"):
        read_dataset(dataset(data_settings, multi, split="validation"))


def test_ds_type_overrides_the_extension(data_settings, tmp_path):
    path = tmp_path / "d.txt"
    path.write_text('{"text": "one"}\n', encoding="utf-8")
    with pytest.raises(RecipeError, match=r"recipe\.yml:\d+: cannot tell the format .*set `ds_type:`"):
        read_dataset(dataset(data_settings, path))
    assert read_dataset(dataset(data_settings, path, ds_type="jsonl")).rows == [{"text": "one"}]


def test_missing_file_names_the_recipe_line(data_settings, tmp_path):
    settings = data_settings([{"path": tmp_path / "nope.jsonl", "type": "completion"}])
    with pytest.raises(RecipeError, match=r"recipe\.yml:\d+: dataset path .*nope\.jsonl` does not exist"):
        read_dataset(settings.datasets[0])


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("bad.jsonl", '{"text": "a"}\n{"text": "b",}\n', r"bad\.jsonl:2: invalid JSON at column \d+"),
        ("bad.json", '[\n {"text": "a"},\n {"text": b}\n]', r"bad\.json:3: invalid JSON at column 11"),
        ("bad.json", '[\n {"text": "a"}\n {"text": "b"}\n]', r"bad\.json:3: .*expected `,` or `]`"),
        ("unclosed.json", '[{"text": "a"},\n', r"unclosed\.json:2: .*not closed"),
        ("empty.jsonl", "  \n\n", r"empty\.jsonl: the file is empty"),
        ("empty.json", "[]", r"empty\.json: the JSON array is empty"),
        ("rows.jsonl", '{"text": "a"}\n["not", "an object"]\n', r"rows\.jsonl:2: expected a JSON object per line, got an array"),
        ("rows.json", '[{"text": "a"},\n "just text"]', r"rows\.json:2: expected each array element to be a JSON object, got a string"),
        ("bad.csv", "text,n\na,1\nb,2,3\n", r"bad\.csv:3: expected 2 fields"),
        ("empty.csv", "", r"empty\.csv: the file is empty"),
    ],
)
def test_bad_files_raise_with_file_and_line(data_settings, tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=expected):
        read_dataset(dataset(data_settings, path))


def test_invalid_utf8_names_the_line(data_settings, tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"bytes\.jsonl:2: "):
        read_dataset(dataset(data_settings, path))
