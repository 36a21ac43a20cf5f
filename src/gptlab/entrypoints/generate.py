"""`python generate.py ...`: load a checkpoint (or HF GPT-2 weights), decode a prompt, print text.

decoding=greedy|temperature|top_k|top_p|beam picks the strategy (src/gptlab/conf_generate/decoding); `stream=true`
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
from gptlab.entrypoints.config import hydra_entry
from gptlab.errors import MissingFile, UserError
from gptlab.generation import Decoding, TextStream, beam_search, stream, token_logprobs
from gptlab.hf import from_pretrained
from gptlab.model import GPT
from gptlab.tasks import answer_text, load_task_model
from gptlab.tokenizers import TiktokenTokenizer, Tokenizer, tokenizer_from_spec

SHORTCUTS = ("temperature", "top_k", "top_p")  # top-level keys that override the chosen decoding's


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
        return from_pretrained(cfg.init_from), TiktokenTokenizer("gpt2")
    raise UserError("give ckpt_path=<a .ckpt from train.py> or init_from=<HF GPT-2 folder or name>")


def read_prompt(prompt: str) -> str:
    if prompt.startswith("FILE:"):
        path = Path(prompt[5:]).expanduser()
        if not path.is_file():
            raise MissingFile(f"prompt file not found: {path}")
        return path.read_text(encoding="utf-8")
    return unescape(prompt)  # `prompt='ROMEO:\n'` ends with a newline, as stop= reads escapes


def decoding_from(cfg: DictConfig, tok: Tokenizer, entry: Any, shortcuts: bool = True) -> Decoding:
    """The Decoding of a decoding-group mapping (or a compare_decodings entry), with the top-level
    shortcuts (temperature, top_k, top_p) over it and the run's length, stops, seed and cache."""
    d = OmegaConf.to_container(entry) if OmegaConf.is_config(entry) else dict(entry)
    if shortcuts:
        d.update({key: cfg.get(key) for key in SHORTCUTS if cfg.get(key) is not None})
    d.update(max_new_tokens=cfg.max_new_tokens, stop=tuple(stop_strings(cfg)), seed=cfg.seed,
             eos_token_id=tok.eot_token_id if cfg.stop_at_eot else None, use_cache=cfg.use_cache,
             compile=cfg.compile)
    return Decoding.from_dict(d)


def stop_strings(cfg: DictConfig) -> list[str]:
    """cfg.stop with backslash escapes read: Hydra keeps `stop=["\\n\\n"]` as a backslash and an n.
    `stop=END`, without brackets, arrives as one string: one stop string, not one per character;
    Hydra reads `stop=[42]` as a number, which stays the string "42"."""
    stops = [cfg.stop] if isinstance(cfg.stop, (str, int, float)) else cfg.stop or []
    return [unescape(str(s)) for s in stops]


def decode_one(model: GPT, tok: Tokenizer, idx: torch.Tensor, d: Decoding, generator: torch.Generator | None,
               echo: bool) -> dict[str, Any]:
    """One sampled/greedy continuation of idx (1, T): its text (stop strings applied) and statistics.
    With echo the text is printed as it comes (stream=true)."""
    text = TextStream(tok, d.stop, d.eos_token_id)
    new: list[int] = []
    t0 = time.perf_counter()
    for nxt in stream(model, idx, d, generator=generator):
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


def answer_input(cfg: DictConfig, model, ckpt: dict[str, Any], device: torch.device) -> str:
    """A classify/seq2seq checkpoint answers its input (gptlab.tasks): prompt= is that input."""
    d = decoding_from(cfg, tokenizer_from_spec(ckpt["tokenizer"]), cfg.decoding)
    answer = answer_text(model.to(device), ckpt, read_prompt(cfg.prompt), d)
    print(answer)
    return answer


