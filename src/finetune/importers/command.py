"""`finetune import telegram|whatsapp|discord|messenger|instagram`: the run that reads an export, writes rows and
prints the summary (its arguments: importers/arguments.py)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from finetune.errors import DataError
from finetune.importers.conversations import AtomicJsonl, ImportOptions, Stats, check_me_spoke, print_summary
from finetune.importers.discord import import_discord
from finetune.importers.meta import find_threads, import_meta
from finetune.importers.telegram import import_telegram
from finetune.importers.whatsapp import import_whatsapp


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(value) * units[unit]
    except ValueError:
        raise DataError(f"--gap {text!r}: expected a duration such as 90m, 6h or 2d") from None
    if seconds <= 0:
        raise DataError(f"--gap {text!r}: must be positive")
    return seconds


class _Progress:
    """A line on stderr every few seconds while a large file is read."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled and total > 20_000_000
        self.start = self.last = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last >= 2:
            self.last = now
            rate = done / max(now - self.start, 1e-9) / 1e6
            print(f"read {done / 1e6:,.0f} of {self.total / 1e6:,.0f} MB ({100 * done / self.total:.0f}%, "
                  f"{rate:.0f} MB/s)", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    options = ImportOptions(me=args.me, gap_seconds=parse_duration(args.gap), system=args.system,
                            min_turns=args.min_turns, speaker_names=args.speaker_names, redact=args.redact,
                            redact_names=args.redact_names)
    paths = [Path(p) for p in args.exports]
    meta = args.kind in ("messenger", "instagram")
    for path in paths:
        if not (path.is_file() or (meta and path.is_dir())):
            raise DataError(f"{path}: no such file" + (" or folder" if meta else ""))
    if args.thread and not meta:
        raise DataError("--thread selects Messenger/Instagram conversations; it does not apply to " + args.kind)
    if args.kind == "discord" and not args.me:
        raise DataError("discord: pass --me NAME (your Discord user name, display name or user id)")
    if args.kind == "telegram" and len(paths) != 1:
        raise DataError("telegram: pass one result.json (a full-account export holds every chat)")
    if args.kind == "whatsapp" and not args.me:
        raise DataError("whatsapp: pass --me NAME (your name as it appears in the export)")
    output = Path(args.output)
    stats = Stats()
    out = AtomicJsonl(output, args.overwrite)
    try:
        if args.kind == "telegram":
            progress = _Progress(paths[0].stat().st_size, not args.no_progress)
            import_telegram(paths[0], options, out.write, stats, progress)
        elif args.kind == "discord":
            import_discord(paths, options, out.write, stats,
                           lambda path: _Progress(path.stat().st_size, not args.no_progress))
        elif meta:
            threads = find_threads(paths, args.kind)
            size = sum(f.stat().st_size for files in threads.values() for f in files)
            import_meta(threads, options, args.thread or [], out.write, stats, _Progress(size, not args.no_progress))
        else:
            import_whatsapp(paths, options, args.date_order, out.write, stats,
                            lambda path: _Progress(2 * path.stat().st_size, not args.no_progress))  # two passes
        check_me_spoke(stats, args.me or "(from personal_information)")
        if stats.conversations == 0:
            raise DataError("no conversation left to write (every one was dropped; see --gap and --min-turns)")
    except BaseException:
        out.abort()
        raise
    out.commit()
    print_summary(stats, output)
    return 0
