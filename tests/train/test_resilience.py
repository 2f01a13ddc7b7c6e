"""Resume / overwrite decisions, signal handling and secret redaction (no training; see test_distributed.py)."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import pytest

from finetune.errors import FinetuneError
from finetune.train.resilience import (
    REDACTED,
    SignalFlag,
    TrainingInterrupted,
    catch_signals,
    checkpoints,
    decide_output_dir,
    known_secrets,
    plan_output_dir,
    redact_config,
    secrets_filtered,
    stop_on_signal_callback,
)


def _checkpoint(out: Path, step: int, complete: bool = True) -> Path:
    """A checkpoint as the Trainer writes it for an adapter run (no `.complete` marker: an older run's)."""
    import torch
    from safetensors.torch import save_file

    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    save_file({"base_model.model.lora_A.weight": torch.full((4, 8), float(step))}, path / "adapter_model.safetensors")
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_empty_output_dir_starts_fresh(tmp_path):
    assert decide_output_dir(tmp_path / "missing", resume=True, overwrite=False).resume_from is None


def test_resumes_from_the_latest_complete_checkpoint_by_step_not_name(tmp_path):
    _checkpoint(tmp_path, 2)
    latest = _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 12, complete=False)  # killed while saving
    (tmp_path / "checkpoint-x").mkdir()
    plan = decide_output_dir(tmp_path, resume=True, overwrite=False)
    assert plan.resume_from == latest
    assert "resuming from" in plan.messages[0] and "--no-resume" in plan.messages[0]
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10"]


def test_no_resume_removes_old_checkpoints(tmp_path):
    _checkpoint(tmp_path, 1)
    _checkpoint(tmp_path, 2, complete=False)
    plan = plan_output_dir(tmp_path, resume=False, overwrite=False)
    assert plan.resume_from is None and "starting over" in plan.messages[0]
    assert not list(tmp_path.glob("checkpoint-*"))


def test_decision_alone_changes_nothing(tmp_path):
    _checkpoint(tmp_path, 1)
    plan_output_dir(tmp_path, resume=False, overwrite=False, clean=False)
    assert (tmp_path / "checkpoint-1").is_dir()


def test_finished_run_is_not_overwritten(tmp_path):
    (tmp_path / "run_summary.json").write_text("{}")
    with pytest.raises(FinetuneError, match="finished run.*--overwrite"):
        plan_output_dir(tmp_path, resume=True, overwrite=False)
    assert (tmp_path / "run_summary.json").is_file()


def test_overwrite_clears_the_finished_run(tmp_path):
    (tmp_path / "run_summary.json").write_text("{}")
    _checkpoint(tmp_path, 5)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"x")
    plan = plan_output_dir(tmp_path, resume=True, overwrite=True)
    assert plan.resume_from is None
    assert not (tmp_path / "run_summary.json").exists() and not (tmp_path / "checkpoint-5").exists()
    assert (tmp_path / "adapter_model.safetensors").exists()  # replaced by the new run's save, not deleted


def test_resume_skips_a_checkpoint_whose_adapter_was_cut_short(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="finetune")
    previous = _checkpoint(tmp_path, 1)
    damaged = _checkpoint(tmp_path, 2)
    adapter = damaged / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-10])  # a crash or a full disk mid-write
    plan = decide_output_dir(tmp_path, resume=True, overwrite=False)
    assert plan.resume_from == previous
    assert plan.remove == [damaged]  # saved again when training reaches step 2
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "checkpoint-2" in warning[0] and "adapter_model.safetensors" in warning[0]


@pytest.mark.parametrize("damage", ["missing adapter", "corrupt adapter config", "corrupt trainer state",
                                    "cut-short optimizer"])
def test_other_damage_also_falls_back(tmp_path, damage):
    import torch

    previous = _checkpoint(tmp_path, 1)
    damaged = _checkpoint(tmp_path, 2)
    for checkpoint in (previous, damaged):
        torch.save({"state": {0: torch.ones(64)}}, checkpoint / "optimizer.pt")
    if damage == "cut-short optimizer":
        optimizer = damaged / "optimizer.pt"
        optimizer.write_bytes(optimizer.read_bytes()[:-30])
    elif damage == "missing adapter":
        (damaged / "adapter_model.safetensors").unlink()
    elif damage == "corrupt adapter config":
        (damaged / "adapter_config.json").write_text('{"peft_type": ')
    else:
        (damaged / "trainer_state.json").write_text("")
    assert decide_output_dir(tmp_path, resume=True, overwrite=False).resume_from == previous


