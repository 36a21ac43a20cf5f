import math

import pytest
import torch

from gptlab.lit_module import GPTLitModule, get_lr
from gptlab.model import GPTConfig
from gptlab.optim import adamw
from tests.conftest import tiny_gpt

SCHEDULE = dict(lr=1e-3, min_lr=1e-4, warmup_steps=100, lr_decay_steps=2000)


def test_lr_schedule_warmup_cosine_constant():
    assert get_lr(0, **SCHEDULE) == pytest.approx(1e-3 * 1 / 101)
    assert get_lr(49, **SCHEDULE) == pytest.approx(1e-3 * 50 / 101)
    assert get_lr(100, **SCHEDULE) == pytest.approx(1e-3)  # end of warmup: the peak
    mid = 100 + (2000 - 100) // 2
    assert get_lr(mid, **SCHEDULE) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))  # cos(π/2) = 0
    quarter = 100 + (2000 - 100) // 4
    assert get_lr(quarter, **SCHEDULE) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi / 4)) * 9e-4)
    assert get_lr(2000, **SCHEDULE) == pytest.approx(1e-4)
    assert get_lr(2001, **SCHEDULE) == get_lr(10**6, **SCHEDULE) == 1e-4
    lrs = [get_lr(s, **SCHEDULE) for s in range(100, 2001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay


def test_weight_decay_groups_cover_every_parameter_exactly_once():
    model = tiny_gpt(n_embd=16, block_size=8, vocab_size=20)
    decay, no_decay = adamw(model, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1).param_groups
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    named = dict(model.named_parameters())
    decayed = {n for n, p in named.items() if any(p is q for q in decay["params"])}
    assert "transformer.wte.weight" in decayed  # the tied embedding, as nanoGPT does
    assert all(n.endswith("weight") and named[n].dim() == 2 for n in decayed)
    assert all(named[n].dim() == 1 for n in set(named) - decayed)  # biases and LayerNorms
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_scheduler_steps_per_optimizer_step():
    module = GPTLitModule(model=dict(n_layer=1, n_head=1, n_embd=8, block_size=4, vocab_size=10),
                          optim=dict(SCHEDULE, weight_decay=0.1, betas=[0.9, 0.95]))
    cfg = module.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    assert cfg["lr_scheduler"]["interval"] == "step"
    seen = []
    for _ in range(150):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:3] == pytest.approx([get_lr(s, **SCHEDULE) for s in range(3)])
    assert seen[120] == pytest.approx(get_lr(120, **SCHEDULE))
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_hparams_hold_plain_model_config():
    module = GPTLitModule(model=dict(n_layer=1, n_head=1, n_embd=8, block_size=4, vocab_size=10, compile=False),
                          optim=dict(SCHEDULE), tokenizer={"kind": "char", "chars": "ab"})
    assert GPTConfig.from_dict(module.hparams.model) == module.model.config
    assert torch.is_tensor(next(module.parameters()))
