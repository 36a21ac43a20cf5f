"""The serving engine in-process (no HTTP): dynamic batching joins and leaves, cancellation frees rows."""

from __future__ import annotations

import threading

import pytest
import torch

from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.decoding import Decoding
from gptlab.generation import generate
from gptlab.tokenizers import tokenizer_from_spec
from tests.test_serve import tiny_checkpoint

pytest.importorskip("fastapi")
from gptlab.serving.engine import Engine, Job  # noqa: E402


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
    return generate(model, torch.tensor([ids]), Decoding("greedy", n))[0, len(ids):].tolist()


def test_a_request_joins_a_running_batch_at_the_next_step(model_and_tok):
    model, tok = model_and_tok
    engine = Engine(model, tok, max_batch=4).start()
    try:
        b = Collect()
        b_job = Job(tok.encode("Thou art"), Decoding("greedy", 20), b)
        a_tokens_when_b_started = []

        def submit_b_at_token_5(ev):
            if len(a.ids()) == 5:
                engine.submit(b_job)
            if len(b.ids()) == 1 and not a_tokens_when_b_started:
                a_tokens_when_b_started.append(len(a.ids()))

        a = Collect(on_token=submit_b_at_token_5)
        engine.submit(Job(tok.encode("ROMEO:"), Decoding("greedy", 60), a))
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
        job = Job(tok.encode("ROMEO:"), Decoding("sample", 100, seed=1), c)
        engine.submit(job)
        # the freed row lets two more requests run at once in a batch of two
        d = Collect(choices=2)
        engine.submit(Job(tok.encode("A"), Decoding("greedy", 10), d, n=2))
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
        s = Decoding("sample", 30, temperature=0.9, top_k=20, seed=5)
        alone = Collect()
        engine.submit(Job(tok.encode("KING"), s, alone))
        assert alone.done.wait(60)
        crowd = [Collect() for _ in range(4)]
        for i, c in enumerate(crowd):
            engine.submit(Job(tok.encode(["KING", "Lo", "ROMEO:", "Sir"][i]), s if i == 0 else
                              Decoding("sample", 30, seed=i), c))
        assert all(c.done.wait(60) for c in crowd)
        assert crowd[0].ids() == alone.ids()
        g = torch.Generator().manual_seed(5)
        want = generate(model, torch.tensor([tok.encode("KING")]), s, generator=g)[0, 4:].tolist()
        assert alone.ids() == want
    finally:
        engine.stop(10)


def test_cached_batch_equals_uncached_batch(model_and_tok):
    """Rows of different lengths joining and leaving: the per-row KV cache gives the very tokens of
    re-reading every row's whole sequence each step."""
    model, tok = model_and_tok
    prompts = ["ROMEO:", "O", "First Citizen:\nBefore", "What say", "\n"]
    runs = []
    for use_cache in (True, False):
        engine = Engine(model, tok, max_batch=3, use_cache=use_cache).start()  # 5 jobs, 3 rows: some wait
        try:
            jobs = [Collect() for _ in prompts]
            for p, c, n in zip(prompts, jobs, (40, 7, 25, 33, 12)):
                engine.submit(Job(tok.encode(p), Decoding("greedy", n), c))
            assert all(c.done.wait(60) for c in jobs)
            runs.append([c.ids() for c in jobs])
        finally:
            engine.stop(10)
    assert runs[0] == runs[1]
    assert runs[0][2] == greedy_alone(model, tok.encode(prompts[2]), 25)


def test_serve_loads_a_hugging_face_gpt2_folder(tmp_path):
    from gptlab.entrypoints.serve import load_served_model
    from gptlab.hf import save_pretrained
    from gptlab.model import GPT, GPTConfig

    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=64)), tmp_path / "gpt2-mini")
    model, tok, name = load_served_model(str(tmp_path / "gpt2-mini"))
    assert name == "gpt2-mini" and tok.vocab_size == model.config.vocab_size == 50257
    assert tok.decode(tok.encode("Hello world")) == "Hello world"
