#!/usr/bin/env python
"""Near-duplicate filtering: datasketch vs rensa on synthetic chat-like conversations.

Usage: python scripts/bench_dedup.py [--conversations 50000] [--planted 0.05] [--threshold 0.8]

Builds deterministic multi-turn conversations (2-6 turns, user lines, longer answers and
some filler replies over a 3,000-word vocabulary) and plants near-duplicates: copies of an earlier
conversation with a few word edits (replace, delete or insert 1-3 words). Both libraries run
the same algorithm as `finetune.data.neardup.near_duplicates` (word shingles, 128
permutations, the same LSH bands, exact-Jaccard check of every candidate, first occurrence
kept); the rensa row calls that function itself. Prints a Markdown table: seconds, removed,
recall (planted copies whose exact Jaccard to their source is >= threshold that were removed)
and precision (removed conversations that are planted copies), plus the load average.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from finetune.data.neardup import (
    NUM_PERM,
    bands_for,
    conversation_text,
    jaccard,
    near_duplicates,
    shingles,
)

SYLLABLES = "ka ri to na mi se lo pu de fa ve in on an er es al or ti ra ne co ma li ta pe so du be".split()
FILLER = ["ok", "lol", "yes", "sure", "thanks!", "haha", "no", "ok see you"]


def corpus(n: int, planted: float, seed: int = 0) -> tuple[list[list[dict]], dict[int, int]]:
    """(conversations, {copy index: source index})."""
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < 3000:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
    vocab = sorted(words)

    def text(mean: int, filler: float = 0.0) -> str:
        if rng.random() < filler:
            return rng.choice(FILLER)
        return " ".join(rng.choice(vocab) for _ in range(max(2, int(rng.expovariate(1 / mean)))))

    samples: list[list[dict]] = []
    sources: dict[int, int] = {}
    for index in range(n):
        if index > 10 and rng.random() < planted:
            source = rng.randrange(index)
            while source in sources:
                source = sources[source]
            copy = [dict(message) for message in samples[source]]
            for _ in range(rng.randint(1, 3)):
                message = rng.choice(copy)
                tokens = message["content"].split()
                at = rng.randrange(len(tokens))
                edit = rng.choice(("replace", "delete", "insert"))
                if edit == "replace":
                    tokens[at] = rng.choice(vocab)
                elif edit == "delete" and len(tokens) > 1:
                    del tokens[at]
                else:
                    tokens.insert(at, rng.choice(vocab))
                message["content"] = " ".join(tokens)
            samples.append(copy)
            sources[index] = source
            continue
        conversation = []
        for _ in range(rng.randint(1, 3)):
            conversation.append({"role": "user", "content": text(12)})
            conversation.append({"role": "assistant", "content": text(40, filler=0.15)})
        samples.append(conversation)
    return samples, sources


def with_datasketch(samples: list, *, threshold: float, ngram: int, seed: int) -> set[int]:
    from datasketch import MinHash, MinHashLSH

    bands = bands_for(threshold)
    lsh = MinHashLSH(num_perm=NUM_PERM, params=(bands, NUM_PERM // bands))
    kept: dict[int, set[str]] = {}
    removed: set[int] = set()
    for index, sample in enumerate(samples):
        tokens = shingles(conversation_text(sample), ngram)
        signature = MinHash(num_perm=NUM_PERM, seed=seed)
        signature.update_batch([token.encode() for token in sorted(tokens)])
        best = max((jaccard(tokens, kept[c]) for c in lsh.query(signature)), default=0.0)
        if best >= threshold:
            removed.add(index)
        else:
            kept[index] = tokens
            lsh.insert(index, signature)
    return removed


def with_rensa(samples: list, *, threshold: float, ngram: int, seed: int) -> set[int]:
    return {pair.removed for pair in near_duplicates(samples, threshold=threshold, ngram=ngram, seed=seed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=50_000)
    parser.add_argument("--planted", type=float, default=0.05)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--ngram", type=int, default=3)
    parser.add_argument("--libraries", default="rensa,datasketch")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    samples, sources = corpus(args.conversations, args.planted)
    expected = {
        copy
        for copy, source in sources.items()
        if jaccard(shingles(conversation_text(samples[copy]), args.ngram),
                   shingles(conversation_text(samples[source]), args.ngram)) >= args.threshold
    }
    print(f"{len(samples):,} conversations, {len(sources):,} planted copies "
          f"({len(expected):,} with exact Jaccard >= {args.threshold}), ngram {args.ngram}, "
          f"{NUM_PERM} permutations, {bands_for(args.threshold)} bands\n")
    print("| library | seconds | removed | recall (planted >= threshold) | precision (removed are planted) |")
    print("|---|---:|---:|---:|---:|")
    runs = {"rensa": with_rensa, "datasketch": with_datasketch}
    for name in args.libraries.split(","):
        started = time.perf_counter()
        removed = runs[name](samples, threshold=args.threshold, ngram=args.ngram, seed=42)
        seconds = time.perf_counter() - started
        recall = len(removed & expected) / len(expected) if expected else 1.0
        precision = len(removed & set(sources)) / len(removed) if removed else 1.0
        print(f"| {name} | {seconds:.2f} | {len(removed):,} | {recall:.2%} | {precision:.2%} |")
    print(f"\nload average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
