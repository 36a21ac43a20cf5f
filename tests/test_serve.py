"""serve.py: the HTTP API against the official `openai` client, dynamic batching, limits and fuzzing.

One server process (`python serve.py ckpt_path=...`, 127.0.0.1, a free port) on a tiny character
model trained for a few seconds on Tiny Shakespeare, shared by the tests of this module.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from gptlab.decoding import Decoding  # noqa: E402
from gptlab.generation import generate  # noqa: E402
from gptlab.model import GPT, GPTConfig  # noqa: E402
from gptlab.tokenizers import CharTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT / "src/gptlab/assets/data/tinyshakespeare.txt"


def tiny_checkpoint(path: Path, steps: int = 120) -> Path:
    """A gptlab checkpoint (the keys train.py writes) of a 2-layer character GPT with a 128-token
    context, trained `steps` steps so that its greedy choices are clear-cut, not near-ties."""
    torch.manual_seed(0)
    text = SHAKESPEARE.read_text(encoding="utf-8")[:100_000]
    tok = CharTokenizer(text + "".join(chr(c) for c in range(32, 127)))
    data = torch.tensor(tok.encode(text))
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=128, vocab_size=tok.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        i = torch.randint(len(data) - 33, (8,))
        x = torch.stack([data[j : j + 32] for j in i])
        y = torch.stack([data[j + 1 : j + 33] for j in i])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"model": model.config.to_dict()},
                "tokenizer": tok.to_spec()}, path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python serve.py` in a subprocess on 127.0.0.1; `url` once it answers."""

    def __init__(self, ckpt: Path, *overrides: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "serve.py"), f"ckpt_path={ckpt}", f"port={self.port}", *overrides],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 240  # importing torch + lightning takes a minute on a loaded 2-core machine
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve.py exited with {self.proc.returncode}:\n{self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("serve.py did not answer within 240 s")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stdout.read()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.ckpt")


@pytest.fixture(scope="module")
def server(ckpt):
    s = Server(ckpt, "max_batch=8", "limits.max_tokens=64")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_and_tok(ckpt):
    from gptlab.checkpoint import load_gpt_from_lightning_ckpt
    from gptlab.tokenizers import tokenizer_from_spec

    model, raw = load_gpt_from_lightning_ckpt(ckpt)
    return model.eval(), tokenizer_from_spec(raw["tokenizer"])


def alone(model, tok, prompt: str, n: int, generator=None, **kw) -> str:
    """The continuation gptlab.generation decodes for the prompt alone, as text."""
    idx = torch.tensor([tok.encode(prompt)])
    out = generate(model, idx, Decoding(max_new_tokens=n, **kw), generator=generator)
    return tok.decode(out[0, idx.size(1):].tolist())


# ---- the openai client -----------------------------------------------------------------------------
def test_models_lists_the_checkpoint(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]


def test_openai_client_greedy_equals_generate(client, model_and_tok):
    model, tok = model_and_tok
    r = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=20, temperature=0)
    assert r.choices[0].text == alone(model, tok, "ROMEO:", 20, strategy="greedy")
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (6, 20)


def test_openai_client_stream_equals_non_stream(client):
    kw = dict(model="tiny", prompt="JULIET:", max_tokens=24, temperature=0.9, seed=7)
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert len(chunks) >= 24  # one chunk per token, then the finish chunk
    assert chunks[-1].choices[0].finish_reason == "length"


def test_seeded_sample_equals_generate_with_that_seed(client, model_and_tok):
    model, tok = model_and_tok
    r = client.completions.create(model="tiny", prompt="KING", max_tokens=16, temperature=0.8, top_p=0.9,
                                  seed=123, extra_body={"top_k": 20})
    g = torch.Generator().manual_seed(123)
    want = alone(model, tok, "KING", 16, strategy="sample", temperature=0.8, top_k=20, top_p=0.9, generator=g)
    assert r.choices[0].text == want


