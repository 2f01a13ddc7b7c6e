"""Preprocessing workers (finetune.data.parallel): a worker that dies ends the run with a clear error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def long_conversations(n: int) -> str:
    turn = " ".join(f"word{i % 97}" for i in range(60))
    rows = (
        {"messages": [{"role": ("user", "assistant")[t % 2], "content": f"{turn} {row} {t}"} for t in range(8)]}
        for row in range(n)
    )
    return "".join(json.dumps(row) + "\n" for row in rows)


def workers_of(parent) -> list:
    """The forked pool workers of `parent` (same command line; not a helper process such as a resource tracker)."""
    import psutil

    try:
        command = parent.cmdline()
        return [child for child in parent.children() if child.cmdline() == command]
    except psutil.Error:
        return []


def test_a_killed_worker_ends_preprocess_with_a_clear_error_and_no_cache(tmp_path, tiny_llama_dir):
    psutil = pytest.importorskip("psutil")
    data = tmp_path / "chats.jsonl"
    data.write_text(long_conversations(1100), encoding="utf-8")
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(
        f"base_model: {tiny_llama_dir}\nchat_template: llama3\ndatasets: [{{path: {data}}}]\n"
        f"dataset_prepared_path: {tmp_path / 'prepared'}\nsequence_len: 4096\npreprocess_workers: 2\n",
        encoding="utf-8",
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "finetune", "preprocess", str(recipe), "--no-progress"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        parent = psutil.Process(process.pid)
        deadline = time.monotonic() + 120
        while not (workers := workers_of(parent)):
            assert process.poll() is None, f"preprocess ended before its workers started: {process.communicate()}"
            assert time.monotonic() < deadline, "no worker started within 120 s"
            time.sleep(0.005)
        time.sleep(0.5)  # past the moment the pool records its workers (a death before is reported less precisely)
        assert process.poll() is None, "preprocess finished before a worker could be killed; grow the corpus"
        os.kill(workers[0].pid, signal.SIGKILL)
        killed = time.monotonic()
        out, err = process.communicate(timeout=30)  # the old multiprocessing.Pool waited here forever
        assert time.monotonic() - killed < 30
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1, (out, err)
    assert "a preprocessing worker died (killed by signal 9: out of memory?)" in err
    assert f"{recipe}:6: " in err and "lower preprocess_workers" in err.lower() and "Traceback" not in err
    prepared = tmp_path / "prepared"
    assert not prepared.exists() or list(prepared.iterdir()) == []  # nothing committed, no temporary left
    assert not workers_of(parent) if parent.is_running() else True
