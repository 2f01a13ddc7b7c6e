"""Blind-test picks become DPO pairs, and held-out conversations become blind-test contexts.

Each pick is one line appended to `output_dir/preferences.jsonl` in the `chat_template.default` pair format
that `rl: dpo` reads (`messages` = the context, `chosen` / `rejected` = assistant messages), plus `models`
(which model wrote which reply; readers ignore it). A line is written whole and fsynced before the request
returns, under a lock, so concurrent picks never interleave and a crash loses at most the pick in flight.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from finetune.errors import DataError


class PreferenceLog:
    """Appends pairs to one JSONL file; `append` returns how many pairs the file holds."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, context: list[dict[str, str]], chosen: str, rejected: str, models: dict[str, str]) -> int:
        row = {"messages": context, "chosen": {"role": "assistant", "content": chosen},
               "rejected": {"role": "assistant", "content": rejected}, "models": models}
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            with self.path.open("rb") as handle:
                return sum(1 for _ in handle)


def heldout_contexts(path: Path, limit: int = 200) -> list[dict[str, Any]]:
    """Blind-test contexts from a JSONL file of conversations (`{"messages": [...]}`, as `finetune import`
    writes): each becomes the turns before its last assistant turn, and that turn as your real reply.
    DataError naming file:line for a row that is not such a conversation."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--heldout {path}: no such file")
    contexts = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            messages = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(messages, list) or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in messages):
                raise DataError(f'{path}:{number}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
            if last is None or last == 0:
                continue  # nothing of yours to compare against, or nothing that prompts it
            context = [{"role": m["role"], "content": m["content"]} for m in messages[:last]]
            contexts.append({"messages": context, "reply": messages[last]["content"]})
            if len(contexts) >= limit:
                break
    return contexts