def test_logprobs_match_the_model(client, model_and_tok):
    model, tok = model_and_tok
    r = client.completions.create(model="tiny", prompt="The ", max_tokens=5, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    ids = tok.encode("The " + r.choices[0].text)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0][0], dim=-1)
    for t, token in enumerate(lp.tokens):
        pos = len(tok.encode("The ")) - 1 + t
        assert token == tok.decode([ids[pos + 1]])
        assert lp.token_logprobs[t] == pytest.approx(float(logp[pos, ids[pos + 1]]), abs=1e-4)
        assert max(lp.top_logprobs[t].values()) == pytest.approx(lp.token_logprobs[t], abs=1e-6)  # greedy
        assert len(lp.top_logprobs[t]) == 3


def test_stop_strings_and_n(client):
    r = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=40, temperature=1.0, n=3, seed=1,
                                  stop=["e"])
    assert len(r.choices) == 3
    for c in r.choices:
        assert "e" not in c.text
        assert c.finish_reason in ("stop", "length")
    assert len({c.text for c in r.choices}) > 1  # choice i draws from seed + i


def test_beam_extra_fields_equal_beam_search(client, model_and_tok):
    from gptlab.generation import beam_search

    model, tok = model_and_tok
    r = client.completions.create(model="tiny", prompt="To be", max_tokens=12, n=2,
                                  extra_body={"strategy": "beam", "num_beams": 3})
    out = beam_search(model, torch.tensor([tok.encode("To be")]), Decoding("beam", 12, num_beams=3))
    want = [tok.decode(out.sequences[0, i, 5 : 5 + int(out.lengths[0, i])].tolist()) for i in range(2)]
    assert [c.text for c in r.choices] == want


def test_bad_request_raises_openai_error_naming_the_field(client):
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny", prompt="x", max_tokens=10_000)
    with pytest.raises(openai.NotFoundError, match="tiny"):
        client.completions.create(model="gpt-4", prompt="x")


