#!/usr/bin/env python
"""Build a tiny, offline, deterministic Llama 3.1-style model directory.

Usage: python scripts/make_tiny_llama.py OUT_DIR [--hidden-size 64] [--layers 2] [--seed 0]

Thin wrapper around :func:`finetune.testing.tiny_llama.build_tiny_llama` (needs `pip install 'finetune[tiny]'`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finetune.log import configure
from finetune.testing.tiny_llama import build_tiny_llama

__all__ = ["build_tiny_llama", "main"]


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build (or reuse) the model directory, print its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the model and tokenizer into")
    parser.add_argument("--hidden-size", type=int, default=64, help="hidden size (multiple of 4; default 64)")
    parser.add_argument("--layers", type=int, default=2, help="number of decoder layers (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="weight-initialisation seed (default 0)")
    args = parser.parse_args(argv)
    configure()  # the CLI's quiet console: no third-party lines nobody can act on
    out = build_tiny_llama(args.out_dir, hidden_size=args.hidden_size, layers=args.layers, seed=args.seed)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
