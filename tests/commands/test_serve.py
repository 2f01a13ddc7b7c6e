"""`finetune serve` as a user runs it: it prints the URL at once, shows loading progress, answers the API once
loaded, logs one line per request, warns when it listens beyond this machine without a key, and stops on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")


def test_serve_cli_end_to_end(make_adapter_run: Any) -> None:
    run_dir, _ = make_adapter_run(seed=3)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "finetune", "serve", str(run_dir / "recipe.yml"), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None:
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
            line = process.stdout.readline()
            lines.append(line)
            if match := re.search(r"serving on (http://127\.0\.0\.1:\d+)/", line):
                url = match.group(1)
        while (response := httpx.get(f"{url}/v1/models")).status_code == 503:
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        assert [m["id"] for m in response.json()["data"]] == ["base", run_dir.name]
        body = {"model": run_dir.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code == 200
        time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    text = "".join(lines) + out
    assert process.returncode == 0, text
    assert "loading the base" in text and f"attaching {run_dir.name}" in text
    assert re.search(rf"{re.escape(run_dir.name)}: \d+ prompt \+ \d+ new tokens, [\d.]+ tok/s", text), text
    assert "Traceback" not in text


def test_listening_beyond_this_machine_without_a_key_warns_and_a_taken_port_is_an_error(make_adapter_run: Any) -> None:
    import socket

    run_dir, _ = make_adapter_run(seed=3)
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        done = subprocess.run([sys.executable, "-m", "finetune", "serve", str(run_dir / "recipe.yml"),
                               "--host", "0.0.0.0", "--port", str(port)], capture_output=True, text=True, timeout=120)
    finally:
        taken.close()
    assert done.returncode == 1 and "pick another --port" in done.stderr
    assert "without --api-key" in done.stderr
    missing = subprocess.run([sys.executable, "-m", "finetune", "serve", str(run_dir / "nope.yml")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no such recipe or run folder" in missing.stderr
    assert "Traceback" not in missing.stderr
