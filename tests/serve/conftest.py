"""A served pair of runs on one tiny base, shared by the API and page tests: two adapters (different seeds) over
the same base, behind a real uvicorn server on 127.0.0.1 (port picked by the OS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from serving import ServerThread



@pytest.fixture(scope="session")
def served_runs(make_adapter_run: Any) -> list[tuple[Path, Any]]:
    """Two finished runs of one base with different adapters (named by their folders)."""
    runs = [make_adapter_run(dora=True, seed=1), make_adapter_run(seed=2)]
    for run_dir, settings in runs:
        # a sequence_len the prompt-length check can reach in a test
        recipe = run_dir / "recipe.yml"
        recipe.write_text(recipe.read_text(encoding="utf-8") + "sequence_len: 96\n", encoding="utf-8")
    return runs


@pytest.fixture(scope="session")
def server(served_runs: list[tuple[Path, Any]]) -> Iterator[Any]:
    """The app serving both runs; yields (ServerThread, pool, engine)."""
    from finetune.serve.command import build_server

    app, pool, engine, loader = build_server([str(run_dir / "recipe.yml") for run_dir, _ in served_runs])
    engine.start()
    loader.run()  # load here, before the first request
    assert pool.ready, pool.error
    with ServerThread(app) as thread:
        yield thread, pool, engine
    engine.stop()
