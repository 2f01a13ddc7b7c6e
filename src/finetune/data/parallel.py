"""Render + tokenize + mask batches of samples on every core, results in submission order.

`encode_batches` runs `encode_batch` over a stream of jobs, either in this process (`workers`
1) or in a pool of forked worker processes, with at most two jobs per worker in flight so
memory stays bounded whatever the corpus. Each worker is single-threaded (the Rust tokenizer's
own thread pool is turned off there), so N workers use N cores; in this process the tokenizer
keeps its parallel batch encoding. Forked workers inherit the tokenizer and template (nothing
is pickled but the samples going out and the token arrays coming back).

A worker that dies (the kernel's out-of-memory killer, a crash) ends the run within moments with a
`WorkerDied` error naming how it ended: the pool is a `concurrent.futures.ProcessPoolExecutor`, which
notices a dead worker and fails every pending job (`multiprocessing.Pool` would silently start a new
worker and wait forever for the lost job's result).
"""

from __future__ import annotations

import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune.data.pack import Ragged
from finetune.data.tokenize import IGNORE_INDEX, encode_completions, encode_conversations
from finetune.errors import DataError, FinetuneError

IN_FLIGHT_PER_WORKER = 2


class WorkerDied(FinetuneError):
    """A preprocessing worker process ended before returning its batch (exit code 1: the environment)."""


@dataclass(frozen=True)
class EncodeOptions:
    """How one dataset's samples are encoded (its `type` and masking settings)."""

    completion: bool
    roles_to_train: tuple[str, ...] = ("assistant",)
    train_on_eos: str = "turn"
    train_on_inputs: bool = False


@dataclass(frozen=True)
class Job:
    """A batch of samples, where its first one came from (for errors), and the caller's tag for it."""

    samples: list[Any]
    options: EncodeOptions
    first_origin: str
    tag: Any = None


@dataclass(frozen=True)
class Encoder:
    """What encoding needs besides the samples (inherited by forked workers)."""

    tokenizer: Any
    template: Any
    token_lengths: np.ndarray | None


def encode_batch(encoder: Encoder, samples: list[Any], options: EncodeOptions) -> tuple[Ragged, Ragged]:
    """(input_ids, labels) of the samples, each sample's first label masked (it is never predicted:
    the model shifts labels, and a packed sample must not predict across a boundary)."""
    if options.completion:
        pairs = encode_completions(samples, tokenizer=encoder.tokenizer)
    else:
        pairs = encode_conversations(
            samples,
            template=encoder.template,
            tokenizer=encoder.tokenizer,
            roles_to_train=options.roles_to_train,
            train_on_eos=options.train_on_eos,  # type: ignore[arg-type]
            train_on_inputs=options.train_on_inputs,
            token_lengths=encoder.token_lengths,
        )
    ids = Ragged.from_arrays([pair[0] for pair in pairs])
    labels = Ragged.from_arrays([pair[1] for pair in pairs])
    labels.values[ids.offsets[:-1][ids.lengths > 0]] = IGNORE_INDEX
    return ids, labels


def resolve_workers(setting: int, cores: int | None = None) -> int:
    """`preprocess_workers`, with 0 (auto) resolved: one process per core on more than 2 cores, else 1.

    On 2 cores the pool measured no faster than this process alone, whose Rust batch encoding
    already uses both, and each forked worker adds resident memory (docs/benchmarks.md); with more
    cores the pool also spreads the Python half of the work (rendering, masking) over them.
    """
    if setting > 0:
        return setting
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return cores if cores > 2 else 1


def encode_batches(encoder: Encoder, jobs: Iterable[Job], workers: int) -> Iterator[tuple[Job, Ragged, Ragged]]:
    """(job, input_ids, labels) for every job, in order. A DataError names the batch's first row."""
    if workers <= 1:
        for job in jobs:
            yield job, *_run(encoder, job)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("fork")
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(encoder,))
    processes: list[Any] = []
    finished = False
    try:
        pending: deque[tuple[Job, Any]] = deque()
        for job in jobs:
            if processes:
                pending.append((job, pool.submit(_run_in_worker, job)))
            else:  # the workers are forked at the first submit; kept to tell how one ended
                pending.append((job, _first_submit(pool, job)))
                processes = [p for p in multiprocessing.active_children() if p not in before]
            while len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                done, future = pending.popleft()
                yield done, *future.result()
        while pending:
            done, future = pending.popleft()
            yield done, *future.result()
        finished = True
    except BrokenProcessPool:
        raise WorkerDied(_death_message(processes, workers)) from None
    finally:
        pool.shutdown(wait=finished, cancel_futures=True)
        if not finished:  # an error, or the caller stopped early: running jobs are not waited for
            for process in processes:
                process.terminate()
            for process in processes:
                process.join()


def _first_submit(pool: Any, job: Job) -> Any:
    # Children must not inherit a used Rust thread pool's state (the tokenizers library would warn
    # and turn it off); with the variable set while forking they start single-threaded and quiet.
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return pool.submit(_run_in_worker, job)
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def _death_message(processes: list[Any], workers: int) -> str:
    """What ended the first worker that did not stop at the pool's own SIGTERM, and what to do."""
    for process in processes:
        process.join(timeout=5)
    codes = [process.exitcode for process in processes if process.exitcode not in (None, 0, -signal.SIGTERM)]
    if codes and codes[0] < 0:
        number = -codes[0]
        cause = f"killed by signal {number} ({signal.Signals(number).name})"
        if number == signal.SIGKILL:
            cause = f"killed by signal {number}: out of memory?"
    elif codes:
        cause = f"exit code {codes[0]}"
    else:
        cause = "it ended abruptly"
    return (
        f"a preprocessing worker died ({cause}); nothing was cached. Lower preprocess_workers (now {workers} "
        "processes; 1 = the main process only) or preprocess_shard_size, or free memory, and run again"
    )


def _run(encoder: Encoder, job: Job) -> tuple[Ragged, Ragged]:
    try:
        return encode_batch(encoder, job.samples, job.options)
    except DataError as exc:
        raise DataError(f"{job.first_origin} (or a later row of this batch): {exc}") from None


_WORKER: dict[str, Encoder] = {}  # set once in each worker process by _init_worker (empty in the parent)


def _init_worker(encoder: Encoder) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (it ends the pool)
    _WORKER["encoder"] = encoder


def _run_in_worker(job: Job) -> tuple[Ragged, Ragged]:
    return _run(_WORKER["encoder"], job)
