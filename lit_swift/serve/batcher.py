"""Dynamic batching of concurrent generation requests over one `RolloutEngine`.

Requests queue up while the engine is busy; when it is free, a worker thread takes every waiting
request with the same sampling settings (up to `max_batch_size`) and generates them as one batch.
Tokens reach each request as they are sampled (through the engine's `on_token` hook), so a request
can stream, stop on its own stop strings or length, or be cancelled (client gone) without waiting
for the rest of its batch: its row stops and frees its slot.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from lit_swift.rollout.engine import Request, SamplingParams

Decode = Callable[[list[int]], str]


@dataclass
class TextState:
    """Incremental detokenisation with stop strings: the text released so far never contains a stop
    string nor a prefix of one that later tokens could complete."""

    decode: Decode
    stop: tuple[str, ...] = ()
    token_ids: list[int] = field(default_factory=list)
    released: str = ""
    stopped: bool = False

    def push(self, token_id: int | None) -> str:
        """Add a token (None: the sequence ended) and return the newly releasable text."""
        if token_id is not None:
            self.token_ids.append(token_id)
        text = self.decode(self.token_ids)
        hits = [text.find(s) for s in self.stop if s in text]
        if hits:
            self.stopped, text = True, text[: min(hits)]
        elif token_id is not None:
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
                return ""
            hold = max(
                (k for s in self.stop for k in range(len(s), 0, -1) if text.endswith(s[:k])), default=0
            )
            text = text[: len(text) - hold]
        if len(text) <= len(self.released):
            return ""
        delta, self.released = text[len(self.released) :], text
        return delta


@dataclass
class Job:
    """One completion being served: its prompt, limits, and where its tokens go.

    `emit(event)` is called from the worker thread with ("token", text delta) events and one final
    ("done", finish_reason); it must be thread-safe (e.g. `loop.call_soon_threadsafe`).
    """

    prompt_ids: list[int]
    seed: int
    sampling: SamplingParams
    text: TextState
    emit: Callable[[tuple[str, str]], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    finish_reason: str | None = None

    def on_token(self, token_id: int) -> bool:
        """Take one sampled token; True when this completion must stop now."""
        if self.cancelled.is_set():
            self.finish_reason = "cancelled"
            return True
        stop_ids = self.sampling.stop_token_ids
        delta = self.text.push(None if token_id in stop_ids else token_id)
        if delta:
            self.emit(("token", delta))
        if token_id in stop_ids or self.text.stopped:
            self.finish_reason = "stop"
        elif len(self.text.token_ids) >= self.sampling.max_new_tokens:
            self.finish_reason = "length"
        return self.finish_reason is not None

    def finish(self, engine_reason: str) -> None:
        if self.finish_reason is None:  # the engine ended the row (its own length cap or stop token)
            self.finish_reason = engine_reason
        if self.finish_reason != "cancelled" and not self.text.stopped:
            delta = self.text.push(None)  # text held back for a possible stop string is final now
            if delta:
                self.emit(("token", delta))
        self.emit(("done", self.finish_reason))


class Batcher:
    """A worker thread feeding batches of waiting jobs to `engine.generate(..., on_token=...)`.

    Args:
        engine: generates a batch and calls `on_token(row, token_id) -> stop_row` per sampled token.
        max_batch_size: most completions generated together.
        batch_wait: seconds a batch that is not full waits for one more request before it starts;
            each arrival restarts the wait (clients answered together come back together).
    """

    def __init__(self, engine, max_batch_size: int = 32, batch_wait: float = 0.05):
        self.engine, self.max_batch_size, self.batch_wait = engine, max_batch_size, batch_wait
        self.waiting: list[Job] = []
        self.cond = threading.Condition()
        self.closed = False
        self.batch_sizes: list[int] = []
        self.running = 0  # completions of the current batch that are still generating
        self.thread = threading.Thread(target=self._loop, name="lit-swift-batcher", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.closed:
                raise RuntimeError("the server is shutting down")
            self.waiting.append(job)
            self.cond.notify()

    def stats(self) -> dict:
        return {"waiting": len(self.waiting), "running": self.running, "batches": len(self.batch_sizes)}

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join()

    def _take(self) -> list[Job] | None:
        """Wait for jobs; the batch is the oldest job and every waiting one sampling like it."""
        with self.cond:
            while not self.waiting and not self.closed:
                self.cond.wait()
            if not self.waiting:
                return None
            while len(self.waiting) < self.max_batch_size and not self.closed:
                count = len(self.waiting)
                self.cond.wait(self.batch_wait)
                if len(self.waiting) == count:
                    break
            key = replace(self.waiting[0].sampling, max_new_tokens=0)
            batch = [j for j in self.waiting if replace(j.sampling, max_new_tokens=0) == key]
            batch = batch[: self.max_batch_size]
            self.waiting = [j for j in self.waiting if j not in batch]
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            live = [j for j in batch if not j.cancelled.is_set()]
            for job in batch:
                if job.cancelled.is_set():
                    job.finish_reason = "cancelled"
                    job.finish("cancelled")
            if live:
                self._run(live)

    def _run(self, batch: list[Job]) -> None:
        self.batch_sizes.append(len(batch))
        sampling = replace(batch[0].sampling, max_new_tokens=max(j.sampling.max_new_tokens for j in batch))
        requests = [Request(j.prompt_ids, j.seed) for j in batch]
        self.running = len(batch)

        def on_token(row: int, token_id: int) -> bool:
            stop = batch[row].on_token(token_id)
            self.running -= stop
            return stop

        try:
            completions = self.engine.generate(requests, sampling, on_token=on_token)
        except Exception as err:  # a failed batch fails its requests, never the server
            for job in batch:
                job.emit(("error", f"{type(err).__name__}: {err}"))
            return
        finally:
            self.running = 0
        for job, completion in zip(batch, completions, strict=True):
            job.finish(completion.finish_reason)
