"""Messages of one chat -> training rows: split at silences, merge same-side turns, trim, count."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterable

from finetune.errors import DataError, FinetuneError
from finetune.importers.redact import name_pattern, redact, redact_names
from finetune.runs.atomic import publish, temp_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """One text message: seconds since the epoch, who sent it (id and display name), the text."""

    time: float
    sender_id: str
    sender: str
    text: str


@dataclass(frozen=True)
class ImportOptions:
    me: str | None
    gap_seconds: float = 6 * 3600
    system: str | None = None
    min_turns: int = 2
    speaker_names: bool = False
    redact: bool = False
    redact_names: bool = False


@dataclass
class Stats:
    """What an import read, kept and dropped, for the summary table."""

    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    conversations: int = 0
    conversations_dropped: Counter = field(default_factory=Counter)
    turns: int = 0
    characters: int = 0
    redactions: Counter = field(default_factory=Counter)
    senders: Counter = field(default_factory=Counter)
    me_spoke: int = 0
    notices: list[str] = field(default_factory=list)
    cleaned: Counter = field(default_factory=Counter)  # kept, but something WhatsApp or the app added was removed
    unknown: defaultdict = field(default_factory=lambda: defaultdict(Counter))  # placeholder -> sender -> count
    replies: Counter = field(default_factory=Counter)  # contact -> your messages kept
    words: Counter = field(default_factory=Counter)  # contact -> words in your messages kept

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n


def is_me(options: ImportOptions, me_ids: set[str], message: Message) -> bool:
    return message.sender_id in me_ids or (options.me is not None and message.sender == options.me)


def split_conversations(messages: Iterable[Message], gap_seconds: float) -> Iterable[list[Message]]:
    """Consecutive runs of messages with no silence longer than `gap_seconds`."""
    current: list[Message] = []
    for message in messages:
        if current and message.time - current[-1].time > gap_seconds:
            yield current
            current = []
        current.append(message)
    if current:
        yield current


def start_time(seconds: float) -> str:
    """A conversation's start as ISO 8601 (UTC, seconds precision) for the row's `start` field."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="seconds")


def pseudonym(name: str) -> str:
    """A stable stand-in for a contact label under --redact-names: the same name gives the same label in
    every file and every run, and the name cannot be read back from it."""
    return "contact-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]


def chat_rows(messages: Iterable[Message], options: ImportOptions, me_ids: set[str], stats: Stats,
              contact: str | None = None, others: set[str] | None = None) -> Iterable[dict]:
    """The training rows of one chat's text messages (in time order). Each row carries, beside `messages`,
    `start` (its first message's time, ISO 8601) and `contact` (the chat's label: the other person or the
    group's name, a pseudonym under --redact-names; default: the other senders' names joined).
    `others`: the names of the senders who are not me, when the caller knows them; then `messages` is read
    once, one conversation held at a time (else they are all read first, to find them)."""
    if others is None:
        messages = list(messages)
        others = {m.sender for m in messages if not is_me(options, me_ids, m)}
    label = contact if contact is not None else ", ".join(sorted(others))
    if options.redact_names:
        label = pseudonym(label)
    names = name_pattern(others) if options.redact_names else None
    pseudonyms = {name: f"Person {i}" for i, name in enumerate(sorted(others), 1)}
    for conversation in split_conversations(messages, options.gap_seconds):
        turns: list[list] = []  # [role, [texts], message count]
        for m in conversation:
            role = "assistant" if is_me(options, me_ids, m) else "user"
            text = m.text
            if options.redact:
                text = redact(text, stats.redactions)
            if names is not None:
                text = redact_names(text, names, stats.redactions)
            if role == "user" and options.speaker_names:
                speaker = pseudonyms[m.sender] if options.redact_names else m.sender
                text = f"{speaker}: {text}"
            if turns and turns[-1][0] == role:
                turns[-1][1].append(text)
                turns[-1][2] += 1
            else:
                turns.append([role, [text], 1])
        if not any(t[0] == "assistant" for t in turns):
            stats.conversations_dropped["me never speaks"] += 1
            stats.drop("conversation without me", len(conversation))
            continue
        while turns and turns[0][0] == "assistant":  # nothing prompts it
            stats.drop("leading own messages", turns.pop(0)[2])
        while turns and turns[-1][0] == "user":  # nothing answers it
            stats.drop("trailing unanswered", turns.pop()[2])
        if len(turns) < max(options.min_turns, 2):
            stats.conversations_dropped["shorter than --min-turns"] += 1
            stats.drop("too short", sum(t[2] for t in turns))
            continue
        rows = [{"role": "system", "content": options.system}] if options.system else []
        rows += [{"role": role, "content": "\n".join(texts)} for role, texts, _ in turns]
        stats.conversations += 1
        stats.replies[label] += sum(t[2] for t in turns if t[0] == "assistant")
        stats.words[label] += sum(len(text.split()) for t in turns if t[0] == "assistant" for text in t[1])
        stats.turns += len(turns)
        stats.kept += sum(t[2] for t in turns)
        stats.characters += sum(len(r["content"]) for r in rows)
        yield {"messages": rows, "start": start_time(conversation[0].time), "contact": label}


