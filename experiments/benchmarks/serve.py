"""serve.py under load: dynamic batching's throughput gain, greedy equality, and a bounded load test.

    .venv/bin/python experiments/benchmarks/serve.py                 # ~5 min here
    .venv/bin/python experiments/benchmarks/serve.py --rounds 1 --requests 100

A baby model (nanoGPT's 6×6×384, block 256, Tiny Shakespeare characters) trained --train-steps
steps (so that its greedy choices are not near-ties of random weights) is served by `python serve.py`
on 127.0.0.1 with one torch thread. Then, interleaved for --rounds rounds so that load on a shared
machine hits both alike:
  1 client:   sends --per-client greedy requests of --max-tokens tokens, one after another;
  8 clients:  8 threads do the same at once (different prompts);
tokens/s = completion tokens / wall seconds of the phase. Every greedy output of the 8-client phase
is checked equal to the same request sent alone. Then the load test: --requests requests from 16
concurrent clients (greedy, seeded samples, streams; 8-48 tokens), counting status codes, with
p50/p99 latency. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from gptlab.model import GPT, GPTConfig  # noqa: E402
from gptlab.tokenizers import CharTokenizer  # noqa: E402
from tests.test_serve import Server  # noqa: E402

PROMPTS = ["ROMEO:\n", "JULIET:\nO", "First Citizen:\n", "KING HENRY:\nNow", "MENENIUS:\nWhat",
           "Thou art ", "My lord, ", "QUEEN:\nAlas"]


def baby_checkpoint(path: Path, steps: int) -> Path:
    torch.manual_seed(0)
    text = (ROOT / "src/gptlab/assets/data/tinyshakespeare.txt").read_text(encoding="utf-8")
    tok = CharTokenizer.fit(text)
    data = torch.tensor(tok.encode(text))
    model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=tok.vocab_size,
                          bias=False, gelu_approximate="none"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        i = torch.randint(len(data) - 65, (8,))
        x, y = (torch.stack([data[j + o : j + o + 64] for j in i]) for o in (0, 1))
        loss = model(x, y)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"baby model: {steps} training steps, last loss {loss.item():.3f}", flush=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": model.config.to_dict()}, "tokenizer": tok.to_spec()}, path)
    return path


def complete(url: str, body: dict) -> tuple[int, dict | None, float]:
    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/completions", json=body, timeout=600)
    return r.status_code, (r.json() if r.status_code == 200 else None), time.perf_counter() - t0


def phase(url: str, clients: int, per_client: int, max_tokens: int) -> tuple[float, dict[str, str]]:
    """tokens/s of `clients` threads each sending per_client greedy requests; the texts by prompt."""
    texts, tokens, lock = {}, [0], threading.Lock()

    def client(c: int) -> None:
        for _ in range(per_client):
            prompt = PROMPTS[c % len(PROMPTS)]
            status, r, _ = complete(url, {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
            assert status == 200, status
            with lock:
                tokens[0] += r["usage"]["completion_tokens"]
                texts[prompt] = r["choices"][0]["text"]

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tokens[0] / (time.perf_counter() - t0), texts


def load_test(url: str, requests: int, concurrency: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    bodies = []
    for i in range(requests):
        body = {"prompt": rng.choice(PROMPTS), "max_tokens": rng.randint(8, 48)}
        kind = rng.choice(["greedy", "sample", "stream"])
        body.update({"temperature": 0} if kind == "greedy" else {"temperature": 0.8, "top_p": 0.9, "seed": i})
        body["stream"] = kind == "stream"
        bodies.append(body)
    codes, latencies, lock, queue = {}, [], threading.Lock(), list(reversed(bodies))

    def client() -> None:
        while True:
            with lock:
                if not queue:
                    return
                body = queue.pop()
            t0 = time.perf_counter()
            if body["stream"]:
                with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
                    lines = [line for line in r.iter_lines() if line]
                    complete_stream = lines[-1:] == ["data: [DONE]"] and not any('"error"' in x for x in lines)
                    status = r.status_code if complete_stream else 599  # 599: a stream cut short
            else:
                status = httpx.post(url + "/v1/completions", json=body, timeout=600).status_code
            with lock:
                codes[status] = codes.get(status, 0) + 1
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {"requests": requests, "concurrency": concurrency, "codes": codes, "seconds": time.perf_counter() - t0,
            "p50_s": q[49], "p99_s": q[98], "max_s": latencies[-1]}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--serve-args", nargs="*", default=[])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(baby_checkpoint(Path(tmp) / "baby.ckpt", args.train_steps), "limits.max_tokens=256",
                        *args.serve_args)
        try:
            run(server.url, args)
        finally:
            server.stop()


def run(url: str, args: argparse.Namespace) -> None:
    print(f"load before: {load()}  ({subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()})")
    alone = {p: complete(url, {"prompt": p, "max_tokens": args.max_tokens, "temperature": 0})[1]["choices"][0]["text"]
             for p in PROMPTS}
    ratios, singles, eights, equal = [], [], [], True
    for r in range(args.rounds):
        one, _ = phase(url, 1, args.per_client, args.max_tokens)
        eight, texts = phase(url, 8, args.per_client, args.max_tokens)
        equal &= all(texts[p] == alone[p] for p in texts)
        singles.append(one)
        eights.append(eight)
        ratios.append(eight / one)
        print(f"round {r + 1}: 1 client {one:.1f} tokens/s, 8 clients {eight:.1f} tokens/s, "
              f"ratio {eight / one:.2f}  (load {load()})", flush=True)
    print(f"median: 1 client {statistics.median(singles):.1f} tokens/s, 8 clients "
          f"{statistics.median(eights):.1f} tokens/s, ratio {statistics.median(ratios):.2f} "
          f"(target >= 3: {'met' if statistics.median(ratios) >= 3 else 'NOT met'}); "
          f"8-client greedy outputs equal to each alone: {equal}")
    result = load_test(url, args.requests, args.concurrency)
    fives = sum(n for code, n in result["codes"].items() if code >= 500)
    print(f"load test: {json.dumps(result)}")
    print(f"load test: {result['requests']} requests, {result['concurrency']} concurrent, {fives} 5xx, "
          f"p50 {result['p50_s']:.2f} s, p99 {result['p99_s']:.2f} s, in {result['seconds']:.0f} s (load {load()})")


if __name__ == "__main__":
    main()
