"""Task data, the family-specific objectives, encoder–decoder decoding and resume through train()."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlab.data.tasks import (
    eval_batches,
    prepare_task,
    read_examples,
    shakespeare_speeches,
    speaker_examples,
    task_windows,
)
from gptlab.entrypoints.train import train
from gptlab.families import EncoderDecoder, FamilyConfig, build_model
from gptlab.generation import Decoding, generate
from gptlab.paths import SHIPPED_SHAKESPEARE
from gptlab.tasks import check_task, exact_match, predict, task_loss
from gptlab.tokenizers import tokenizer_from_spec
from tests.conftest import ROOT, compose_train_cfg
from tests.test_families import randomize

SEQ = dict(n_train=300, n_eval=40, split_seed=0)


@pytest.fixture(scope="module")
def reverse_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("reverse")
    prepare_task(dict(task="reverse", max_len=5, **SEQ), out)
    return out


@pytest.fixture(scope="module")
def add_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("add")
    prepare_task(dict(task="add", max_len=3, **SEQ), out)
    return out


def meta_task(d: Path) -> dict:
    return json.loads((d / "meta.json").read_text())["task"]


def decoded(d: Path, split: str) -> list[tuple[str, str]]:
    tok = tokenizer_from_spec(json.loads((d / "meta.json").read_text())["tokenizer"])
    ids, index = read_examples(d, split)
    return [(tok.decode(ids[s : s + n]), tok.decode(ids[t : t + m])) for s, n, t, m in index]


# ---- data ------------------------------------------------------------------------------------------------
def test_seq2seq_splits_hold_the_task_and_test_long_doubles_the_length(reverse_dir, add_dir):
    for src, tgt in decoded(reverse_dir, "train"):
        assert tgt == src[::-1] + "\ue002" and 1 <= len(src) <= 5
    assert {len(s) for s, _ in decoded(reverse_dir, "test_long")} <= set(range(6, 11))
    train_inputs = {s for s, _ in decoded(reverse_dir, "train")}
    assert not train_inputs & {s for s, _ in decoded(reverse_dir, "test")}  # held out
    for src, tgt in decoded(add_dir, "test_long"):
        a, b = src.split("+")
        assert int(tgt[:-1]) == int(a) + int(b)
    assert meta_task(reverse_dir)["aligned"] and not meta_task(add_dir)["aligned"]


def test_speaker_attribution_is_split_by_speech_and_keeps_the_most_frequent_speakers():
    cfg = dict(n_speakers=12, max_len=120, split_seed=0, val_fraction=0.1, test_fraction=0.1)
    splits, labels = speaker_examples(cfg)
    assert len(labels) == 12 and labels[0] == "GLOUCESTER"  # the most frequent speaker of Tiny Shakespeare
    speeches = shakespeare_speeches(SHIPPED_SHAKESPEARE.read_text())
    kept = [(sp[:120], s) for s, sp in speeches if s in labels]
    assert sorted(x for k in splits.values() for x in k) == sorted(kept)  # every speech once, in one split
    assert all(not text.startswith(tuple(f"{lab}:" for lab in labels)) for text, _ in kept)  # no speaker line


def test_batches_resume_from_their_index_and_group_inputs_by_length(reverse_dir):
    ids, _ = read_examples(reverse_dir, "train")
    a = task_windows(reverse_dir, ids, 32, 8, seed=3)
    b = task_windows(reverse_dir, ids, 32, 8, seed=3, start=5)
    assert all(torch.equal(x, y) for x, y in zip(a.batch(5), next(iter(b))))
    src, tgt = a.batch(0)
    assert (src != meta_task(reverse_dir)["pad_id"]).all()  # one input length per batch: no padding
    assert tgt.size(1) == src.size(1) + 1  # the reversal plus EOS
    n = sum(len(s) for s, _ in eval_batches(reverse_dir, "test", 7))
    assert n == json.loads((reverse_dir / "meta.json").read_text())["test_examples"]


def test_empty_target_is_an_error_naming_the_example():
    from gptlab.data.tasks import encode_split
    from gptlab.tokenizers import CharTokenizer

    with pytest.raises(ValueError, match="test example 1: empty target"):
        encode_split(CharTokenizer("ab"), [("a", "b"), ("ab", "")], eos=False, where="test")


# ---- objectives ------------------------------------------------------------------------------------------
def family(arch: str, task: dict, vocab: int, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model({**dict(arch=arch, n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=vocab), **kw})


@pytest.mark.parametrize("arch", ["decoder", "encoder", "encoder_decoder"])
def test_each_family_reads_the_batch_so_the_loss_trains(arch, reverse_dir):
    task, vocab = meta_task(reverse_dir), json.loads((reverse_dir / "meta.json").read_text())["vocab_size"]
    model = family(arch, task, vocab)
    check_task(model, "seq2seq", task)
    ids, _ = read_examples(reverse_dir, "train")
    batch = task_windows(reverse_dir, ids, 32, 16, seed=0).batch(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, _ = task_loss(model, "seq2seq", batch, task)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_the_decoder_cannot_see_the_target_it_predicts(reverse_dir):
    """Changing a target token changes no logit at or before the position that predicts it."""
    from gptlab.tasks import task_logits

    task = meta_task(reverse_dir)
    ids, _ = read_examples(reverse_dir, "train")
    src, tgt = task_windows(reverse_dir, ids, 32, 4, seed=0).batch(1)
    for arch in ("decoder", "encoder_decoder"):
        model = family(arch, task, 40).eval()
        logits, y = task_logits(model, "seq2seq", src, tgt, task)
        tgt2 = tgt.clone()
        tgt2[:, 2] = (tgt[:, 2] + 1) % 26
        logits2, _ = task_logits(model, "seq2seq", src, tgt2, task)
        at = int((y[0] == tgt[0, 2]).nonzero()[0])  # the position whose target is tgt[:, 2]
        torch.testing.assert_close(logits[:, : at + 1], logits2[:, : at + 1])


# ---- padding: a row's answer does not depend on its batch -----------------------------------------------
# a toy task: pad 0, sep 1, eos 2, labels 3..5, input tokens 6..29; rows right-padded to the longest
TOY = dict(name="toy", pad_id=0, sep_id=1, eos_id=2, label_ids=[3, 4, 5], labels=["A", "B", "C"], max_tgt_len=8)
LENGTHS = (9, 6, 3, 1)


def padded_batch(lengths=LENGTHS) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    src = torch.randint(6, 30, (len(lengths), max(lengths)), generator=g)
    return src.masked_fill(torch.arange(max(lengths))[None] >= torch.tensor(lengths)[:, None], TOY["pad_id"])


def lively(model: torch.nn.Module) -> torch.nn.Module:
    """Weights well away from their small init, so attention (and so padding) moves the outputs: an
    untrained model's tied head mostly echoes each position's own token, whatever it attends to."""
    randomize(model)
    return model.eval()


def alone(src: torch.Tensor, i: int, n: int) -> torch.Tensor:
    """Row i with no padding, as a batch of one."""
    return src[i : i + 1, :n]


@pytest.mark.parametrize("arch, kw", [("decoder", {}), ("encoder", dict(n_classes=3)),
                                      ("encoder", dict(n_classes=3, pool="mean")), ("encoder_decoder", {})])
def test_class_logits_of_a_row_are_the_same_alone_or_batched_with_longer_rows(arch, kw):
    from gptlab.tasks import label_logits

    model, src = lively(family(arch, None, 30, **kw)), padded_batch()
    with torch.no_grad():
        batched = label_logits(model, "classify", src, TOY)
        for i, n in enumerate(LENGTHS):
            torch.testing.assert_close(batched[i : i + 1], label_logits(model, "classify", alone(src, i, n), TOY),
                                       rtol=1e-5, atol=1e-5)
        if arch == "encoder":  # without the mask the short rows would read their pads
            x = torch.cat([torch.full((4, 1), TOY["sep_id"]), src], dim=1)
            assert not torch.allclose(model.classify(x)[3], batched[3], atol=1e-3)


@pytest.mark.parametrize("arch", ["decoder", "encoder", "encoder_decoder"])
@pytest.mark.parametrize("decoding", [dict(strategy="greedy"), dict(strategy="beam", num_beams=3)])
def test_seq2seq_answer_of_a_row_is_the_same_alone_or_batched_with_longer_rows(arch, decoding):
    model, src = lively(family(arch, None, 30)), padded_batch()
    d = Decoding(**decoding)
    batched = predict(model, "seq2seq", src, TOY, d)
    assert batched == [predict(model, "seq2seq", alone(src, i, n), TOY, d)[0] for i, n in enumerate(LENGTHS)]
    if arch == "encoder":  # one output per input position, not per padded position
        assert [len(a) for a in batched] == list(LENGTHS)


@pytest.mark.parametrize("bad, message", [
    (dict(arch="encoder", objective="seq2seq", data="add"), "model.arch=encoder cannot do data task 'add'"),
    (dict(arch="decoder", objective="seq2seq", data="add", block_size=8), "model.arch=decoder needs model.block_size >= 21, got 8"),
    (dict(arch="decoder", objective="classify", data="add"), "objective=classify but data task 'add' is seq2seq"),
])
def test_a_task_the_model_cannot_express_is_an_error_naming_the_key(bad, message, add_dir):
    model = family(bad["arch"], None, 40, block_size=bad.get("block_size", 32))
    with pytest.raises(ValueError, match=message):
        check_task(model, bad["objective"], meta_task(add_dir))


def test_classify_needs_task_data_and_a_head_of_the_right_size():
    model = family("encoder", None, 40, n_classes=3)
    with pytest.raises(ValueError, match="needs task data"):
        check_task(model, "classify", None)
    task = dict(name="speakers", kind="classify", labels=["A", "B"], max_src_len=5, max_tgt_len=1, aligned=False)
    with pytest.raises(ValueError, match="model.n_classes=3 but data task 'speakers' has 2 labels"):
        check_task(model, "classify", task)


# ---- encoder–decoder decoding ----------------------------------------------------------------------------
@pytest.mark.parametrize("decoding", [dict(strategy="greedy"), dict(strategy="beam", num_beams=3),
                                      dict(strategy="sample", temperature=0.9, top_k=5, top_p=0.9)])
@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_encoder_decoder_decodes_the_same_tokens_with_and_without_the_cache(decoding, lengths):
    """Also with inputs of different lengths in one batch: the cached cross-attention keys/values carry
    the pad mask, and beam search reorders it with its beams."""
    torch.manual_seed(0)
    model = lively(EncoderDecoder(FamilyConfig(arch="encoder_decoder", n_layer=2, n_enc_layer=2, n_head=2, n_embd=32,
                                               block_size=24, vocab_size=30)))
    src = torch.randint(0, 30, (4, 9)) if lengths is None else padded_batch(lengths)
    pad, start = (None if lengths is None else src == TOY["pad_id"]), torch.full((4, 1), 1)
    runs = [generate(model.for_input(src, pad), start, Decoding(max_new_tokens=20, use_cache=use_cache,
                                                                eos_token_id=2, seed=1, **decoding))
            for use_cache in (True, False)]
    assert torch.equal(runs[0], runs[1])
    assert runs[0].size(1) > 5


def test_cross_attention_keys_values_are_computed_once_per_input_with_the_cache():
    torch.manual_seed(0)
    model = EncoderDecoder(FamilyConfig(arch="encoder_decoder", n_layer=2, n_head=2, n_embd=32, block_size=24,
                                        vocab_size=30)).eval()
    calls = []
    model.decoder.h[0].cross.kv_proj.register_forward_hook(lambda *_: calls.append(1))
    src, start = torch.randint(0, 30, (2, 7)), torch.full((2, 1), 1)
    generate(model.for_input(src), start, Decoding(strategy="greedy", max_new_tokens=12))
    assert len(calls) == 1
    calls.clear()
    generate(model.for_input(src), start, Decoding(strategy="greedy", max_new_tokens=12, use_cache=False))
    assert len(calls) == 12


def test_predict_and_exact_match_read_the_answer_up_to_eos(reverse_dir):
    task = meta_task(reverse_dir)
    model = family("encoder_decoder", task, 40).eval()
    batches = eval_batches(reverse_dir, "test", 16)
    preds = predict(model, "seq2seq", batches[0][0], task)
    assert len(preds) == batches[0][0].size(0) and all(task["eos_id"] not in p for p in preds)
    assert 0.0 <= exact_match(model, "seq2seq", batches, task) <= 1.0


# ---- through train() -------------------------------------------------------------------------------------
RESUME = ("model.n_embd=32", "model.block_size=24", "trainer.accelerator=cpu", "trainer.enable_model_summary=false",
          "trainer.enable_progress_bar=false", "eval_interval=3", "data.val_batches=2", "data.batch_size=8",
          "optim.warmup_steps=1", "optim.lr_decay_steps=6", "trainer.log_every_n_steps=1", "model.dropout=0.1",
          "data=reverse", "data.max_len=5", "data.n_train=300", "data.n_eval=20", "objective=seq2seq")


def losses(run_dir: Path) -> list[float]:
    with open(run_dir / "logs" / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.parametrize("model", ["encoder", "encoder_decoder"])
def test_a_family_resumes_exactly(model, tmp_path):
    """6 steps straight vs 3 + resume: the same per-step losses (bitwise) and weights, with dropout on."""
    run = [f"model={model}", *RESUME]
    data = tmp_path / "data"
    straight = train(compose_train_cfg(tmp_path / "straight", data, [*run, "trainer.max_steps=6"]))
    half = train(compose_train_cfg(tmp_path / "half", data, [*run, "trainer.max_steps=3"]))
    train(compose_train_cfg(tmp_path / "resumed", data, [*run, "trainer.max_steps=6", f"ckpt_path={half['last_ckpt']}"]))
    # a resumed run's log starts with the rows it resumed from (callbacks/history.py), so it is the whole curve
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    assert losses(tmp_path / "half") == losses(tmp_path / "straight")[:3]
    assert len(losses(tmp_path / "straight")) == 6
    a = torch.load(straight["last_ckpt"], weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.equal(t, b["state_dict"][k]) for k, t in a["state_dict"].items())
    assert a["task"]["name"] == "reverse"


def test_encoder_decoder_with_a_language_model_objective_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="model.arch=encoder_decoder with objective=clm"):
        train(compose_train_cfg(tmp_path / "run", tmp_path / "data", ["model=encoder_decoder", "trainer.max_steps=1"]))


@pytest.mark.slow
def test_the_reduced_experiment_runs_and_records_every_cell(tmp_path):
    """experiments/architectures/run.py --quick (1 seed, 20 steps per run) end to end, < 60 s unloaded."""
    subprocess.run([sys.executable, str(ROOT / "experiments/architectures/run.py"), "--quick", "--out",
                    str(tmp_path / "out"), "--results", str(tmp_path), "--tasks", "reverse,add"], check=True,
                   timeout=600)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {(r["task"], r["family"]) for r in rows} == {("reverse", "decoder"), ("reverse", "encoder"),
                                                        ("reverse", "encoder_decoder"), ("add", "decoder"),
                                                        ("add", "encoder_decoder")}
    assert all(0.0 <= r["test"] <= 1.0 and "test_long" in r for r in rows)


def test_generate_answers_from_encoder_decoder_and_encoder_classifier_checkpoints(tmp_path, capsys):
    from gptlab.entrypoints.generate import run_generate
    from tests.conftest import compose_generate_cfg

    quick = ["trainer.max_steps=2", "eval_interval=2", *RESUME[:5], "data.val_batches=1", "data.batch_size=4"]
    ed = train(compose_train_cfg(tmp_path / "ed", tmp_path / "data", [
        "model=encoder_decoder", *quick, "data=reverse", "data.max_len=5", "data.n_train=50", "data.n_eval=10",
        "objective=seq2seq"]))
    (answer,) = run_generate(compose_generate_cfg([f"ckpt_path={ed['last_ckpt']}", "prompt=abc", "decoding=greedy"]))
    from gptlab.tasks import model_from_checkpoint

    model, ckpt = model_from_checkpoint(ed["last_ckpt"])
    tok = tokenizer_from_spec(ckpt["tokenizer"])
    greedy = predict(model, "seq2seq", torch.tensor([tok.encode("abc")]), ckpt["task"], Decoding(strategy="greedy"))
    assert answer == tok.decode(greedy[0]) and len(answer) <= ckpt["task"]["max_tgt_len"]
    enc = train(compose_train_cfg(tmp_path / "enc", tmp_path / "data", [
        "model=encoder", *quick, "model.block_size=40", "data=speakers", "data.max_len=32", "objective=classify"]))
    (dist,) = run_generate(compose_generate_cfg([f"ckpt_path={enc['last_ckpt']}", "prompt=My lord"]))
    lines = dist.splitlines()
    assert len(lines) == 12 and "GLOUCESTER" in dist
    assert sum(float(line.split()[0]) for line in lines) == pytest.approx(1.0, abs=0.01)


def test_a_label_outside_the_class_list_is_an_error_naming_it():
    from gptlab.tasks import class_index

    task = dict(name="speakers", labels=["A", "B"], label_ids=[7, 8])
    assert class_index(torch.tensor([[8], [7]]), task).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"target token ids \[3\] are not among data task 'speakers'"):
        class_index(torch.tensor([[8], [3]]), task)


# ---- generation: data=continue -----------------------------------------------------------------------------
CONT = dict(task="continue", prefix_len=48, target_len=16, n_train=60, n_eval=10)


@pytest.fixture(scope="module")
def continue_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("continue")
    prepare_task(dict(CONT, split_seed=0), out)
    return out


def test_continue_windows_come_from_their_own_region_of_the_text_and_are_seeded(continue_dir, tmp_path):
    text = SHIPPED_SHAKESPEARE.read_text()
    n = len(text)
    regions = {"train": text[: int(0.85 * n)], "val": text[int(0.85 * n) : int(0.9 * n)], "test": text[int(0.9 * n) :]}
    for split, region in regions.items():
        rows = decoded(continue_dir, split)
        assert len(rows) == (60 if split == "train" else 10)
        for src, tgt in rows:  # prefix then its true next 16 characters (no EOS), inside the split's region
            assert len(src) == 48 and len(tgt) == 16 and src + tgt in region
    meta = json.loads((continue_dir / "meta.json").read_text())
    assert meta["vocab_size"] == len(set(text)) + 3  # the text's characters and <pad> <sep> <eos>
    with pytest.raises(ValueError, match="split='test_long'"):
        read_examples(continue_dir, "test_long")  # no longer-continuation split: omitted, not faked
    prepare_task(dict(CONT, split_seed=0), tmp_path / "same")
    prepare_task(dict(CONT, split_seed=1), tmp_path / "other")
    same, other = ((tmp_path / d / "train.bin").read_bytes() for d in ("same", "other"))
    assert same == (continue_dir / "train.bin").read_bytes() and other != same


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
def test_continue_cross_entropy_is_the_loss_of_the_model_logits_on_the_target(arch, continue_dir):
    from gptlab.tasks import target_cross_entropy

    task, vocab = meta_task(continue_dir), json.loads((continue_dir / "meta.json").read_text())["vocab_size"]
    model = family(arch, task, vocab, block_size=64).eval()
    randomize(model)
    batches = eval_batches(continue_dir, "test", 4)  # 4 + 4 + 2 rows: the mean must weigh tokens, not batches
    src, tgt = (torch.cat(x) for x in zip(*batches))
    sep = torch.full((src.size(0), 1), task["sep_id"])
    with torch.no_grad():
        if arch == "decoder":  # `prefix <sep> target`: position 48 (<sep>) onwards predicts the target
            logits = model(torch.cat([src, sep, tgt[:, :-1]], dim=1))[0][:, 48:]
        else:  # the encoder reads the prefix, the decoder reads `<sep> target[:-1]`
            logits = model(src, torch.cat([sep, tgt[:, :-1]], dim=1))[0]
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), tgt.reshape(-1))
    assert (tgt >= 0).all() and logits.shape[1] == 16
    assert target_cross_entropy(model, "seq2seq", batches, task) == pytest.approx(want.item(), rel=1e-5)


def test_the_encoder_cannot_generate_and_the_grid_says_so(continue_dir):
    import importlib.util

    task, vocab = meta_task(continue_dir), json.loads((continue_dir / "meta.json").read_text())["vocab_size"]
    with pytest.raises(ValueError, match="model.arch=encoder cannot do data task 'continue'.*no next-token"):
        check_task(family("encoder", task, vocab, block_size=64), "seq2seq", task)
    spec = importlib.util.spec_from_file_location("arch_report", ROOT / "experiments/architectures/report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    row = dict(task="continue", family="decoder", test_xent_nats=2.0, test=0.0, params=10, train_seconds=1, steps=3)
    lines = report.table([row], {}).splitlines()
    assert "| continue | encoder | – | cannot express it |" in "\n".join(lines)
    assert any(line.startswith("| continue | decoder | 1 | 2.000 | 2.885 |") for line in lines)
