"""How each Transformer family reads a task batch (src, tgt), and how its answers are scored.

One batch shape, three readings (gptlab.data.tasks makes the batches; tgt is -1 where padded):
- decoder-only (GPT): one sequence `src <sep> tgt`, the loss on the tgt positions only (a
  classification target is one label token, so classifying is generating that token).
- encoder–decoder: the encoder reads src; the decoder reads `<sep> tgt[:-1]` (teacher forcing) and
  predicts tgt, through cross-attention.
- encoder-only: classification from the [CLS] position of `<sep> src` (the separator doubles as
  [CLS]) or the mean of positions; seq2seq only when the target is as long as the input
  ("aligned": one output per input position, read off the MLM head). Anything else it cannot express.

Padding: src is right-padded with the task's pad id, and a row's answer must not depend on how much
padding its batch adds. `src_pad_mask` is the one place the key-padding mask is made (True at pads);
every encoder and cross-attention reading src gets it. The decoder-only family gets none: its rows are
packed (`src <sep> tgt`, then the pads), and a causal model never reads the pads after a token.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from gptlab.decoding import Decoding
from gptlab.generation import generate

TASK_OBJECTIVES = ("classify", "seq2seq")


def arch_of(model) -> str:
    return getattr(model.config, "arch", "decoder")


def check_task(model, objective: str, task: dict[str, Any] | None, source: str = "data") -> None:
    """Fail before training, naming the key, when this model cannot learn this task as asked."""
    arch, cfg = arch_of(model), model.config
    if task is None:
        raise ValueError(f"objective={objective} needs task data (data=speakers|reverse|sort|add|continue); {source} has "
                         f"no 'task' in its meta.json")
    if objective == "classify" and task["kind"] != "classify":
        raise ValueError(f"objective=classify but data task {task['name']!r} is {task['kind']}: use objective="
                         f"{task['kind']}")
    if objective == "seq2seq" and task["kind"] != "seq2seq":
        raise ValueError(f"objective=seq2seq but data task {task['name']!r} is a classification: use objective=classify")
    if arch == "encoder" and objective == "classify" and cfg.n_classes != len(task["labels"]):
        raise ValueError(f"model.n_classes={cfg.n_classes} but data task {task['name']!r} has {len(task['labels'])} "
                         f"labels: set model.n_classes={len(task['labels'])} (the encoder's classification head)")
    if arch == "encoder" and objective == "seq2seq" and task.get("generation"):
        raise ValueError(f"model.arch=encoder cannot do data task {task['name']!r}: it is generation, and an encoder "
                         f"has no next-token distribution (it reads the whole sequence at once; outputs aligned to "
                         f"the input would not be a continuation); use model.arch=decoder or encoder_decoder")
    if arch == "encoder" and objective == "seq2seq" and not task["aligned"]:
        raise ValueError(f"model.arch=encoder cannot do data task {task['name']!r}: an encoder writes one output per "
                         f"input position, and this task's target length differs from its input's; use "
                         f"model.arch=decoder or encoder_decoder")
    S, T = task["max_src_len"], task["max_tgt_len"]
    need = {"decoder": S + T, "encoder": S + 1, "encoder_decoder": max(S, T)}[arch]
    if need > cfg.block_size:
        raise ValueError(f"data task {task['name']!r} has inputs up to {S} and targets up to {T} tokens (all splits, "
                         f"test_long included): model.arch={arch} needs model.block_size >= {need}, got {cfg.block_size}")


def src_pad_mask(src: torch.Tensor, task: dict[str, Any]) -> torch.Tensor | None:
    """(B, S) True at src's padding (the task's pad id), the key-padding mask of the encoder's
    self-attention and the decoder's cross-attention; None when the batch has no padding (the
    length-grouped seq2seq batches), which keeps the unmasked fused attention."""
    mask = src == task["pad_id"]
    return mask if bool(mask.any()) else None


def _cls_input(src: torch.Tensor, task: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The encoder classifier's input `<sep> src` (<sep> doubling as [CLS]) and its pad mask."""
    x = torch.cat([_column(src, task["sep_id"]), src], dim=1)
    return x, src_pad_mask(x, task)


