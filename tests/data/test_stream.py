"""The streaming build (finetune.data.stream) makes exactly the rows of the in-memory reference
(build.build_splits) on a corpus larger than one shard, whatever the shard size and worker count;
it really shards; the prepared splits come back memory-mapped; the streamed reader fails like the
whole-file one."""

from __future__ import annotations

import json

import pytest

from finetune.data.build import build_splits, prepare_data, recipe_template
from finetune.data.summary import Progress
from finetune.data.readers import read_dataset
from finetune.data.stream_readers import iter_dataset
from finetune.data.stream import tokenize_to_shards
from finetune.errors import DataError

from conftest import chat_conversation, near_copy

SHARD = 7  # samples per shard: every corpus below spans several


def corpus_files(tmp_path, write_chats):
    """Three datasets of different types with exact duplicates, near copies, filler, empty and over-long rows."""
    rows = [chat_conversation(i) for i in range(45)]
    rows += [chat_conversation(3), chat_conversation(8), near_copy(rows[10]), near_copy(rows[20], "too")]
    rows.insert(30, {"messages": []})
    rows.insert(12, {"messages": [{"role": "user", "content": "only a question"}]})
    rows.insert(5, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]})
    rows.insert(17, {"messages": [{"role": "user", "content": "long"}, {"role": "assistant", "content": "word " * 300}]})
    chats = write_chats(rows=rows)
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": f"Say {i}", "input": "", "output": f"{i} " * (i + 1)} for i in range(12)]))
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"plain text {i % 9}"}) + "\n" for i in range(14)))
    return [{"path": chats}, {"path": alpaca, "type": "alpaca"}, {"path": text, "type": "completion"}]


def in_memory_rows(settings, tokenizer):
    splits, summary = build_splits(settings, tokenizer, recipe_template(settings, tokenizer), Progress(False))
    rows = {
        name: {column: [ragged[i].tolist() for i in range(len(ragged))] for column, ragged in columns.items()}
        for name, columns in splits.items()
        if columns is not None
    }
    return rows, summary


def streamed_rows(settings, tokenizer):
    result = prepare_data(settings, tokenizer, progress=False, force=True)
    rows = {
        name: {column: split[column] for column in split.column_names}
        for name, split in (("train", result.train), ("eval", result.eval))
        if split is not None
    }
    return rows, result


