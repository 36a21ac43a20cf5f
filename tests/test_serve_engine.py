"""The serving engine in-process (no HTTP): dynamic batching joins and leaves, cancellation frees rows."""

from __future__ import annotations

import threading

import pytest
import torch

from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.generation import generate
from gptlab.tokenizers import tokenizer_from_spec
from tests.test_serve import tiny_checkpoint

pytest.importorskip("fastapi")
from gptlab.serving.engine import Engine, Job, Sampling  # noqa: E402


@pytest.fixture(scope="module")
def model_and_tok(tmp_path_factory):
    model, ckpt = load_gpt_from_lightning_ckpt(tiny_checkpoint(tmp_path_factory.mktemp("engine") / "t.ckpt"))
    return model.eval(), tokenizer_from_spec(ckpt["tokenizer"])


class Collect:
    """A job's events, and a flag once every choice has finished."""

    def __init__(self, choices: int = 1, on_token=None):
        self.events, self.choices, self.on_token = [], choices, on_token
        self.done = threading.Event()

    def __call__(self, ev):
        self.events.append(ev)
        if ev["type"] == "token" and self.on_token:
            self.on_token(ev)
        if sum(e["type"] == "finish" for e in self.events) == self.choices or ev["type"] == "error":
            self.done.set()

    def ids(self, index: int = 0) -> list[int]:
        return [e["id"] for e in self.events if e["type"] == "token" and e["index"] == index]


def greedy_alone(model, ids: list[int], n: int) -> list[int]:
    return generate(model, torch.tensor([ids]), n, strategy="greedy")[0, len(ids):].tolist()


def test_a_request_joins_a_running_batch_at_the_next_step(model_and_tok):
    model, tok = model_and_tok
    engine = Engine(model, tok, max_batch=4).start()
    try:
        b = Collect()
        b_job = Job(tok.encode("Thou art"), 20, Sampling("greedy"), b)
        a_tokens_when_b_started = []

        def submit_b_at_token_5(ev):
            if len(a.ids()) == 5:
                engine.submit(b_job)
            if len(b.ids()) == 1 and not a_tokens_when_b_started:
                a_tokens_when_b_started.append(len(a.ids()))

        a = Collect(on_token=submit_b_at_token_5)
        engine.submit(Job(tok.encode("ROMEO:"), 60, Sampling("greedy"), a))
        assert a.done.wait(60) and b.done.wait(60)
        assert a.ids() == greedy_alone(model, tok.encode("ROMEO:"), 60)
        assert b.ids() == greedy_alone(model, tok.encode("Thou art"), 20)
        # b's first token came while a was still decoding: it joined the batch, it did not wait
        assert a_tokens_when_b_started and a_tokens_when_b_started[0] < 60
        assert engine.stats["max_rows"] == 2
    finally:
        engine.stop(10)


def test_a_cancelled_request_leaves_the_batch_at_once(model_and_tok):
    model, tok = model_and_tok
    engine = Engine(model, tok, max_batch=2).start()
    try:
        job = None

        def cancel_after_3(ev):
            if len(c.ids()) == 3:
                job.cancelled.set()

        c = Collect(on_token=cancel_after_3)
        job = Job(tok.encode("ROMEO:"), 100, Sampling("sample", seed=1), c)
        engine.submit(job)
        # the freed row lets two more requests run at once in a batch of two
        d = Collect(choices=2)
        engine.submit(Job(tok.encode("A"), 10, Sampling("greedy"), d, n=2))
        assert d.done.wait(60)
        assert len(c.ids()) == 3 and not any(e["type"] == "finish" for e in c.events)
        assert d.ids(0) == d.ids(1) == greedy_alone(model, tok.encode("A"), 10)
    finally:
        engine.stop(10)
    assert engine.batch.free_rows() == 2


def test_seeded_sampling_is_the_same_alone_or_batched(model_and_tok):
    """Each row draws from its own generator (seed + choice index): neighbours never shift its draws."""
    model, tok = model_and_tok
    engine = Engine(model, tok, max_batch=8).start()
    try:
        s = Sampling("sample", temperature=0.9, top_k=20, seed=5)
        alone = Collect()
        engine.submit(Job(tok.encode("KING"), 30, s, alone))
        assert alone.done.wait(60)
        crowd = [Collect() for _ in range(4)]
        for i, c in enumerate(crowd):
            engine.submit(Job(tok.encode(["KING", "Lo", "ROMEO:", "Sir"][i]), 30, s if i == 0 else
                              Sampling("sample", seed=i), c))
        assert all(c.done.wait(60) for c in crowd)
        assert crowd[0].ids() == alone.ids()
        g = torch.Generator().manual_seed(5)
        want = generate(model, torch.tensor([tok.encode("KING")]), 30, strategy="sample", temperature=0.9,
                        top_k=20, generator=g)[0, 4:].tolist()
        assert alone.ids() == want
    finally:
        engine.stop(10)