# ---- batching --------------------------------------------------------------------------------------
def test_concurrent_greedy_requests_equal_each_alone(server, model_and_tok):
    """8 different prompts at once, of different lengths, joining a running batch at different steps:
    each greedy output equals gptlab.generation decoding that prompt alone."""
    model, tok = model_and_tok
    prompts = ["ROMEO:", "O", "First Citizen:\nBefore we proceed", "KING RICHARD III:\nNow is the",
               "What", "Thou art", "My lord, ", "\n"]
    out: dict[int, str] = {}

    def ask(i: int) -> None:
        time.sleep(0.01 * i)
        r = httpx.post(server.url + "/v1/completions", timeout=60,
                       json={"prompt": prompts[i], "max_tokens": 30 + i, "temperature": 0})
        out[i] = r.json()["choices"][0]["text"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, p in enumerate(prompts):
        assert out[i] == alone(model, tok, p, 30 + i, strategy="greedy"), p


def test_client_disconnect_frees_its_row(server):
    """A stream dropped after a few tokens frees its row: the server keeps answering, and a later
    full batch still fits."""
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json={"prompt": "ROMEO:", "max_tokens": 64, "stream": True}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 3:
                break
    r = httpx.post(server.url + "/v1/completions", timeout=60, json={"prompt": "A", "max_tokens": 5, "n": 4})
    assert r.status_code == 200 and len(r.json()["choices"]) == 4


# ---- the playground's endpoints --------------------------------------------------------------------
def test_next_token_is_the_model_distribution(server, model_and_tok):
    model, tok = model_and_tok
    r = httpx.post(server.url + "/v1/next_token", json={"prompt": "ROMEO", "top_n": 5}).json()
    probs = torch.softmax(model(torch.tensor([tok.encode("ROMEO")]))[0][0, -1], dim=-1)
    values, ids = probs.topk(5)
    assert [t["id"] for t in r["top"]] == ids.tolist()
    assert [t["prob"] for t in r["top"]] == pytest.approx(values.tolist(), abs=1e-5)
    assert r["tokens"] == list("ROMEO")


def test_attention_maps_are_the_model_weights(server, model_and_tok):
    model, tok = model_and_tok
    r = httpx.post(server.url + "/v1/attention", json={"prompt": "To be or not"}).json()
    _, maps = model.attention_maps(torch.tensor([tok.encode("To be or not")]))
    assert (r["n_layer"], r["n_head"]) == (2, 2)
    for layer in range(2):
        assert torch.tensor(r["attention"][layer]) == pytest.approx(maps[layer][0], abs=1e-4)


def test_playground_page_is_served(server):
    page = httpx.get(server.url + "/").text
    assert "<title>gptlab playground</title>" in page
    for src in ("/static/playground.js", "/static/playground.css"):
        assert src in page and httpx.get(server.url + src).status_code == 200
    assert "http://" not in page and "https://" not in page  # no CDN: works offline


# ---- limits and fuzzing ----------------------------------------------------------------------------
MALFORMED = [
    ("{", None), ("[]", None), ('"text"', None), ("null", None), ("", None),
    ({"prompt": 5}, "prompt"), ({"prompt": ["a", 3]}, "prompt"), ({"prompt": []}, "prompt"),
    ({"max_tokens": "10"}, "max_tokens"), ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": -3}, "max_tokens"),
    ({"max_tokens": 65}, "max_tokens"), ({"max_tokens": True}, "max_tokens"), ({"max_tokens": 2.5}, "max_tokens"),
    ({"prompt": "x" * 128, "max_tokens": 5}, "prompt"), ({"prompt": "x" * 120, "max_tokens": 20}, "max_tokens"),
    ({"temperature": -1}, "temperature"), ({"temperature": 3}, "temperature"), ({"temperature": "hot"}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": 0}, "top_k"), ({"top_k": 1.5}, "top_k"),
    ({"n": 0}, "n"), ({"n": 5}, "n"), ({"n": "2"}, "n"), ({"stream": "yes"}, "stream"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"stop": [""]}, "stop"), ({"stop": 7}, "stop"),
    ({"seed": "1"}, "seed"), ({"logprobs": 11}, "logprobs"), ({"logprobs": -1}, "logprobs"),
    ({"strategy": "nucleus"}, "strategy"), ({"strategy": "beam", "num_beams": 9}, "num_beams"),
    ({"strategy": "beam", "temperature": 0.5}, "temperature"), ({"num_beams": 2}, "num_beams"),
    ({"strategy": "beam", "num_beams": 2, "n": 3}, "n"), ({"strategy": "greedy", "top_k": 5}, "strategy"),
    ({"temprature": 0.5}, "temprature"), ({"echo": True}, "echo"), ({"best_of": 3}, "best_of"),
    ({"presence_penalty": 1.0}, "presence_penalty"), ({"prompt": "\u00e9t\u00e9"}, "prompt"),
    ({"model": "gpt-4"}, "model"),
]


def test_fuzz_malformed_requests_get_4xx_naming_the_field(server):
    assert len(MALFORMED) >= 30
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for body, field in MALFORMED:
            if isinstance(body, dict):
                r = c.post("/v1/completions", content=json.dumps({"prompt": "A", **body}),
                           headers={"content-type": "application/json"})
            else:
                r = c.post("/v1/completions", content=body, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
            err = r.json()["error"]
            if field is not None:
                assert err["param"] == field and field in err["message"], (body, err)
        for path, body in [("/v1/next_token", {"prompt": "A", "top_n": 51}), ("/v1/next_token", {}),
                           ("/v1/next_token", {"ids": [10_000]}), ("/v1/attention", {"prompt": "x" * 97}),
                           ("/v1/attention", {"prompt": "A", "ids": [1]})]:
            r = c.post(path, json=body)
            assert 400 <= r.status_code < 500 and "error" in r.json(), (path, body, r.text)
        r = c.post("/v1/completions", json={"prompt": "A", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"


def test_sigterm_drains_a_running_stream_then_exits(ckpt):
    """SIGTERM mid-stream: the stream still ends with [DONE] and all its tokens, then the process ends."""
    s = Server(ckpt)
    try:
        with httpx.stream("POST", s.url + "/v1/completions", timeout=60,
                          json={"prompt": "ROMEO:", "max_tokens": 60, "stream": True, "temperature": 0}) as r:
            lines = []
            for line in r.iter_lines():
                lines.append(line)
                if len(lines) == 3:
                    s.proc.send_signal(signal.SIGTERM)
        lines = [x for x in lines if x]
        assert lines[-1] == "data: [DONE]"
        tokens = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
        assert sum(1 for t in tokens if t["choices"][0]["finish_reason"] is None) == 60
        # uvicorn re-raises the signal once it has drained: the exit status is the signal's own
        assert s.proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        s.stop()
