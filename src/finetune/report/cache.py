"""The generation cache: a rerun of `finetune report` only generates what is new.

One JSON file per model weights fingerprint (`finetune.report.models.weights_hash`) under
`<report dir>/generations/`, mapping a key of (prompt token ids, generation settings, stop ids and
strings) to the reply and its token count. A checkpoint that was already reported, or a final adapter
identical to the last checkpoint, costs nothing the second time. Files are replaced atomically (temp
file, fsync, rename) after every batch, so an interrupted report keeps what it generated and a reader
never sees half a file; an unreadable file is ignored (and regenerated).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from finetune.infer.generate import Generated
from finetune.runs.atomic import write_text


def prompt_key(prompt: Sequence[int], settings: dict[str, Any]) -> str:
    blob = json.dumps([list(prompt), settings], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class GenerationCache:
    """The cached replies of one model (by its weights fingerprint)."""

    def __init__(self, directory: Path, weights: str) -> None:
        self.path = Path(directory) / f"{weights[:32]}.json"
        self.replies: dict[str, dict[str, Any]] = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("replies"), dict):
                self.replies = data["replies"]
        except (OSError, ValueError):
            pass

    def get(self, key: str) -> Generated | None:
        hit = self.replies.get(key)
        if isinstance(hit, dict) and isinstance(hit.get("text"), str):
            return Generated(hit["text"], int(hit.get("new_tokens", 0)))
        return None

    def put(self, items: dict[str, Generated]) -> None:
        for key, reply in items.items():
            self.replies[key] = {"text": reply.text, "new_tokens": reply.new_tokens}
        write_text(self.path, json.dumps({"replies": self.replies}, ensure_ascii=False))
