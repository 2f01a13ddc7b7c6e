"""scripts/bench_serve.py without running it: its arguments are checked, --dry-run builds nothing, the prompts are
distinct (the server cannot answer a repeated prompt from anything shared) and deterministic (runs compare)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_serve.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_serve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_prints_the_plan_and_builds_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--clients", "3", "--rounds", "2",
                           "--max-tokens", "5", "--workdir", str(work)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "6 distinct prompts (3 clients x 2 rounds), max_tokens 5" in proc.stdout
    assert not work.exists()


@pytest.mark.parametrize("args", [["--clients", "0"], ["--max-tokens", "-1"], ["--threads", "0"], ["--hidden", "30"]])
def test_bad_arguments_exit_2(args: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        load_script().parse_args(args)
    assert exc.value.code == 2
    assert args[0] in capsys.readouterr().err


def test_prompts_are_distinct_and_deterministic() -> None:
    bench = load_script()
    texts = bench.prompts(16)
    assert len(set(texts)) == 16
    assert texts == bench.prompts(16) and texts != bench.prompts(16, seed=1)
    assert len({len(text.split()) for text in texts}) > 1  # different lengths: the batch is really left-padded