VARIANTS = {
    "packed, exact dedup, eval split": dict(sample_packing=True, dedup=True, val_set_size=0.2),
    "unpacked, near dedup, eval count, filler": dict(dedup="near", val_set_size=5, min_assistant_chars=3),
    "packed eval, truncate, reseeded": dict(
        sample_packing=True, eval_sample_packing=True, val_set_size=0.1, excess_length_strategy="truncate", seed=3
    ),
    "no dedup, no eval, drop": dict(sequence_len=256),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("workers", [1, 2])
def test_streamed_rows_equal_the_in_memory_rows(variant, workers, tmp_path, write_chats, data_settings, llama3_tokenizer):
    keys = {"sequence_len": 128, **VARIANTS[variant]}
    settings = data_settings(corpus_files(tmp_path, write_chats), preprocess_shard_size=SHARD, preprocess_workers=workers, **keys)
    expected, expected_summary = in_memory_rows(settings, llama3_tokenizer)
    rows, result = streamed_rows(settings, llama3_tokenizer)
    assert rows == expected
    got = result.summary.to_dict()
    assert got.pop("tokenized_tokens") > 0
    want = expected_summary.to_dict()
    want.pop("tokenized_tokens")
    got["seconds"] = want["seconds"] = 0
    assert got == want
    assert sum(result.summary.dropped.values()) > 0 and result.summary.train_samples > 3 * SHARD


def test_the_shard_size_and_worker_count_never_change_the_rows_or_the_cache(tmp_path, write_chats, data_settings, llama3_tokenizer):
    files = corpus_files(tmp_path, write_chats)
    keys = dict(sample_packing=True, dedup="near", val_set_size=0.1, sequence_len=128)
    first = prepare_data(data_settings(files, preprocess_shard_size=5, **keys), llama3_tokenizer, progress=False)
    again = data_settings(files, preprocess_shard_size=1000, preprocess_workers=2, **keys)
    assert prepare_data(again, llama3_tokenizer, progress=False).from_cache
    rebuilt = prepare_data(again, llama3_tokenizer, progress=False, force=True)
    assert rebuilt.path == first.path and rebuilt.train.to_dict() == first.train.to_dict()
    assert rebuilt.eval.to_dict() == first.eval.to_dict()


def test_the_streaming_build_writes_several_shards_and_data_files(tmp_path, write_chats, data_settings, llama3_tokenizer):
    settings = data_settings(corpus_files(tmp_path, write_chats), preprocess_shard_size=SHARD, sequence_len=128)
    tokenized = tokenize_to_shards(settings, llama3_tokenizer, recipe_template(settings, llama3_tokenizer), tmp_path / "work", Progress(False))
    files = tokenized.shards.files
    assert len(files) == -(-len(tokenized.lengths) // SHARD) >= 8 and all(file.is_file() for file in files)
    gathered, _ = tokenized.shards.gather([len(tokenized.lengths) - 1, 0, SHARD + 1])
    assert gathered.lengths.tolist() == tokenized.lengths[[-1, 0, SHARD + 1]].tolist()
    result = prepare_data(settings, llama3_tokenizer, progress=False)
    data_files = sorted((result.path / "train").glob("data-*.arrow"))
    assert len(data_files) > 1 and data_files[0].name == f"data-00000-of-{len(data_files):05d}.arrow"
    assert not (result.path / "work").exists()


def memory_mapped(dataset) -> bool:
    """Whether every block of the dataset's table is memory-mapped from a file (nothing copied into memory)."""
    from datasets.table import ConcatenationTable, MemoryMappedTable

    table = dataset.data
    if isinstance(table, ConcatenationTable):
        return all(isinstance(block, MemoryMappedTable) for row in table.blocks for block in row)
    return isinstance(table, MemoryMappedTable)


def test_the_prepared_splits_are_memory_mapped(tmp_path, write_chats, data_settings, llama3_tokenizer):
    settings = data_settings([{"path": write_chats(40)}], val_set_size=4, preprocess_shard_size=6)
    result = prepare_data(settings, llama3_tokenizer, progress=False)
    assert len(result.train.cache_files) > 1
    for split in (result.train, result.eval):
        assert memory_mapped(split) and split.cache_files
    cached = prepare_data(settings, llama3_tokenizer, progress=False)
    assert cached.from_cache and memory_mapped(cached.train)


def test_progress_reports_rows_tokens_and_rate(tmp_path, write_chats, data_settings, llama3_tokenizer, capsys):
    settings = data_settings([{"path": write_chats(30)}])
    prepare_data(settings, llama3_tokenizer, progress=True)
    err = capsys.readouterr().err
    assert "tokenizing 30/30 conversations" in err and "tok/s" in err and "writing train rows: 30/30 rows" in err
    summary = prepare_data(settings, llama3_tokenizer, progress=False).summary
    assert summary.tokenized_tokens >= summary.tokens > 0 and "tokens/s" in summary.format_table()


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"messages": []}\n{"messages": [}\n', r":2: invalid JSON at column \d+"),
        ('{"messages": []}\n\n[1]\n', r":3: expected a JSON object per line, got an array"),
        ("  \n\n", r": the file is empty"),
    ],
)
def test_the_streamed_reader_fails_like_the_whole_file_reader(tmp_path, data_settings, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    dataset = data_settings([{"path": path}]).datasets[0]
    with pytest.raises(DataError, match=message) as whole:
        read_dataset(dataset)
    with pytest.raises(DataError, match=message) as streamed:
        list(iter_dataset(dataset, 1))
    assert str(whole.value) == str(streamed.value)


def test_the_streamed_reader_gives_the_rows_and_lines_of_the_whole_file_reader(tmp_path, data_settings):
    path = tmp_path / "rows.json"  # JSON lines in a .json file, with a BOM and blank lines
    path.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps({"text": f"t{i}"}).encode() + b"\n" * (1 + i % 2) for i in range(7)))
    dataset = data_settings([{"path": path, "type": "completion"}]).datasets[0]
    whole = read_dataset(dataset)
    batches = list(iter_dataset(dataset, 3))
    assert [len(batch.table.rows) for batch in batches] == [3, 3, 1]
    assert [row for batch in batches for row in batch.table.rows] == whole.rows
    assert [batch.table.origins[i] for batch in batches for i in range(len(batch.table.rows))] == [
        whole.origins[i] for i in range(len(whole.rows))
    ]
    assert sum(batch.bytes_read for batch in batches) == path.stat().st_size


