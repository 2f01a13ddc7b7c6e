"""The prepared-data cache: hits, misses on content/settings changes, force, atomicity, format."""

from __future__ import annotations

import os

import pytest

from finetune.data import cache
from finetune.data.build import prepare_data


@pytest.fixture
def chats(write_chats):
    return write_chats(30)


def prepare(settings, tokenizer, **kwargs):
    return prepare_data(settings, tokenizer, progress=False, **kwargs)


def test_second_run_hits_the_cache(data_settings, chats, llama3_tokenizer):
    settings = data_settings([{"path": chats}], val_set_size=0.1)
    first = prepare(settings, llama3_tokenizer)
    second = prepare(settings, llama3_tokenizer)
    assert not first.from_cache and second.from_cache
    assert second.path == first.path and second.summary == first.summary
    assert second.train["input_ids"] == first.train["input_ids"]


def test_editing_a_data_file_in_place_same_size_misses(data_settings, chats, llama3_tokenizer):
    settings = data_settings([{"path": chats}])
    first = prepare(settings, llama3_tokenizer)
    data = chats.read_bytes()
    edited = data.replace(b"alpha", b"ALPHA", 1)
    assert edited != data and len(edited) == len(data)
    stat = chats.stat()
    chats.write_bytes(edited)
    os.utime(chats, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    second = prepare(settings, llama3_tokenizer)
    assert not second.from_cache and second.path != first.path


@pytest.mark.parametrize(
    "change", [{"val_set_size": 0.2}, {"sequence_len": 256}, {"seed": 7}, {"train_on_inputs": True}, {"dedup": True}]
)
def test_changing_a_token_setting_misses(data_settings, chats, llama3_tokenizer, change):
    base = prepare(data_settings([{"path": chats}], val_set_size=0.1), llama3_tokenizer)
    other = prepare(data_settings([{"path": chats}], **{"val_set_size": 0.1, **change}), llama3_tokenizer)
    assert not other.from_cache and other.path != base.path


def test_settings_that_do_not_change_tokens_keep_the_cache(data_settings, chats, llama3_tokenizer):
    base = prepare(data_settings([{"path": chats}]), llama3_tokenizer)
    same = prepare(data_settings([{"path": chats}], learning_rate=0.1, pad_to_sequence_len=True), llama3_tokenizer)
    assert same.from_cache and same.path == base.path


def test_force_rebuilds(data_settings, chats, llama3_tokenizer):
    settings = data_settings([{"path": chats}])
    first = prepare(settings, llama3_tokenizer)
    forced = prepare(settings, llama3_tokenizer, force=True)
    assert not forced.from_cache and forced.path == first.path
    assert forced.train["input_ids"] == first.train["input_ids"]
    assert prepare(settings, llama3_tokenizer).from_cache


def test_a_half_written_cache_is_never_loaded(data_settings, chats, llama3_tokenizer, tmp_path, monkeypatch):
    settings = data_settings([{"path": chats}])
    # a crash after writing the data but before the rename into place
    def crash(src, dst):
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(cache, "_replace_dir", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(settings, llama3_tokenizer)
    monkeypatch.undo()
    prepared = tmp_path / "prepared"
    assert not [p for p in prepared.iterdir() if not p.name.startswith(".")]
    result = prepare(settings, llama3_tokenizer)
    assert not result.from_cache

    # a final directory without its completion marker (e.g. a partial copy) is rebuilt, not loaded
    (result.path / cache.MARKER).unlink()
    assert cache.load(result.path, result.path.name) is None
    rebuilt = prepare(settings, llama3_tokenizer)
    assert not rebuilt.from_cache and (rebuilt.path / cache.MARKER).is_file()

    # a marker naming another fingerprint is rejected too
    (rebuilt.path / cache.MARKER).write_text("0" * 64 + "\n")
    assert not prepare(settings, llama3_tokenizer).from_cache


def test_output_is_a_plain_datasets_directory_with_integer_columns(data_settings, chats, llama3_tokenizer):
    import datasets

    settings = data_settings([{"path": chats}], val_set_size=5, sample_packing=True, eval_sample_packing=False)
    result = prepare(settings, llama3_tokenizer)
    train = datasets.load_from_disk(str(result.path / "train"))
    evals = datasets.load_from_disk(str(result.path / "eval"))
    assert set(train.column_names) == {"input_ids", "labels", "position_ids", "lengths"}
    assert set(evals.column_names) == {"input_ids", "labels"}
    for column in train.column_names:
        assert train.features[column].feature.dtype == "int32"
    row = train[0]
    assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) == sum(row["lengths"])
    assert cache.read_summary(result.path)["fingerprint"] == result.path.name


def small_tokenizer(pad: str | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "<pad>": 1, "a": 2, "b": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token=pad)


def test_fingerprint_covers_tokenizer_and_template(data_settings, chats):
    settings = data_settings([{"path": chats}])
    base = cache.fingerprint(settings, small_tokenizer(), "template A")
    assert base == cache.fingerprint(settings, small_tokenizer(), "template A")
    assert base != cache.fingerprint(settings, small_tokenizer(), "template B")
    assert base != cache.fingerprint(settings, small_tokenizer(pad="<pad>"), "template A")
    grown = small_tokenizer()
    grown.add_tokens(["c"])
    assert base != cache.fingerprint(settings, grown, "template A")