def _packed(src: torch.Tensor, tgt: torch.Tensor, task: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder-only family's rows `src <sep> tgt` with src's padding moved to the end, and the
    label of each position (the next token where it is a target, else -1): every row's <sep> and
    target then sit right after its own input, at the positions it has when batched alone."""
    seq = torch.cat([src, _column(src, task["sep_id"]), _filled(tgt, task["pad_id"])], dim=1)
    label = torch.cat([torch.full_like(src, -1), _column(src, -1), tgt], dim=1)
    is_pad = torch.cat([src == task["pad_id"], torch.zeros_like(seq[:, src.size(1):], dtype=torch.bool)], dim=1)
    order = torch.sort(is_pad.to(torch.uint8), dim=1, stable=True).indices  # real tokens first, in order
    return seq.gather(1, order)[:, :-1], label.gather(1, order)[:, 1:]


def _filled(tgt: torch.Tensor, pad_id: int) -> torch.Tensor:
    return tgt.masked_fill(tgt < 0, pad_id)


def _column(x: torch.Tensor, token: int) -> torch.Tensor:
    return torch.full((x.size(0), 1), token, dtype=x.dtype, device=x.device)


def class_index(tgt: torch.Tensor, task: dict[str, Any]) -> torch.Tensor:
    """(B,) index into task['labels'] of each row's label token; a token outside them is an error."""
    hit = tgt[:, :1] == torch.tensor(task["label_ids"], device=tgt.device)
    if not bool(hit.any(1).all()):
        bad = sorted(set(tgt[~hit.any(1), 0].tolist()))
        raise ValueError(f"target token ids {bad} are not among data task {task['name']!r}'s label tokens "
                         f"{task['label_ids']} (labels {task['labels']})")
    return hit.float().argmax(1)


def task_logits(model, objective: str, src: torch.Tensor, tgt: torch.Tensor,
                task: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) of one batch, aligned position by position (targets -1 where unscored)."""
    arch, sep, pad = arch_of(model), task["sep_id"], task["pad_id"]
    if arch == "encoder_decoder":
        tgt_in = torch.cat([_column(tgt, sep), _filled(tgt, pad)[:, :-1]], dim=1)
        return model(src, tgt_in, src_pad_mask=src_pad_mask(src, task))[0], tgt
    if arch == "encoder" and objective == "classify":
        return model.classify(*_cls_input(src, task)), class_index(tgt, task)
    if arch == "encoder":  # aligned seq2seq: the target at each input position (EOS dropped)
        return model(src, pad_mask=src_pad_mask(src, task))[0], tgt[:, : src.size(1)]
    seq, y = _packed(src, tgt, task)
    return model(seq)[0], y


def label_logits(model, objective: str, src: torch.Tensor, task: dict[str, Any]) -> torch.Tensor:
    """(B, n_labels) logits of each row's class, in task['labels'] order, from any family."""
    if arch_of(model) == "encoder":
        return model.classify(*_cls_input(src, task))
    # the position that predicts the label token: after <sep> (decoder) or <sep> itself (enc-dec)
    logits, y = task_logits(model, objective, src, _column(src, task["label_ids"][0]), task)
    return logits[y != -1][:, task["label_ids"]]


def task_loss(model, objective: str, batch, task: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over the scored positions, and the accuracy of those predictions (per token;
    a label's prediction is restricted to the label tokens)."""
    logits, y = task_logits(model, objective, *batch, task)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1)
    if objective == "classify" and arch_of(model) != "encoder":
        label = torch.tensor(task["label_ids"], device=y.device)
        rows = y != -1
        pred = label[logits[rows][:, label].argmax(-1)]
        return loss, (pred == y[rows]).float().mean()
    scored = y != -1
    return loss, (logits.argmax(-1)[scored] == y[scored]).float().mean()


@torch.no_grad()
def predict(model, objective: str, src: torch.Tensor, task: dict[str, Any],
            decoding: Decoding | None = None) -> list[list[int]]:
    """Each row's answer as token ids (a class as its label token; a seq2seq answer up to and without EOS),
    generated by gptlab.generation (greedy unless `decoding` says otherwise; its length and end token
    are the task's) where the family generates."""
    arch, eos, sep = arch_of(model), task["eos_id"], task["sep_id"]
    if objective == "classify":
        return [[task["label_ids"][int(i)]] for i in label_logits(model, objective, src, task).argmax(-1)]
    lengths = (src != task["pad_id"]).sum(1).tolist()
    if arch == "encoder":  # one output per input position, the pads' cut off
        out = model(src, pad_mask=src_pad_mask(src, task))[0].argmax(-1).tolist()
        return [row[:n] for row, n in zip(out, lengths)]
    d = (decoding or Decoding(strategy="greedy")).replace(max_new_tokens=task["max_tgt_len"], eos_token_id=eos,
                                                          stop=())
    if arch == "encoder_decoder":
        out = generate(model.for_input(src, src_pad_mask(src, task)), _column(src, sep), d)[:, 1:].tolist()
    else:  # the prompt `src <sep>` must end at <sep>: one generate per input length, no padding inside
        out = [[] for _ in lengths]
        for n in sorted(set(lengths)):
            rows = [i for i, m in enumerate(lengths) if m == n]
            prompt = torch.cat([src[rows, :n], _column(src[rows], sep)], dim=1)
            for i, row in zip(rows, generate(model, prompt, d)[:, n + 1:].tolist()):
                out[i] = row
    return [row[: row.index(eos)] if eos in row else row for row in out]


def exact_match(model, objective: str, batches, task: dict[str, Any], decoding: Decoding | None = None) -> float:
    """The fraction of examples whose whole answer is right."""
    right = total = 0
    eos = task["eos_id"]
    for src, tgt in batches:
        for pred, want in zip(predict(model, objective, src, task, decoding), tgt.tolist()):
            want = [t for t in want if t not in (-1, eos)]
            right += pred == want
            total += 1
    return right / max(total, 1)



@torch.no_grad()
def target_cross_entropy(model, objective: str, batches, task: dict[str, Any]) -> float:
    """Mean cross-entropy in nats per scored target token over all batches (teacher forcing): for the
    decoder the loss on the target positions of `src <sep> tgt`, for the encoder–decoder the decoder's
    loss given the encoded src. Summed over tokens, not averaged per batch, so batch sizes do not weigh."""
    total, count = 0.0, 0
    for src, tgt in batches:
        logits, y = task_logits(model, objective, src, tgt, task)
        total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1,
                                       reduction="sum"))
        count += int((y != -1).sum())
    if count == 0:
        raise ValueError(f"data task {task['name']!r}: no scored target tokens in the batches given")
    return total / count


