"""scripts/bench_gpu.py: without a GPU it says so and exits 0; --dry-run runs the same code path on a tiny shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_gpu.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900)


def test_without_cuda_nothing_is_measured() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    proc = _run()
    assert proc.returncode == 0
    assert "no CUDA GPU: nothing measured" in proc.stdout


def _dry_run(tmp_path: Path, variants: str) -> list[dict]:
    out = tmp_path / "results.json"
    proc = _run("--dry-run", "--steps", "1", "--workdir", str(tmp_path / "work"), "--variants", variants,
                "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert [r["variant"] for r in results] == variants.split(",")
    for result in results:
        assert result["ok"] and result["tokens_per_s"] > 0 and result["max_rss"] > 0
        assert 0 < result["estimate_allocated"] < result["estimate_peak"]
        assert result["variant"] in proc.stdout
    return results


def test_dry_run_trains_the_seed_recipe_through_finetune(tmp_path: Path) -> None:
    (result,) = _dry_run(tmp_path, "finetune-qdora")
    assert result["sequence_len"] == 256 and result["steps"] == 1
    assert (tmp_path / "work" / "tiny-model" / "model.safetensors.index.json").is_file()


@pytest.mark.slow
def test_dry_run_every_variant(tmp_path: Path) -> None:
    results = _dry_run(tmp_path, "finetune-qlora,plain-trl-qdora,finetune-qdora-24GB")
    plain = results[1]
    assert plain["estimate_allocated"] > results[0]["estimate_allocated"]  # full-vocabulary logits
