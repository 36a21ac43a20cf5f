"""gptlab.optim: the parameter split, Muon + AdamW as one optimizer, the WSD schedule, built from config."""

import copy

import pytest
import torch

from gptlab.lit_module import GPTLitModule, build_optimizer
from gptlab.optim import MuonAdamW, cosine, muon, split_params, wsd
from tests.conftest import tiny_gpt

SCHEDULE = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, lr_decay_steps=110)
MUON = {"_target_": "gptlab.optim.muon", "_partial_": True, "lr": 1e-3, "betas": [0.9, 0.95],
        "weight_decay": 0.1, "muon_lr": 2e-2}


def test_wsd_is_warmup_then_flat_then_a_linear_decay_over_the_last_fraction():
    lrs = [wsd(s, **SCHEDULE, decay_fraction=0.2) for s in range(130)]
    assert lrs[:10] == pytest.approx([cosine(s, **SCHEDULE) for s in range(10)])  # the same warmup
    assert lrs[10:91] == [1e-3] * 81  # stable until 110 - 0.2 × 100 = 90
    assert lrs[100] == pytest.approx(1e-3 + (1e-4 - 1e-3) * 10 / 20)  # halfway down the ramp
    assert lrs[110:] == [1e-4] * 20
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    with pytest.raises(ValueError, match="decay_fraction=0"):
        wsd(50, **SCHEDULE, decay_fraction=0)


def test_split_gives_muon_the_block_matrices_and_adamw_the_rest_each_once():
    model = tiny_gpt(n_embd=16, block_size=8, vocab_size=20)
    groups = split_params(model)
    names = {id(p): n for n, p in model.named_parameters()}
    hidden = {names[id(p)] for p in groups["hidden"]}
    assert hidden == {n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2}
    assert "transformer.wte.weight" in {names[id(p)] for p in groups["decay"]}  # the (tied) embedding/head
    assert all(p.dim() == 1 for p in groups["no_decay"])
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_muon_given_a_tensor_it_cannot_take_names_the_key_and_the_tensor():
    model = tiny_gpt(n_embd=16, block_size=8, vocab_size=20)
    with pytest.raises(ValueError, match=r"optim.optimizer.muon_params=\['transformer.h.\*'\] matches "
                                         r"transformer.h.0.ln_1.weight of shape \(16,\)"):
        muon(model, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, muon_params=["transformer.h.*"])
    with pytest.raises(ValueError, match=r"muon_params=\['nothing'\]: no parameter"):
        muon(model, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, muon_params=["nothing"])


def test_muon_adamw_steps_both_with_their_own_lr_and_its_state_dict_round_trips():
    torch.manual_seed(0)
    model = tiny_gpt(n_embd=16, block_size=8, vocab_size=20)
    opt = build_optimizer(model, {"lr": 1e-3, "optimizer": MUON})
    assert isinstance(opt, MuonAdamW) and [g["name"] for g in opt.param_groups] == ["hidden", "decay", "no_decay"]
    assert [g["lr"] for g in opt.param_groups] == [2e-2, 1e-3, 1e-3]
    x = torch.randint(0, 20, (2, 8))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(x, x)[1].backward()
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())  # every tensor moved
    assert len(opt.state) == len(before)
    # a twin loaded from the state dict takes the same next step (Muon momentum and Adam moments restored)
    twin_model = tiny_gpt(n_embd=16, block_size=8, vocab_size=20)
    twin_model.load_state_dict(model.state_dict())
    twin = build_optimizer(twin_model, {"lr": 1e-3, "optimizer": MUON})
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))  # a copy, as a checkpoint is: loading shares tensors
    for group in twin.param_groups:  # what an LR scheduler sets must reach the optimizers that step
        group["lr"] = 0.0
    assert all(g["lr"] == 0.0 for o in twin.optimizers.values() for g in o.param_groups)
    for group in twin.param_groups:
        group["lr"] = 2e-2 if group["name"] == "hidden" else 1e-3
    for m, o in ((model, opt), (twin_model, twin)):
        o.zero_grad()
        m(x, x)[1].backward()
        o.step()
    for (n, p), q in zip(model.named_parameters(), twin_model.parameters()):
        assert torch.equal(p, q), n


def test_module_schedules_every_group_by_the_configs_schedule():
    optim = dict(SCHEDULE, optimizer=MUON, schedule={"_target_": "gptlab.optim.wsd", "_partial_": True,
                                                     **SCHEDULE, "decay_fraction": 0.5})
    module = GPTLitModule(model=dict(n_layer=1, n_head=1, n_embd=8, block_size=4, vocab_size=10), optim=optim)
    cfg = module.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    for step in range(120):
        factor = wsd(step, **SCHEDULE, decay_fraction=0.5) / 1e-3
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-2 * factor, 1e-3 * factor, 1e-3 * factor])
        opt.step()
        sched.step()