def test_the_trainer_reads_the_prepared_rows_memory_mapped(micro_llama_dir, tmp_path, write_chats):
    """No copy on the way to the trainer: its dataset and its dataloader's read the cache's memory-mapped files."""
    from finetune.config import load_recipe_text
    from finetune.model.tokenizer import load_tokenizer
    from finetune.train.run import SFTStage, setup_model, trainer_arguments
    from finetune.train.trainer import TokenCounter

    settings = load_recipe_text(
        f"base_model: {micro_llama_dir}\ndatasets: [{{path: {write_chats(30)}}}]\n"
        f"dataset_prepared_path: {tmp_path / 'prepared'}\nchat_template: llama3\nadapter: lora\nlora_target_linear: true\n"
        "lora_r: 4\nlora_alpha: 8\nsequence_len: 256\nsample_packing: true\nbf16: false\n"
        "optimizer: sgd\nmax_steps: 1\nmicro_batch_size: 2\npreprocess_shard_size: 5\n"
        'special_tokens: {pad_token: "<|finetune_right_pad_id|>", eos_token: "<|eot_id|>"}\n'
    ).settings
    tokenizer = load_tokenizer(settings)
    prepared = prepare_data(settings, tokenizer, progress=False)
    model, precision = setup_model(settings, tokenizer)
    stage = SFTStage()
    args = trainer_arguments(stage, settings, len(prepared.train), precision=precision, world_size=1,
                             output_dir=tmp_path / "out")
    trainer = stage.trainer(settings, model, tokenizer, prepared.train, None, args=args, counter=TokenCounter(),
                            callbacks=[])
    assert len(prepared.train.cache_files) > 1
    assert memory_mapped(trainer.train_dataset) and len(trainer.train_dataset) == len(prepared.train)
    loader = trainer.get_train_dataloader()
    assert memory_mapped(loader.dataset) and loader.dataset.cache_files
    batch = next(iter(loader))
    assert batch["input_ids"].shape[0] == 2 and "position_ids" in batch


def test_parquet_and_arrow_are_streamed_with_the_rows_and_origins_of_the_whole_file_readers(tmp_path, data_settings):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": f"t{i}", "n": i} for i in range(11)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet", row_group_size=4)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "arrow"))
    entries = [{"path": tmp_path / "rows.parquet", "type": "completion"}, {"path": tmp_path / "arrow", "type": "completion"}]
    for dataset in data_settings(entries).datasets:
        whole = read_dataset(dataset)
        batches = list(iter_dataset(dataset, 3))
        assert [len(batch.table.rows) for batch in batches] == [3, 3, 3, 2]
        assert [row for batch in batches for row in batch.table.rows] == whole.rows == rows
        streamed = [batch.table.origins[i] for batch in batches for i in range(len(batch.table.rows))]
        assert streamed == [whole.origins[i] for i in range(len(rows))]
        assert streamed[-1].endswith(":record 11") and batches[0].table.source == whole.source


