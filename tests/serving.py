"""A uvicorn server in a thread for the tests of `finetune serve` (API, page, benchmarks' checks)."""

from __future__ import annotations

import threading
import time
from typing import Any

class ServerThread:
    """uvicorn in a thread, on a socket bound here; `url` once it accepts connections."""

    def __init__(self, app: Any):
        import uvicorn

        from finetune.serve.command import listen

        self.sock = listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
