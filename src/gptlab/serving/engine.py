"""The decoding engine behind the server: one worker thread owns the model and decodes every running
completion as one batch (dynamic batching).

Each step the worker admits queued requests (each prompt is prefilled alone, then joins the batch as
a row), chooses every row's next token under that row's own settings and random generator, reports
it, drops the rows that finished or whose client went away, and runs one batched forward for the
rest. A request that arrives mid-decode therefore joins at the next step; nothing waits for a batch
to finish. Work that is not a sampled/greedy row (beam search, a next-token distribution, attention
maps) runs in the same thread between two steps, so the model has exactly one user at a time.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from gptlab.decoding import Decoding, next_token
from gptlab.generation import TextStream, beam_search
from gptlab.serving.batch import Batch, Row, UncachedBatch
from gptlab.tokenizers import Tokenizer

Event = dict[str, Any]


@dataclass
class Job:
    """One prompt's completion: `n` choices (rows), reported through `emit` (called from the worker).

    Events: {"type": "token", "index", "id", "token", "text", "logprob", "top"}, then one
    {"type": "finish", "index", "reason": "stop" | "length"} per choice, or {"type": "error", "message"}.
    """

    ids: list[int]
    decoding: Decoding  # max_new_tokens, stop strings and eos_token_id end a row
    emit: Callable[[Event], None]
    n: int = 1
    first_index: int = 0  # choice index of this job's first row (a list of prompts numbers them on)
    logprobs: int = 0  # top alternatives reported per token
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Row:
    job: Job
    index: int
    handle: Row  # its rows of the batch
    text: TextStream
    generator: torch.Generator | None
    logits: torch.Tensor  # (V,) float: the distribution of this row's next token
    made: int = 0


class Engine:
    """Owns the model in one worker thread; `submit` completions, `call` one-off work; thread-safe."""

    def __init__(self, model, tok: Tokenizer, *, max_batch: int = 16, use_cache: bool = True):
        self.model, self.tok = model.eval(), tok
        self.device = next(model.parameters()).device
        self.max_batch = max_batch
        self.batch = (Batch if use_cache else UncachedBatch)(model, max_batch)
        self._cv = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._calls: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]] = collections.deque()
        self._rows: list[_Row] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="gptlab-engine", daemon=True)
        self.stats = {"steps": 0, "row_steps": 0, "max_rows": 0}

    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Finish the running and queued work, then end the worker thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        if job.decoding.strategy == "beam":
            self.call(lambda: self._reporting_errors(job, self._beam))
            return
        with self._cv:
            if self._closed:
                raise RuntimeError("the engine is stopping and takes no new requests")
            self._queue.append(job)
            self._cv.notify()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run fn() in the worker between two decode steps; its result or exception in the future."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the engine is stopping and takes no new requests")
            self._calls.append((fn, fut))
            self._cv.notify()
        return fut

    # ---- the worker ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._queue or self._calls or self._rows):
                    if self._closed:
                        return
                    self._cv.wait()
                calls = list(self._calls)
                self._calls.clear()
            for fn, fut in calls:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except Exception as e:  # reported to the caller, never kills the worker
                        fut.set_exception(e)
            self._admit()
            if self._rows:
                self._step()

    def _admit(self) -> None:
        """Prefill queued jobs while their rows fit in the batch; each row joins with its first logits."""
        while True:
            with self._cv:
                if not self._queue or len(self._rows) + self._queue[0].n > self.max_batch:
                    return
                job = self._queue.popleft()
            if job.cancelled.is_set():
                continue
            try:
                for i in range(job.n):
                    handle, logits = self.batch.add(job.ids)
                    self._rows.append(_Row(job, job.first_index + i, handle, self._text_stream(job),
                                           self._generator(job.decoding, i), logits))
            except Exception as e:
                self._drop_job(job)
                job.emit({"type": "error", "message": f"{type(e).__name__}: {e}"})

    def _step(self) -> None:
        """Choose and report every row's next token, retire finished rows, forward the rest once."""
        keep = []
        for row in self._rows:
            if row.job.cancelled.is_set():
                self.batch.remove(row.handle)
                continue
            token = self._choose(row)
            if self._report(row, token):
                keep.append((row, token))
            else:
                self.batch.remove(row.handle)
        self._rows = [row for row, _ in keep]
        self.stats["max_rows"] = max(self.stats["max_rows"], len(keep))
        if not keep:
            return
        logits = self.batch.step([row.handle for row, _ in keep], [token for _, token in keep])
        for i, (row, _) in enumerate(keep):
            row.logits = logits[i]
        self.stats["steps"] += 1
        self.stats["row_steps"] += len(keep)

    def _choose(self, row: _Row) -> int:
        return int(next_token(row.logits[None], row.job.decoding, row.generator)[0])

    def _report(self, row: _Row, token: int) -> bool:
        """Emit the token (and the finish event when it ends its row); True while the row goes on."""
        row.made += 1
        piece = row.text.push(token)
        ended = row.text.done or row.made >= row.job.decoding.max_new_tokens
        if ended and not row.text.done:
            piece += row.text.flush()
        row.job.emit(self._token_event(row.index, token, piece, row.logits, row.job.logprobs))
        if ended:
            reason = "stop" if row.text.done else "length"
            row.job.emit({"type": "finish", "index": row.index, "reason": reason})
        return not ended

    def _token_event(self, index: int, token: int, piece: str, logits: torch.Tensor, top_n: int) -> Event:
        """The chosen token with its log-probability under the model (temperature 1, before any
        top-k/top-p filtering: what the model believes, not what the sampler was allowed to pick)."""
        logp = F.log_softmax(logits.float(), dim=-1)
        top = []
        if top_n:
            values, ids = torch.topk(logp, min(top_n, logp.numel()))
            top = [(int(i), self.tok.decode([int(i)]), float(v)) for v, i in zip(values, ids)]
        return {"type": "token", "index": index, "id": token, "token": self.tok.decode([token]),
                "text": piece, "logprob": float(logp[token]), "top": top}

    def _text_stream(self, job: Job) -> TextStream:
        return TextStream(self.tok, job.decoding.stop, job.decoding.eos_token_id)

    def _generator(self, d: Decoding, i: int) -> torch.Generator | None:
        """Choice i of a seeded request draws from seed + i, from its own generator: the same draws
        alone or in any batch. Without a seed, a fresh random one (never torch's global RNG, which
        every request would share)."""
        if d.greedy:
            return None
        g = torch.Generator(device=self.device)
        if d.seed is None:
            g.seed()
        else:
            g.manual_seed(d.seed + i)
        return g

    def _drop_job(self, job: Job) -> None:
        for row in [r for r in self._rows if r.job is job]:
            self.batch.remove(row.handle)
            self._rows.remove(row)

    # ---- work outside the batch ---------------------------------------------------------------------
    @staticmethod
    def _reporting_errors(job: Job, fn: Callable[[Job], None]) -> None:
        """fn(job), its failure sent to the job's client as an error event (no one awaits the future)."""
        try:
            fn(job)
        except Exception as e:
            job.emit({"type": "error", "message": f"{type(e).__name__}: {e}"})

    def _beam(self, job: Job) -> None:
        """Beam search (transformers' semantics): the n best hypotheses are the n choices."""
        idx = torch.tensor([job.ids], device=self.device)
        out = beam_search(self.model, idx, job.decoding)
        T = idx.size(1)
        for i in range(job.n):
            new = out.sequences[0, i, T : T + int(out.lengths[0, i])].tolist()
            seq = torch.tensor([job.ids + new], device=self.device)
            with torch.inference_mode():
                logits = self.model(seq)[0][0]  # the API keeps prompt + max_tokens within block_size
            text = self._text_stream(job)
            for t, token in enumerate(new):
                if job.cancelled.is_set():
                    return
                piece = text.push(token)
                last = text.done or t == len(new) - 1
                if last and not text.done:
                    piece += text.flush()
                job.emit(self._token_event(job.first_index + i, token, piece, logits[T - 1 + t], job.logprobs))
                if text.done:
                    break
            reason = "stop" if text.done or len(new) < job.decoding.max_new_tokens else "length"
            job.emit({"type": "finish", "index": job.first_index + i, "reason": reason})

    def next_token(self, ids: list[int], top_n: int) -> concurrent.futures.Future:
        """The top_n most likely tokens after `ids`, [{"id", "token", "prob", "logprob"}], best first."""
        def run() -> list[dict[str, Any]]:
            with torch.inference_mode():
                logits = self.model.forward_last(torch.tensor([ids], device=self.device))[0]
            logp = F.log_softmax(logits.float(), dim=-1)
            values, top = torch.topk(logp, min(top_n, logp.numel()))
            return [{"id": int(i), "token": self.tok.decode([int(i)]), "prob": float(v.exp()),
                     "logprob": float(v)} for v, i in zip(values, top)]
        return self.call(run)

    def attention(self, ids: list[int]) -> concurrent.futures.Future:
        """Attention weights of every layer and head over `ids`: nested lists [layer][head][query][key]."""
        def run() -> list:
            _, maps = self.model.attention_maps(torch.tensor([ids], device=self.device))
            return torch.stack([m[0] for m in maps]).float().round(decimals=4).tolist()
        return self.call(run)