def test_a_deepspeed_checkpoint_without_gathered_weights_is_resumed(tmp_path):
    import torch

    # ZeRO-3 with stage3_gather_16bit_weights_on_model_save false keeps the weights in DeepSpeed's own state.
    _checkpoint(tmp_path, 1)
    newest = _checkpoint(tmp_path, 2)
    (newest / "adapter_model.safetensors").unlink()
    assert checkpoints(tmp_path) == [tmp_path / "checkpoint-1"]  # no weights and no DeepSpeed state: damaged
    (newest / "global_step2").mkdir()
    torch.save({"module": None}, newest / "global_step2" / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    (newest / "latest").write_text("global_step2")
    assert decide_output_dir(tmp_path, resume=True, overwrite=False).resume_from == newest


def test_a_named_damaged_checkpoint_is_a_clear_error(tmp_path):
    from finetune.errors import DataError
    from finetune.train.run import resume_point

    named = _checkpoint(tmp_path, 1)
    assert resume_point(str(named), tmp_path) == str(named)
    (named / "adapter_model.safetensors").write_bytes(b"\0" * 3)
    with pytest.raises(DataError, match=r"checkpoint-1/adapter_model\.safetensors is damaged"):
        resume_point(str(named), tmp_path)


def test_sealed_and_legacy_checkpoints_are_both_resumed(tmp_path):
    from finetune.runs.checkpoints import seal_checkpoint
    from finetune.runs.layout import COMPLETE_MARKER

    legacy = _checkpoint(tmp_path, 1)
    sealed = _checkpoint(tmp_path, 2)
    marker = seal_checkpoint(sealed)
    assert marker == sealed / COMPLETE_MARKER and marker.is_file() and not (legacy / COMPLETE_MARKER).exists()
    assert checkpoints(tmp_path) == [legacy, sealed]


def _deepspeed_checkpoint(out: Path, step: int) -> Path:
    """A ZeRO checkpoint as the Trainer + DeepSpeed write it: adapter, trainer state, and `global_stepN/` shards."""
    import torch

    path = _checkpoint(out, step)
    shards = path / f"global_step{step}"
    shards.mkdir()
    for rank in (0, 1):
        torch.save({"optimizer_state_dict": {"exp_avg": torch.randn(4096)}},
                   shards / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    torch.save({"module": None}, shards / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    (path / "latest").write_text(shards.name)
    return path


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "older run, no marker"])
def test_a_cut_deepspeed_optimizer_shard_is_skipped_for_the_previous_checkpoint(tmp_path, caplog, sealed):
    from finetune.runs.checkpoints import seal_checkpoint

    previous, damaged = _deepspeed_checkpoint(tmp_path, 1), _deepspeed_checkpoint(tmp_path, 2)
    if sealed:
        seal_checkpoint(previous), seal_checkpoint(damaged)
    _cut_in_half(damaged / "global_step2" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt")
    with caplog.at_level(logging.WARNING, logger="finetune.train.resilience"):
        plan = decide_output_dir(tmp_path, resume=True, overwrite=False)
    assert plan.resume_from == previous
    assert damaged in plan.remove
    assert "skipping damaged checkpoint" in caplog.text and "checkpoint-2" in caplog.text
    assert "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt" in caplog.text


def test_the_seal_records_every_file_and_catches_a_cut_that_still_parses(tmp_path):
    """A file that still parses after damage (here: a JSON scheduler state cut to a shorter valid JSON) is
    only caught by the sizes the seal recorded."""
    from finetune.runs.checkpoints import checkpoint_files, sealed_files, seal_checkpoint, verify_checkpoint
    from finetune.errors import DataError

    checkpoint = _deepspeed_checkpoint(tmp_path, 3)
    (checkpoint / "extra_state.json").write_text('{"a": 1, "b": 2}')
    seal_checkpoint(checkpoint)
    recorded = sealed_files(checkpoint)
    assert recorded == checkpoint_files(checkpoint)
    assert "global_step3/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt" in recorded
    verify_checkpoint(checkpoint)
    (checkpoint / "extra_state.json").write_text('{"a": 1}')
    with pytest.raises(DataError, match=r"extra_state\.json is damaged: 8 bytes, 16 when the checkpoint was sealed"):
        verify_checkpoint(checkpoint)
    (checkpoint / "extra_state.json").unlink()
    with pytest.raises(DataError, match=r"extra_state\.json is missing"):
        verify_checkpoint(checkpoint)


def test_once_a_run_seals_a_later_checkpoint_without_its_marker_is_skipped(tmp_path, caplog):
    from finetune.runs.checkpoints import seal_checkpoint

    first, second = _checkpoint(tmp_path, 1), _checkpoint(tmp_path, 2)
    seal_checkpoint(first)
    with caplog.at_level(logging.WARNING, logger="finetune.train.resilience"):
        assert checkpoints(tmp_path) == [first]
    assert "checkpoint-2" in caplog.text and "no .complete marker" in caplog.text


def test_the_text_marker_of_earlier_versions_is_accepted(tmp_path):
    from finetune.runs.layout import COMPLETE_MARKER

    first = _checkpoint(tmp_path, 1)
    (first / COMPLETE_MARKER).write_text("every file of this checkpoint was on disk before this one was written\n")
    assert checkpoints(tmp_path) == [first]


def test_a_stray_checkpoint_named_directory_is_ignored(tmp_path):
    first = _checkpoint(tmp_path, 1)
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / "checkpoint-best").mkdir()
    plan = decide_output_dir(tmp_path, resume=True, overwrite=False)
    assert plan.resume_from == first and plan.remove == []


# --- signals -------------------------------------------------------------------------------------


def test_signal_sets_the_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    flag = SignalFlag()
    with catch_signals(flag):
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # a duplicate right after (torchrun forwarding) is ignored
        assert flag.signum == signal.SIGTERM
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_callback_saves_and_stops_then_raises_after_the_save(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    flag = SignalFlag()
    callback = stop_on_signal_callback(flag)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    state, control = TrainerState(global_step=7), TrainerControl()
    callback.on_step_end(args, state, control)
    assert not control.should_save and not control.should_training_stop
    callback.on_save(args, state, control)  # an ordinary save: nothing happens

    flag.signum = signal.SIGTERM
    callback.on_step_end(args, state, control)
    assert control.should_save and control.should_training_stop
    _checkpoint(tmp_path, 7)
    with pytest.raises(TrainingInterrupted) as caught:
        callback.on_save(args, state, control)
    assert caught.value.checkpoint == tmp_path / "checkpoint-7" and caught.value.exit_code == 143
    assert "SIGTERM at step 7" in str(caught.value)


# --- secrets -------------------------------------------------------------------------------------


def test_redaction_over_the_resolved_recipe():
    env = {"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567", "HF_TOKEN": "hf_" + "A" * 34, "HOME": "/root"}
    secrets = known_secrets(env)
    assert set(secrets) == {env["WANDB_API_KEY"], env["HF_TOKEN"]}
    recipe = {
        "base_model": f"https://user:{env['HF_TOKEN']}@example.com/model",
        "wandb_project": "chat",
        "hub_token": "anything",
        "nested": [{"note": f"key={env['WANDB_API_KEY']}"}, {"lr": 0.1}],
        "plain": "hf_" + "b" * 30,
    }
    out = redact_config(recipe, secrets)
    text = json.dumps(out)
    assert env["HF_TOKEN"] not in text and env["WANDB_API_KEY"] not in text and "hf_bbbb" not in text
    assert out["hub_token"] == REDACTED and out["wandb_project"] == "chat" and out["nested"][1] == {"lr": 0.1}
    assert out["base_model"] == f"https://user:{REDACTED}@example.com/model"


def test_saved_recipe_has_no_secrets():
    from finetune.config import load_recipe_text
    from finetune.train.run import resolved_recipe_yaml

    token = "hf_" + "Z" * 34
    settings = load_recipe_text(f"base_model: {token}\ndatasets:\n  - path: d.jsonl\nwandb_project: p\n").settings
    assert token not in resolved_recipe_yaml(settings)


def test_secrets_never_reach_log_handlers():
    import io

    secret = "hf_" + "Q" * 34
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("finetune.test_secrets")
    logger.addHandler(handler)
    logging.getLogger("finetune").addHandler(handler)
    try:
        with secrets_filtered([secret], logger_names=["finetune.test_secrets"]):
            logger.warning("token is %s", secret)
        assert secret not in stream.getvalue() and REDACTED in stream.getvalue()
        assert not handler.filters  # removed after the block
    finally:
        logger.removeHandler(handler)
        logging.getLogger("finetune").removeHandler(handler)
