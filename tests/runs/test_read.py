"""The run-directory reader: whole safetensors files, damaged runs named in the error, the one eos list."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from finetune.errors import DataError
from finetune.model.tokenizer import eos_ids
from finetune.runs.read import adapter_kind, read_adapter_config, read_json, verify_safetensors


def _safetensors(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"a": torch.arange(6, dtype=torch.float32), "b": torch.ones(2, 3)}, path)
    return path


def test_a_whole_file_verifies_and_loads(tmp_path):
    from safetensors.torch import load_file

    path = _safetensors(tmp_path / "w.safetensors")
    verify_safetensors(path)
    assert set(load_file(path)) == {"a", "b"}


@pytest.mark.parametrize("keep", ["all but 1 byte", "all but 24 bytes", "half the header", "8 bytes", "3 bytes"])
def test_a_cut_short_file_is_named(tmp_path, keep):
    path = _safetensors(tmp_path / "w.safetensors")
    data = path.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    size = {"all but 1 byte": len(data) - 1, "all but 24 bytes": len(data) - 24,
            "half the header": 8 + header_len // 2, "8 bytes": 8, "3 bytes": 3}[keep]
    path.write_bytes(data[:size])
    with pytest.raises(DataError, match=r"w\.safetensors is damaged"):
        verify_safetensors(path)


def test_extra_bytes_and_garbage_are_damage(tmp_path):
    path = _safetensors(tmp_path / "w.safetensors")
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match="its header says"):
        verify_safetensors(path)
    path.write_bytes(struct.pack("<Q", 5) + b"nope!")
    with pytest.raises(DataError, match="unreadable safetensors header"):
        verify_safetensors(path)
    with pytest.raises(DataError, match="missing"):
        verify_safetensors(tmp_path / "absent.safetensors")


def test_run_files_name_themselves_when_damaged(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", ')
    with pytest.raises(DataError, match=r"adapter_config\.json is damaged"):
        read_adapter_config(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "use_dora": True}))
    with pytest.raises(DataError, match=r"adapter_model\.safetensors is missing"):
        read_adapter_config(tmp_path)
    _safetensors(tmp_path / "adapter_model.safetensors")
    assert adapter_kind(tmp_path) == "dora"
    with pytest.raises(DataError, match=r"expected a JSON object"):
        (tmp_path / "x.json").write_text("[1]")
        read_json(tmp_path / "x.json")


def test_a_full_model_dir_verifies_its_shards(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DataError, match="holds no weights"):
        adapter_kind(tmp_path)
    _safetensors(tmp_path / "model-00001-of-00002.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(DataError, match=r"model-00002-of-00002\.safetensors is missing"):
        adapter_kind(tmp_path)
    _safetensors(tmp_path / "model-00002-of-00002.safetensors")
    assert adapter_kind(tmp_path) == "full"


def test_one_eos_list_trained_id_first_each_id_once():
    assert eos_ids(128009, [128001, 128009], None, 128008, [-1, 128001]) == [128009, 128001, 128008]
    assert eos_ids(None, 5) == [5]


# --- chat, merge and evaluate on a damaged run: exit 2 and the file named, never a traceback ----------


@pytest.fixture(scope="module")
def finished_run(make_adapter_run):
    """One adapter run (built once for the module); each test damages a copy."""
    return make_adapter_run()[0]


def _damage(run: Path, damage: str) -> str:
    """Damage a copy of a run as a crash, a full disk or a partial copy would; the file the error must name."""
    if damage == "truncated adapter":
        path = run / "adapter_model.safetensors"
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "missing adapter":
        path = run / "adapter_model.safetensors"
        path.unlink()
    elif damage == "corrupt adapter config":
        path = run / "adapter_config.json"
        path.write_text(path.read_text()[:20])
    else:  # a tokenizer cut short
        path = run / "tokenizer.json"
        path.write_text(path.read_text()[:50])
    return path.name


@pytest.mark.parametrize("command, damage", [
    (command, damage) for command in ("chat", "merge", "evaluate")
    for damage in ("truncated adapter", "missing adapter", "corrupt adapter config", "broken tokenizer")
    if not (command == "evaluate" and damage == "broken tokenizer")  # evaluate tokenizes with the recipe's
])
def test_a_damaged_run_is_a_clear_error(finished_run, tmp_path, capsys, command, damage):
    import shutil

    from finetune.cli import main

    run = shutil.copytree(finished_run, tmp_path / "run")
    name = _damage(run, damage)
    extra = {"chat": ["--prompt", "hi"], "merge": ["--out", str(tmp_path / "merged")],
             "evaluate": ["--dataset", str(tmp_path / "none.jsonl")]}[command]
    assert main([command, str(run / "recipe.yml"), "--adapter", str(run), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and name in err and "Traceback" not in err
    assert not (tmp_path / "merged").exists()