def model_from_checkpoint(path) -> tuple[Any, dict[str, Any]]:
    """The model of any family in a gptlab checkpoint (eval mode), and the checkpoint dict (its `task`,
    `tokenizer`, `hyper_parameters`)."""
    from gptlab.checkpoint import load_checkpoint, strip_wrapper_prefixes
    from gptlab.families import build_model

    ckpt = load_checkpoint(path)
    model = build_model(ckpt["hyper_parameters"]["model"])
    state = {k.removeprefix("model."): v for k, v in strip_wrapper_prefixes(ckpt["state_dict"]).items()
             if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval(), ckpt


@torch.no_grad()
def answer_text(model, ckpt: dict[str, Any], prompt: str, decoding: Decoding | None = None) -> str:
    """What `generate.py` prints for a task checkpoint: the answer to `prompt` (seq2seq), or the label
    distribution (classification). A family and objective with no answer to give is an error saying why."""
    from gptlab.tokenizers import tokenizer_from_spec

    task, objective = ckpt.get("task"), ckpt["hyper_parameters"].get("objective", "clm")
    tok = tokenizer_from_spec(ckpt["tokenizer"])
    if not prompt:
        raise ValueError("prompt='': give the input sequence to answer (e.g. prompt=abcdef for reverse)")
    src = torch.tensor([tok.encode(prompt)], dtype=torch.long, device=next(model.parameters()).device)
    check_task(model, objective, {**task, "max_src_len": src.size(1)}, "the checkpoint")
    if objective == "classify":
        probs = label_logits(model, objective, src, task).softmax(-1)[0]
        order = probs.argsort(descending=True).tolist()
        return "\n".join(f"{float(probs[k]):.3f}  {task['labels'][k]}" for k in order)
    (ids,) = predict(model, objective, src, task, decoding)
    return tok.decode(ids)


def load_task_model(path) -> tuple[Any, dict[str, Any]] | None:
    """The model and checkpoint of a task checkpoint (objective classify/seq2seq), for generate.py to
    answer its input; None for a language-model checkpoint (clm/mlm), which it continues as text."""
    from gptlab.checkpoint import load_checkpoint

    hp = load_checkpoint(path, mmap=True).get("hyper_parameters") or {}
    if hp.get("objective", "clm") not in TASK_OBJECTIVES:
        return None
    return model_from_checkpoint(path)