class AtomicJsonl:
    """Rows written to a temporary file beside `path`, made `path` only on `commit()` (`finetune.runs.atomic`). A write that fails
    (a full disk) removes the temporary file and raises a FinetuneError naming the output (exit code 1)."""

    def __init__(self, path: Path, overwrite: bool):
        if path.exists() and not overwrite:
            raise DataError(f"{path}: already exists; pass --overwrite to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.tmp = path, temp_path(path)
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.file: IO[str] = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, row: dict) -> None:
        try:
            self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
        except OSError as exc:
            self._fail(exc)

    def commit(self) -> None:
        try:
            self.file.close()
            publish(self.tmp, self.path)  # fsync, rename, fsync the directory
        except OSError as exc:
            self._fail(exc)

    def abort(self) -> None:
        try:
            self.file.close()  # flushes what is buffered: may fail again on a full disk, and still closes
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)

    def _fail(self, exc: OSError) -> None:
        self.abort()
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            free = shutil.disk_usage(self.path.parent).free / 1e6
            raise FinetuneError(f"{self.path}: no space left on the disk while writing ({free:,.0f} MB free); "
                                f"nothing was written (the partial file was removed) — free some space and "
                                f"run the import again") from None
        raise FinetuneError(f"{self.path}: cannot write: {exc.strerror or exc}; nothing was written (the partial "
                            f"file was removed)") from None


def check_me_spoke(stats: Stats, me_label: str) -> None:
    if stats.read == 0:
        raise DataError("the export holds no text messages")
    if stats.me_spoke == 0:
        seen = ", ".join(f"{name} ({n})" for name, n in stats.senders.most_common(20))
        raise DataError(f"--me {me_label!r} never speaks in this export; senders seen (messages): {seen}")


# How much data does style fine-tuning need? A rule of thumb, not measured by finetune; this is the one place
# it lives (docs/importing-chats.md quotes it). One training example = one conversation written (one row).
#   OpenAI API docs, supervised fine-tuning guide, "Right number of examples" (developers.openai.com): at
#     least 10 examples; improvements are seen from 50-100; start with 50 well-crafted ones.
#   LIMA (Zhou et al. 2023, "LIMA: Less Is More for Alignment", arXiv:2305.11206): 1,000 curated examples
#     taught a 65B model a consistent response style.
#   WeClone (github.com/xming521/WeClone, README): about 20,000 cleaned chat samples gave its author a clone
#     of himself he called only passable.
DATA_SIZE_RULE = (
    (10, "below the 10 examples OpenAI's fine-tuning guide requires; import more chats"),
    (50, "below the 50 examples OpenAI's fine-tuning guide suggests starting with"),
    (1_000, "past OpenAI's suggested start (50), short of LIMA's 1,000 curated examples"),
    (20_000, "past LIMA's 1,000 examples, short of the ~20,000 chat samples of WeClone's author"),
)


def data_size_note(conversations: int) -> str:
    """Where `conversations` training examples stand against DATA_SIZE_RULE (a rule of thumb, not measured)."""
    for limit, note in DATA_SIZE_RULE:
        if conversations < limit:
            return note
    return "at or past the ~20,000 chat samples of WeClone's author"


def print_summary(stats: Stats, output: Path, file: IO[str] | None = None, top: int = 10) -> None:
    file = file or sys.stderr
    rows = [("messages read", stats.read), ("messages kept", stats.kept)]
    rows += [(f"  dropped: {reason}", n) for reason, n in sorted(stats.dropped.items())]
    rows += [(f"  cleaned: {reason}", n) for reason, n in sorted(stats.cleaned.items())]
    rows += [("conversations written", stats.conversations)]
    rows += [(f"  conversations dropped: {r}", n) for r, n in sorted(stats.conversations_dropped.items())]
    rows += [("turns", stats.turns), ("characters", stats.characters)]
    rows += [("your replies kept", sum(stats.replies.values())), ("your words kept", sum(stats.words.values()))]
    rows += [(f"redacted: {kind}", n) for kind, n in sorted(stats.redactions.items()) if n]
    width = max(len(k) for k, _ in rows)
    for notice in stats.notices:
        logger.info("%s", notice)
    print(f"wrote {output}", file=file)
    for key, value in rows:
        print(f"{key:<{width}}  {value:>10,}", file=file)
    if len(stats.replies) > 1:
        print(f"your replies kept per contact (top {min(top, len(stats.replies))} of {len(stats.replies)}):",
              file=file)
        for contact, n in stats.replies.most_common(top):
            print(f"  {contact[:40]:<40}  {n:>8,} {'reply  ' if n == 1 else 'replies'}  "
                  f"{stats.words[contact]:>10,} words", file=file)
    print(f"how much data: {stats.conversations:,} conversations — {data_size_note(stats.conversations)} "
          f"(a rule of thumb, not measured; see docs/importing-chats.md)", file=file)
    if stats.unknown:
        print("not recognised, left out (probably WhatsApp's own text in a language finetune's tables lack; "
              "please report it with the export's language):", file=file)
        ranked = sorted(stats.unknown.items(), key=lambda item: -sum(item[1].values()))
        for text, senders in ranked[:5]:
            people = len(senders)
            print(f"  {text!r}: {sum(senders.values()):,}x, from {people} {'sender' if people == 1 else 'senders'}",
                  file=file)