def run_generate(cfg: DictConfig) -> list[str] | list[dict[str, Any]]:
    """Print and return num_samples continuations of the prompt (prompt included); with compare=true,
    the rows of the comparison table instead (see `run_compare`)."""
    device = pick_device(cfg.device)
    if cfg.ckpt_path and (task_model := load_task_model(cfg.ckpt_path)) is not None:
        return [answer_input(cfg, *task_model, device)]
    model, tok = load_model(cfg)
    model.to(device).eval()
    if cfg.compare:
        return run_compare(cfg, model, tok, device)
    d = decoding_from(cfg, tok, cfg.decoding)
    prompt, idx = encode_prompt(cfg.prompt, tok, model.config.block_size, device)
    if d.strategy == "beam":
        return run_beam(cfg, model, tok, prompt, idx, d)
    if cfg.num_samples > 1 and d.greedy:
        raise UserError(f"num_samples={cfg.num_samples} with {d.label()} decoding: greedy decoding is deterministic, "
                        f"so every sample would be the same text. Use num_samples=1, a sampling decoding (e.g. "
                        f"decoding=top_k) for different samples, or decoding=beam for the best num_samples hypotheses")
    g = d.generator(device)  # one stream of draws shared by all samples, so each sample differs
    texts = []
    for i in range(cfg.num_samples):
        if cfg.stream:
            print(prompt, end="", flush=True)
        r = decode_one(model, tok, idx, d, g, echo=cfg.stream)
        texts.append(prompt + r["text"])
        if not cfg.stream:
            print(texts[-1])
        rate = len(r["ids"]) / max(r["seconds"], 1e-9)
        print(f"---------- sample {i + 1}/{cfg.num_samples} ({d.label()}): "
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


def search_beams(model: GPT, tok: Tokenizer, idx: torch.Tensor, d: Decoding) -> tuple[list[dict[str, Any]], float]:
    """Beam search for idx (1, T): every hypothesis (ids, text with stop strings applied, score), best
    first, and the seconds the search took."""
    t0 = time.perf_counter()
    out = beam_search(model, idx, d)
    dt = time.perf_counter() - t0
    hyps = []
    for i in range(out.sequences.size(1)):
        ids = out.sequences[0, i, idx.size(1) : idx.size(1) + int(out.lengths[0, i])].tolist()
        text = TextStream(tok, d.stop, d.eos_token_id)
        for t in ids:
            text.push(t)
        hyps.append({"ids": ids, "text": text.text, "score": float(out.scores[0, i])})
    return hyps, dt


def run_beam(cfg: DictConfig, model: GPT, tok: Tokenizer, prompt: str, idx: torch.Tensor, d: Decoding) -> list[str]:
    """Beam search is one deterministic search: num_samples prints its best hypotheses, best first."""
    if cfg.num_samples > d.num_beams:
        raise UserError(f"num_samples={cfg.num_samples} > decoding.num_beams={d.num_beams}: beam search returns "
                         f"at most num_beams hypotheses")
    hyps, dt = search_beams(model, tok, idx, d)
    rate = max(len(h["ids"]) for h in hyps) / dt
    texts = []
    for i, h in enumerate(hyps[: cfg.num_samples]):
        texts.append(prompt + h["text"])
        print(texts[-1])
        print(f"---------- beam {i + 1}/{d.num_beams} ({d.label()}): score {h['score']:.4f}, {len(h['ids'])} "
              f"tokens; search {dt:.2f} s, {rate:.1f} tokens/s")
    return texts


def run_compare(cfg: DictConfig, model: GPT, tok: Tokenizer, device: torch.device) -> list[dict[str, Any]]:
    """The same prompt under every entry of compare_decodings: a table (per-token log-likelihood of
    the continuation under the untempered model, tokens/s), then each text. Every entry starts from
    the same seed, so any one row can be reproduced alone."""
    prompt, idx = encode_prompt(cfg.prompt, tok, model.config.block_size, device)
    rows = []
    for entry in cfg.compare_decodings:
        d = decoding_from(cfg, tok, entry, shortcuts=False)
        if d.strategy == "beam":
            hyps, dt = search_beams(model, tok, idx, d)
            r = {**hyps[0], "seconds": dt}
        else:
            r = decode_one(model, tok, idx, d, None, echo=False)  # None: a generator seeded with d.seed
        full = torch.tensor([idx[0].tolist() + r["ids"]], device=device)
        ll = token_logprobs(model, full, idx.size(1)) if r["ids"] else torch.zeros(1, 0)
        rows.append({"decoding": d.label(), "text": prompt + r["text"], "tokens": len(r["ids"]),
                     "loglik_per_token": float(ll.mean()) if r["ids"] else float("nan"),
                     "tokens_per_s": len(r["ids"]) / max(r["seconds"], 1e-9)})
    print_comparison(rows, prompt)
    return rows


def print_comparison(rows: list[dict[str, Any]], prompt: str) -> None:
    """The comparison table, then each row's whole text."""
    width = max(len(r["decoding"]) for r in rows)
    print(f"{'decoding':<{width}}  tokens  loglik/token  tokens/s  start of the continuation")
    for r in rows:
        start = r["text"][len(prompt) :][:40].replace("\n", "⏎")
        print(f"{r['decoding']:<{width}}  {r['tokens']:>6}  {r['loglik_per_token']:>12.3f}  "
              f"{r['tokens_per_s']:>8.1f}  {start}")
    for r in rows:
        print(f"\n========== {r['decoding']} (loglik/token {r['loglik_per_token']:.3f})\n{r['text']}")


@hydra_entry("generate", free_text=("prompt",))  # prompt=Café ROMEO: the text as typed
def main(cfg: DictConfig) -> None:
    run_generate(cfg)