@pytest.mark.parametrize("workers", [1, 2])
def test_a_render_error_in_a_worker_names_the_batch(workers, tmp_path, write_chats, data_settings, llama3_tokenizer):
    rows = [chat_conversation(i) for i in range(9)]
    rows[6]["messages"][-1]["content"] = "boom"
    template = (
        "{% for m in messages %}{% if m['content'] == 'boom' %}{{ raise_exception('no boom here') }}{% endif %}"
        "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    )
    path = write_chats(rows=rows)
    settings = data_settings([{"path": path}], chat_template="jinja", chat_template_jinja=template, preprocess_workers=workers)
    with pytest.raises(DataError, match=rf"^{path}:1 \(or a later row of this batch\): .*no boom here"):
        prepare_data(settings, llama3_tokenizer, progress=False)
    assert not [p for p in (tmp_path / "prepared").iterdir()]  # no partial cache, no scratch files left


def test_auto_workers_are_one_per_core_beyond_two():
    from finetune.data.parallel import resolve_workers

    assert [resolve_workers(0, cores) for cores in (1, 2, 3, 16)] == [1, 1, 3, 16]
    assert resolve_workers(5, 2) == 5 and resolve_workers(1, 16) == 1


JSON_ARRAY = '[\n  {"text": "t0"},\n  {"text": "a \\"quoted\\" ] , [ line", "n": 12345},\n\n  {"text": "t2",\n   "n": -1.5e3}, {"text": "t3"}\n]\n'
CSV_TEXT = 'text,n\nt0,1\n"multi\nline, quoted",2\n\nt2,3\nt3,4\n'


@pytest.mark.parametrize("name, content", [("rows.json", JSON_ARRAY), ("rows.csv", CSV_TEXT)])
@pytest.mark.parametrize("chunk", [7, 1 << 22])
def test_json_arrays_and_csv_are_streamed_with_the_rows_and_lines_of_the_whole_file_readers(
    name, content, chunk, tmp_path, data_settings, monkeypatch
):
    from finetune.data import stream_readers

    monkeypatch.setattr(stream_readers, "CHUNK_BYTES", chunk)  # tiny chunks: records span several reads
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + content.encode())
    dataset = data_settings([{"path": path, "type": "completion"}]).datasets[0]
    whole = read_dataset(dataset)
    batches = list(iter_dataset(dataset, 3))
    assert [len(batch.table.rows) for batch in batches] == [3, 1]
    assert [row for batch in batches for row in batch.table.rows] == whole.rows and len(whole.rows) == 4
    assert [batch.table.origins[i] for batch in batches for i in range(len(batch.table.rows))] == [
        whole.origins[i] for i in range(4)
    ]
    assert sum(batch.bytes_read for batch in batches) == path.stat().st_size


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.json", '[{"a": 1},\n {"a": 2}\n {"a": 3}]', r":3: invalid JSON at column 2: expected `,` or `]`"),
        ("bad.json", '[{"a": 1},\n {"a": 2},\n 5]', r":3: expected each array element to be a JSON object"),
        ("bad.json", '[{"a": 1},\n {"a": "unterminated}', r":2: invalid JSON"),
        ("bad.json", '[{"a": 1}]\n{"b": 2}', r"extra data after the closing"),
        ("bad.json", "[ ]", r"the JSON array is empty"),
        ("bad.json", '[{"a": 1},\n{"a": 2}', r"the array is not closed"),
        ("bad.csv", "a,b\n1,2\n3\n", r":3: expected 2 fields"),
        ("bad.csv", "a,b\n", r"no records after the header row"),
        ("bad.csv", "  \n\n", r"the file is empty"),
        ("bad.csv", b"a,b\n1,\xff\n", r":2: not valid UTF-8"),
    ],
)
def test_streamed_json_arrays_and_csv_fail_like_the_whole_file_readers(name, content, message, tmp_path,
                                                                       data_settings, monkeypatch):
    from finetune.data import stream_readers

    monkeypatch.setattr(stream_readers, "CHUNK_BYTES", 5)
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    dataset = data_settings([{"path": path, "type": "completion"}]).datasets[0]
    with pytest.raises(DataError, match=message) as whole:
        read_dataset(dataset)
    with pytest.raises(DataError, match=message) as streamed:
        list(iter_dataset(dataset, 1))
    assert str(whole.value) == str(streamed.value)
