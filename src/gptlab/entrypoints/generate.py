"""`python generate.py ...`: load a checkpoint (or HF GPT-2 weights), decode a prompt, print text.

decoding=greedy|temperature|top_k|top_p|beam picks the strategy (conf/decoding); `stream=true`
prints tokens as they come, `stop=[...]` ends a sample at a string, `compare=true` decodes the
prompt under every entry of `compare_decodings` with per-token log-likelihood and tokens/s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.entrypoints.argv import unescape
from gptlab.errors import MissingFile, UserError
from gptlab.generation import beam_search, stream, token_logprobs, validate
from gptlab.model import GPT
from gptlab.tokenizers import TiktokenTokenizer, Tokenizer, tokenizer_from_spec

# conf/decoding keys → model.generate arguments (the short names k and p for top_k and top_p)
DECODING_KEYS = {"strategy": "strategy", "temperature": "temperature", "k": "top_k", "p": "top_p",
                 "num_beams": "num_beams", "length_penalty": "length_penalty", "early_stopping": "early_stopping"}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(cfg: DictConfig) -> tuple[GPT, Tokenizer]:
    if cfg.ckpt_path:
        model, ckpt = load_gpt_from_lightning_ckpt(cfg.ckpt_path)
        if not ckpt.get("tokenizer"):
            raise UserError(f"{cfg.ckpt_path} holds no tokenizer spec; it was not written by gptlab's train.py")
        return model, tokenizer_from_spec(ckpt["tokenizer"])
    if cfg.init_from:
        return GPT.from_pretrained(cfg.init_from), TiktokenTokenizer("gpt2")
    raise UserError("give ckpt_path=<a .ckpt from train.py> or init_from=<HF GPT-2 folder or name>")


def read_prompt(prompt: str) -> str:
    if prompt.startswith("FILE:"):
        path = Path(prompt[5:]).expanduser()
        if not path.is_file():
            raise MissingFile(f"prompt file not found: {path}")
        return path.read_text(encoding="utf-8")
    return unescape(prompt)  # `prompt='ROMEO:\n'` ends with a newline, as stop= reads escapes


def decoding_kwargs(decoding: Any, shortcuts: dict[str, Any] | None = None) -> dict[str, Any]:
    """model.generate keyword arguments from a conf/decoding mapping (plus top-level shortcuts)."""
    d = OmegaConf.to_container(decoding) if OmegaConf.is_config(decoding) else dict(decoding)
    unknown = sorted(set(d) - set(DECODING_KEYS))
    if unknown:
        raise UserError(f"decoding: unknown keys {unknown}; allowed: {sorted(DECODING_KEYS)}")
    kw = {DECODING_KEYS[key]: value for key, value in d.items()}
    kw.update({key: value for key, value in (shortcuts or {}).items() if value is not None})
    kw.setdefault("strategy", "sample")
    return kw


def describe(kw: dict[str, Any]) -> str:
    """A short label: "greedy", "beam k=4", "sample T=0.8 top_k=200"."""
    if kw["strategy"] == "greedy" or (kw["strategy"] == "sample" and kw.get("temperature") == 0):
        return "greedy" if kw["strategy"] == "greedy" else "greedy (T=0)"
    if kw["strategy"] == "beam":
        return f"beam k={kw.get('num_beams', 1)}" + (f" lp={kw['length_penalty']}" if "length_penalty" in kw else "")
    parts = [f"T={kw.get('temperature', 1.0)}"]
    parts += [f"{name}={kw[name]}" for name in ("top_k", "top_p") if kw.get(name) is not None]
    return "sample " + " ".join(parts)


class TextStream:
    """Token ids in, text out as soon as it is safe to show.

    Holds back (a) a trailing U+FFFD, which is what an unfinished UTF-8 character decodes to while
    a byte-level BPE token still owes the character's remaining bytes, and (b) any tail that could be
    the start of a stop string. Ends at the first stop string (cut before it) or at `eos_token_id`.
    """

    def __init__(self, tok: Tokenizer, stop: list[str] = (), eos_token_id: int | None = None):
        self.tok, self.stop, self.eos = tok, [s for s in stop if s], eos_token_id
        self.ids: list[int] = []
        self.text = ""
        self.shown = 0
        self.done = False

    def push(self, token_id: int) -> str:
        """Add one token; return the newly safe text (may be empty)."""
        if self.done:
            return ""
        if token_id == self.eos:
            self.done = True
            return self.flush()
        self.ids.append(token_id)
        text = self.tok.decode(self.ids)
        cuts = [i for i in (text.find(s, max(0, self.shown - len(s))) for s in self.stop) if i >= 0]
        if cuts:
            self.text, self.done = text[: min(cuts)], True
            return self.flush()
        self.text = text
        # the stop-string prefixes are judged before the unfinished character: its missing bytes may
        # complete one (stop "日本" when a token brings "日" and half of "本")
        body = text[:-1] if text.endswith("\ufffd") else text
        hold = 0
        for s in self.stop:
            hold = max([hold] + [n for n in range(1, len(s)) if body.endswith(s[:n])])
        return self._take(len(body) - hold)

    def flush(self) -> str:
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        out = self.text[self.shown : max(end, self.shown)]
        self.shown += len(out)
        return out


def stop_strings(cfg: DictConfig) -> list[str]:
    """cfg.stop with backslash escapes read: Hydra keeps `stop=["\\n\\n"]` as a backslash and an n.
    `stop=END`, without brackets, arrives as one string: one stop string, not one per character;
    Hydra reads `stop=[42]` as a number, which stays the string "42"."""
    stops = [cfg.stop] if isinstance(cfg.stop, (str, int, float)) else cfg.stop or []
    return [unescape(str(s)) for s in stops]


def decode_one(model: GPT, tok: Tokenizer, idx: torch.Tensor, kw: dict[str, Any], cfg: DictConfig,
               generator: torch.Generator, echo: bool) -> dict[str, Any]:
    """One sampled/greedy continuation of idx (1, T): its text (stop strings applied) and statistics.
    With echo the text is printed as it comes (stream=true)."""
    eos = tok.eot_token_id if cfg.stop_at_eot else None
    text = TextStream(tok, stop_strings(cfg), eos)
    new: list[int] = []
    t0 = time.perf_counter()
    for nxt in stream(model, idx, cfg.max_new_tokens, eos_token_id=eos, use_cache=cfg.use_cache,
                      compile=cfg.compile, generator=generator, **kw):
        new.append(int(nxt[0]))
        piece = text.push(new[-1])
        if echo and piece:
            print(piece, end="", flush=True)
        if text.done:
            break
    dt = time.perf_counter() - t0
    piece = text.flush()
    if echo:
        print(piece, flush=True)
    return {"ids": new, "text": text.text, "seconds": dt}


def run_generate(cfg: DictConfig) -> list[str]:
    """Print and return num_samples continuations of the prompt (prompt included)."""
    device = pick_device(cfg.device)
    model, tok = load_model(cfg)
    model.to(device).eval()
    if cfg.compare:
        return run_compare(cfg, model, tok, device)
    kw = decoding_kwargs(cfg.decoding, {k: cfg.get(k) for k in ("temperature", "top_k", "top_p")})
    validate(cfg.max_new_tokens, **kw)
    prompt, idx = encode_prompt(cfg.prompt, tok, model.config.block_size, device)
    if kw["strategy"] == "beam":
        return run_beam(cfg, model, tok, prompt, idx, kw)
    if cfg.num_samples > 1 and (kw["strategy"] == "greedy" or kw.get("temperature") == 0):
        raise UserError(f"num_samples={cfg.num_samples} with {describe(kw)} decoding: greedy decoding is "
                        f"deterministic, so every sample would be the same text. Use num_samples=1, a sampling "
                        f"decoding (e.g. decoding=top_k) for different samples, or decoding=beam for the best "
                        f"num_samples hypotheses")
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    texts = []
    for i in range(cfg.num_samples):
        if cfg.stream:
            print(prompt, end="", flush=True)
        r = decode_one(model, tok, idx, kw, cfg, g, echo=cfg.stream)
        texts.append(prompt + r["text"])
        if not cfg.stream:
            print(texts[-1])
        rate = len(r["ids"]) / max(r["seconds"], 1e-9)
        print(f"---------- sample {i + 1}/{cfg.num_samples} ({describe(kw)}): "
              f"{len(r['ids'])} tokens in {r['seconds']:.2f} s, {rate:.1f} tokens/s")
    return texts


def encode_prompt(prompt: str, tok: Tokenizer, block_size: int, device: torch.device) -> tuple[str, torch.Tensor]:
    """The prompt text (FILE: read) and its ids (1, T)."""
    prompt = read_prompt(prompt)
    ids = tok.encode(prompt)
    if not ids:
        raise UserError("the prompt encodes to no tokens; give at least one character")
    if len(ids) > block_size:
        print(f"[gptlab] warning: the prompt has {len(ids)} tokens; the model sees only the last {block_size} "
              f"(block_size), and recomputes that window for every new token", file=sys.stderr)
    return prompt, torch.tensor([ids], dtype=torch.long, device=device)


def search_beams(cfg: DictConfig, model: GPT, tok: Tokenizer, idx: torch.Tensor,
                 kw: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
    """Beam search for idx (1, T): every hypothesis (ids, text with stop strings applied, score), best
    first, and the seconds the search took."""
    eos = tok.eot_token_id if cfg.stop_at_eot else None
    t0 = time.perf_counter()
    out = beam_search(model, idx, cfg.max_new_tokens, kw.get("num_beams", 1),
                      length_penalty=kw.get("length_penalty", 1.0), eos_token_id=eos,
                      early_stopping=kw.get("early_stopping", False), use_cache=cfg.use_cache,
                      compile=cfg.compile)
    dt = time.perf_counter() - t0
    hyps = []
    for i in range(out.sequences.size(1)):
        ids = out.sequences[0, i, idx.size(1) : idx.size(1) + int(out.lengths[0, i])].tolist()
        text = TextStream(tok, stop_strings(cfg), eos)
        for t in ids:
            text.push(t)
        hyps.append({"ids": ids, "text": text.text, "score": float(out.scores[0, i])})
    return hyps, dt


def run_beam(cfg: DictConfig, model: GPT, tok: Tokenizer, prompt: str, idx: torch.Tensor,
             kw: dict[str, Any]) -> list[str]:
    """Beam search is one deterministic search: num_samples prints its best hypotheses, best first."""
    k = kw.get("num_beams", 1)
    if cfg.num_samples > k:
        raise UserError(f"num_samples={cfg.num_samples} > decoding.num_beams={k}: beam search returns "
                         f"at most num_beams hypotheses")
    hyps, dt = search_beams(cfg, model, tok, idx, kw)
    rate = max(len(h["ids"]) for h in hyps) / dt
    texts = []
    for i, h in enumerate(hyps[: cfg.num_samples]):
        texts.append(prompt + h["text"])
        print(texts[-1])
        print(f"---------- beam {i + 1}/{k} ({describe(kw)}): score {h['score']:.4f}, {len(h['ids'])} tokens; "
              f"search {dt:.2f} s, {rate:.1f} tokens/s")
    return texts


def run_compare(cfg: DictConfig, model: GPT, tok: Tokenizer, device: torch.device) -> list[dict[str, Any]]:
    """The same prompt under every entry of compare_decodings: a table (per-token log-likelihood of
    the continuation under the untempered model, tokens/s), then each text. Every entry starts from
    the same seed, so any one row can be reproduced alone."""
    prompt, idx = encode_prompt(cfg.prompt, tok, model.config.block_size, device)
    rows = []
    for entry in cfg.compare_decodings:
        kw = decoding_kwargs(entry)
        validate(cfg.max_new_tokens, **kw)
        if kw["strategy"] == "beam":
            hyps, dt = search_beams(cfg, model, tok, idx, kw)
            r = {**hyps[0], "seconds": dt}
        else:
            g = torch.Generator(device=device).manual_seed(cfg.seed)
            r = decode_one(model, tok, idx, kw, cfg, g, echo=False)
        full = torch.tensor([idx[0].tolist() + r["ids"]], device=device)
        ll = token_logprobs(model, full, idx.size(1)) if r["ids"] else torch.zeros(1, 0)
        rows.append({"decoding": describe(kw), "text": prompt + r["text"], "tokens": len(r["ids"]),
                     "loglik_per_token": float(ll.mean()) if r["ids"] else float("nan"),
                     "tokens_per_s": len(r["ids"]) / max(r["seconds"], 1e-9)})
    width = max(len(r["decoding"]) for r in rows)
    print(f"{'decoding':<{width}}  tokens  loglik/token  tokens/s  start of the continuation")
    for r in rows:
        start = r["text"][len(prompt) :][:40].replace("\n", "⏎")
        print(f"{r['decoding']:<{width}}  {r['tokens']:>6}  {r['loglik_per_token']:>12.3f}  "
              f"{r['tokens_per_s']:>8.1f}  {start}")
    for r in rows:
        print(f"\n========== {r['decoding']} (loglik/token {r['loglik_per_token']:.3f})\n{r['text']}")
    return rows
