"""The command line: help without heavy imports, clean errors and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from finetune.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "finetune", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_help_lists_commands_without_importing_torch():
    code = (
        "import sys\n"
        "from finetune.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'pydantic', 'yaml') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    help_text = run_cli("--help").stdout
    for command in ("validate", "keys", "preprocess", "train"):
        assert command in help_text


def test_validate_shipped_recipe_prints_derived_values(capsys):
    assert main(["validate", str(ROOT / "configs" / "llama31-8b-qlora-dora-zero2.yml"), "--num-processes", "2"]) == 0
    out, err = capsys.readouterr()
    assert "effective batch per optimizer step  4 rows" in out
    assert "attention backend" in out and "sample packing" in out and "evaluate 1x per epoch" in out
    assert "warning: " in err and "attn_implementation: flash_attention_2" in err  # the deprecated spelling


def test_bad_recipe_exits_2_without_traceback(tmp_path):
    recipe = tmp_path / "r.yml"
    recipe.write_text("base_model: m\ndatasets:\n  - path: d.jsonl\nlora_alfa: 3\n")
    result = run_cli("validate", str(recipe))
    assert result.returncode == 2
    assert f"{recipe}:4: lora_alfa: unknown key, did you mean `lora_alpha`?" in result.stderr
    assert "Traceback" not in result.stderr


def test_set_override_errors_are_reported(capsys, tmp_path):
    recipe = tmp_path / "r.yml"
    recipe.write_text("base_model: m\ndatasets:\n  - path: d.jsonl\n")
    assert main(["validate", str(recipe), "--set", "micro_batch_size=0"]) == 2
    assert "--set micro_batch_size=0: micro_batch_size: Input should be greater than 0" in capsys.readouterr().err
    assert main(["validate", str(recipe), "--set", "micro_batch_size=3", "--quiet"]) == 0


def test_keys_lists_documented_keys(capsys):
    assert main(["keys"]) == 0
    out = capsys.readouterr().out
    assert "lora_alpha: float = 16" in out
    assert "datasets[].roles_to_train" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["preprocess", "--show", "-1"], "--show takes a count of rows"),
    (["plan", "--num-processes", "-1"], "--num-processes must be at least 1"),
    (["export", "--gguf", "f16", "--base-gguf", "base.gguf"], "--base-gguf goes with --adapter-only"),
])
def test_bad_flags_are_usage_errors_with_exit_2(capsys, argv, message):
    # every command reports problems by raising; main prints `error: ...` once and returns the exit code
    recipe = str(ROOT / "configs" / "llama31-8b-qlora-single-gpu.yml")
    assert main([*argv[:1], recipe, *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err and "Traceback" not in err


def test_missing_recipe_file_exits_2(capsys, tmp_path):
    assert main(["validate", str(tmp_path / "missing.yml")]) == 2
    assert "recipe file not found" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs").rglob("*.yml")) + sorted((ROOT / "examples").rglob("*.yml")))
def test_every_shipped_recipe_validates(recipe):
    assert main(["validate", str(recipe), "--quiet"]) == 0


def test_train_checks_data_paths_before_loading_anything(tmp_path, capsys):
    recipe = tmp_path / "r.yml"
    recipe.write_text("base_model: some/unreachable-model\ndatasets:\n  - path: missing.jsonl\n")
    assert main(["train", str(recipe)]) == 2
    assert f"{recipe}:3: dataset path `missing.jsonl` does not exist" in capsys.readouterr().err
    assert main(["preprocess", str(recipe)]) == 2
    assert f"{recipe}:3: dataset path `missing.jsonl` does not exist" in capsys.readouterr().err
