"""`finetune serve recipe.yml [more recipes or run folders...]`: the runs behind an OpenAI-compatible API and a
web page, one base in memory.

The server listens at once and loads in the background (the API answers 503 until the models are in); it
prints the URL, shows loading progress, and logs one line per request (model, tokens, tokens/s). It binds
127.0.0.1 unless `--host` says otherwise, and warns when it listens beyond this machine without `--api-key`.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.errors import FinetuneError
from finetune.runs.layout import PREFERENCES
from finetune.serve.app import ServeOptions, create_app
from finetune.serve.engine import Engine
from finetune.serve.models import ModelPool, resolve_sources
from finetune.serve.preferences import heldout_contexts

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def build_server(paths: list[str], *, overrides: list[str] | None = None, api_key: str | None = None,
                 checkpoints: bool = False, heldout: str | None = None) -> tuple[FastAPI, ModelPool, Engine, threading.Thread]:
    """The app, its (still empty) pool, the engine, and the thread that loads the models into the pool."""
    sources = resolve_sources(paths, overrides)
    contexts = heldout_contexts(Path(heldout)) if heldout is not None else []
    preferences = Path(sources[0].settings.output_dir) / PREFERENCES
    pool = ModelPool()
    engine = Engine(pool)
    app = create_app(pool, engine, ServeOptions(api_key=api_key, preferences=preferences, heldout=contexts))

    def load() -> None:
        try:
            pool.load(sources, checkpoints=checkpoints)
        except Exception as exc:  # the API answers 503 with the reason; the log has it too
            pool.error = str(exc)
            logger.error("loading failed: %s", exc)
            return
        logger.info("ready: %s", ", ".join(pool.served))

    return app, pool, engine, threading.Thread(target=load, name="finetune-serve-load", daemon=True)


def serve_main(paths: list[str], *, overrides: list[str] | None = None, host: str = "127.0.0.1", port: int = 8000,
               api_key: str | None = None, checkpoints: bool = False, heldout: str | None = None) -> int:
    """`finetune serve`: runs until Ctrl-C; the exit code."""
    if not paths:
        raise FinetuneError("name at least one recipe or run folder to serve")
    app, pool, engine, loader = build_server(paths, overrides=overrides, api_key=api_key, checkpoints=checkpoints,
                                             heldout=heldout)
    import uvicorn

    if host not in LOCAL_HOSTS and api_key is None:
        logger.warning("listening on %s without --api-key: anyone who can reach this machine can use the models "
                       "and write preferences", host)
    sock = listen(host, port)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    engine.start()
    loader.start()
    shown = f"[{host}]" if ":" in host else host
    logger.info("serving on http://%s:%d/ (API: http://%s:%d/v1)", shown, port, shown, port)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then passed Ctrl-C on: the normal way to stop
        pass
    finally:
        engine.stop()
    logger.info("stopped")
    return 0


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0 picks a free port); FinetuneError when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise FinetuneError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None
    sock.listen(128)
    return sock
