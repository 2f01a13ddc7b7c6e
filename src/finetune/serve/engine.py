"""The one generation worker of `finetune serve`: requests are queued, and those that can share a forward pass
(same model, same sampling) are batched; every row streams its own text and ends on its own.

A request never sees another's tokens: each row of a batch has its own prompt (left-padded, masked), its own
stop ids, stop strings and token limit, and its own text, decoded from its own ids. A batch switches the
adapter once (`ModelPool.use`) and holds it until every row is done. A request with a `seed` runs alone, so
its sampling does not depend on what else was queued. A cancelled request (its client went away) is ended
at the next token, and the batch goes on for the others.

Text is decoded exactly as `finetune chat` decodes it (special tokens skipped, the whole answer stripped), so
at temperature 0 an answer here equals `finetune chat --temperature 0`; streamed pieces join to that text.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from finetune.infer.generate import generation_config, left_pad
from finetune.runs.read import cut_at_stop
from finetune.serve.models import ModelPool

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

MAX_BATCH = 8
BATCH_WAIT = 0.05  # seconds the first request of a batch waits for others (docs/benchmarks.md)


@dataclass(frozen=True)
class Sampling:
    """Per-request generation settings (OpenAI's names); temperature 0 is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None

    @property
    def batch_key(self) -> tuple:
        return (self.temperature, self.top_p) if self.seed is None else ("seed", id(self))


@dataclass
class Job:
    """One chat completion: the prompt ids, how to sample, where its text goes; filled in as it runs."""

    model: str
    prompt_ids: list[int]
    sampling: Sampling
    stop: list[str] = field(default_factory=list)
    on_delta: Callable[[str], None] = lambda text: None
    on_done: Callable[["Job"], None] = lambda job: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    started: float = 0.0
    first_token: float | None = None


class _Row:
    """One job's state inside a batch: its generated ids, decoded text, what was already streamed."""

    def __init__(self, job: Job, tokenizer: PreTrainedTokenizerBase, stop_ids: list[int], stops: list[str]):
        self.job, self.tokenizer, self.stop_ids, self.stops = job, tokenizer, set(stop_ids), [s for s in stops if s]
        self.ids: list[int] = []
        self.sent = 0  # characters of the stripped text already streamed
        self.done = False

    def add(self, token: int) -> None:
        if self.done:
            return
        job = self.job
        if job.first_token is None:
            job.first_token = time.monotonic()
        if token in self.stop_ids:
            return self._finish("stop")
        self.ids.append(token)
        job.completion_tokens = len(self.ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        text, stopped = cut_at_stop(text, self.stops)
        if stopped:
            job.text = text
            return self._finish("stop")
        job.text = text
        if len(self.ids) >= job.sampling.max_tokens:
            return self._finish("length")
        if job.cancelled.is_set():
            return self._finish("cancelled")
        # Stream what can no longer change: not a trailing space (strip), not a possible start of a stop string,
        # not a partly decoded character (U+FFFD).
        safe = len(text.rstrip())
        for stop in self.stops:
            for k in range(min(len(stop) - 1, safe), 0, -1):
                if text[:safe].endswith(stop[:k]):
                    safe -= k
                    break
        while safe > self.sent and text[safe - 1] == "\ufffd":
            safe -= 1
        self._send(text, safe)

    def _send(self, text: str, upto: int) -> None:
        if upto > self.sent:
            self.job.on_delta(text[self.sent:upto])
            self.sent = upto

    def _finish(self, reason: str) -> None:
        job = self.job
        job.text = job.text.strip()
        self._send(job.text, len(job.text))
        job.finish_reason = reason
        self.done = True


class Engine:
    """A worker thread that takes queued jobs, batches the compatible ones, and runs them on the pool's model."""

    def __init__(self, pool: ModelPool, max_batch: int = MAX_BATCH, batch_wait: float = BATCH_WAIT):
        self.pool, self.max_batch, self.batch_wait = pool, max_batch, batch_wait
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.busy = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="finetune-serve-engine", daemon=True)
        self._stopping = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self.jobs.put(None)  # type: ignore[arg-type]  # wakes the loop

    def submit(self, job: Job) -> None:
        job.started = time.monotonic()
        self.jobs.put(job)

    def _loop(self) -> None:
        held: list[Job] = []
        while not self._stopping:
            first = held.pop(0) if held else self.jobs.get()
            if first is None:
                continue
            batch, rest = [first], []
            # Whatever else is waiting joins if it can share the forward pass; requests sent together arrive a few
            # milliseconds apart, so the first one waits up to `batch_wait` for company before it runs.
            deadline = time.monotonic() + self.batch_wait
            while len(batch) < self.max_batch:
                try:
                    job = held.pop(0) if held else self.jobs.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if job is None:
                    continue
                fits = job.model == first.model and job.sampling.batch_key == first.sampling.batch_key
                (batch if fits else rest).append(job)
            held = rest + held
            self.busy.set()
            try:
                self.run_batch(batch)
            except Exception as exc:  # a failed batch fails its requests, never the server
                logger.exception("generation failed")
                for job in batch:
                    job.error, job.finish_reason = f"{type(exc).__name__}: {exc}", job.finish_reason or "error"
            finally:
                self.busy.clear()
                for job in batch:
                    job.on_done(job)

    def run_batch(self, batch: list[Job]) -> None:
        """Generate every job of `batch` (one model, one sampling) in one left-padded `generate` call."""
        import torch  # noqa: F811  (the TYPE_CHECKING import names the type; this one runs)
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        batch = [job for job in batch if not job.cancelled.is_set()]
        if not batch:
            return
        served = self.pool.served[batch[0].model]
        tokenizer = served.tokenizer
        rows = [_Row(job, tokenizer, served.stop_ids, [*served.stop_strings, *job.stop]) for job in batch]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else served.stop_ids[0]
        ids, mask = left_pad([job.prompt_ids for job in batch], pad)

        class Rows(BaseStreamer):
            prompt_seen = False

            def put(self, value: torch.Tensor) -> None:
                if not self.prompt_seen:  # generate() hands the prompt over first
                    self.prompt_seen = True
                    return
                for row, token in zip(rows, value.view(-1).tolist()):
                    row.add(token)

            def end(self) -> None:
                for row in rows:
                    if not row.done:
                        row._finish("length")

        class RowsDone(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
                for row in rows:
                    if not row.done and row.job.cancelled.is_set():
                        row._finish("cancelled")
                return torch.tensor([row.done for row in rows], device=input_ids.device)

        sampling = batch[0].sampling
        config = generation_config(temperature=sampling.temperature, top_p=sampling.top_p,
                                   max_new_tokens=max(job.sampling.max_tokens for job in batch),
                                   stop_ids=served.stop_ids, pad_id=pad)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        with self.pool.use(served.name) as model, torch.no_grad():
            device = next(model.parameters()).device
            model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                           streamer=Rows(), stopping_criteria=StoppingCriteriaList([RowsDone()]))
