"""W&B: mode decision, metric naming, and a real offline run read back from its `.wandb` file."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import pytest

from finetune.train.tracking import WandbSettings, has_api_key, metrics_from_logs, rates, resolve_mode

WS = WandbSettings(project="p")


def test_mode_without_any_key_is_offline_with_a_notice(tmp_path):
    mode, notice = resolve_mode(WS, {"HOME": str(tmp_path)})
    assert mode == "offline" and "offline" in notice


def test_mode_with_an_api_key_or_netrc_entry_is_online(tmp_path):
    assert resolve_mode(WS, {"WANDB_API_KEY": "k" * 40, "HOME": str(tmp_path)}) == ("online", None)
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
    netrc.chmod(0o600)
    assert has_api_key({"HOME": str(tmp_path)})
    assert not has_api_key({"HOME": str(tmp_path), "WANDB_BASE_URL": "https://wandb.example.com"})
    assert resolve_mode(WS, {"HOME": str(tmp_path)})[0] == "online"


def test_recipe_and_environment_modes_win(tmp_path):
    assert resolve_mode(WandbSettings(project="p", mode="disabled"), {"WANDB_API_KEY": "k"}) == ("disabled", None)
    assert resolve_mode(WS, {"WANDB_MODE": "offline", "WANDB_API_KEY": "k"}) == ("offline", None)


def test_metric_names_and_rates():
    logs = {"loss": 2.5, "grad_norm": 0.3, "learning_rate": 1e-4, "epoch": 0.5, "num_tokens": 900, "eval_loss": 2.0,
            "note": "x", "flag": True}
    assert metrics_from_logs(logs) == {"train/loss": 2.5, "train/grad_norm": 0.3, "train/learning_rate": 1e-4,
                                       "train/epoch": 0.5, "eval/loss": 2.0}
    assert rates((10.0, 100.0, 40.0), (12.0, 500.0, 140.0)) == {"train/tokens_per_s": 200.0, "train/trained_tokens_per_s": 50.0}
    assert rates((10.0, 100.0, -1.0), (12.0, 500.0, -1.0)) == {"train/tokens_per_s": 200.0}
    assert rates(None, (1.0, 1.0, 1.0)) == {}


# --- reading a .wandb file (LevelDB-log framing of wandb.proto Record messages) ------------------------

BLOCK, HEADER = 32768, 7


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, pending, out = path.read_bytes(), HEADER, b"", []
    assert data[:4] == b":W&B"
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if pos + HEADER + length > len(data):  # a record still being written
            break
        chunk, pos = data[pos + HEADER : pos + HEADER + length], pos + HEADER + length
        if kind in (1, 4):  # full / last
            record = pb.Record()
            record.ParseFromString(pending + chunk)
            out.append(record)
            pending = b""
        elif kind in (2, 3):  # first / middle
            pending += chunk
        else:
            break
    return out


def _complete_records(path: Path, wait_s: float = 60) -> list:
    """The records once the `exit` record is on disk (W&B's service may still be flushing after finish())."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        records = read_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


@pytest.mark.slow
def test_offline_run_holds_the_recipe_and_the_logged_losses(train_recipe, monkeypatch, caplog):
    from finetune.train.launch import main_train

    for name in ("WANDB_API_KEY", "WANDB_MODE", "WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(train_recipe("home").parent))  # no ~/.netrc there
    secret = "hf_" + "S" * 34
    monkeypatch.setenv("HF_TOKEN", secret)
    recipe = train_recipe("tracked", max_steps=3, save_steps=3, wandb_project="finetune-test", wandb_name="tiny")

    caplog.set_level(logging.INFO, logger="finetune")
    assert main_train(recipe, []) == 0
    notices = "\n".join(caplog.messages)
    assert "no API key configured" in notices and "wandb sync" in notices

    out = recipe.parent / "out"
    [run_file] = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    records = _complete_records(run_file)
    config = {}
    for record in records:  # the run record holds the initial config, config records the updates
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in updates})
    assert config["wandb_project"] == "finetune-test" and config["lora_r"] == 8 and config["peft_use_dora"] is True
    assert config["effective_batch"] == 4 and config["world_size"] == 1
    assert "packing_efficiency" in config["data"]

    history = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    steps = [row for row in history if "train/loss" in row]
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    expected = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert [row["train/loss"] for row in steps] == pytest.approx(expected)
    assert [row["_step"] for row in steps] == [1, 2, 3]
    assert all("train/learning_rate" in row and "train/grad_norm" in row for row in steps)
    assert all(row["train/tokens_per_s"] > 0 for row in steps[1:])
    assert secret not in run_file.read_bytes().decode("latin-1")
