"""Decoding against transformers: logits warpers, greedy, beam search, seeded sampling; KV cache;
the sliding window; validation; the generate.py CLI (streaming, stop strings, compare, beams)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers reads it: no test touches the network

import pytest
import torch
import transformers
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from gptlab.decoding import Decoding, apply_top_k, apply_top_p, choose, process_logits
from gptlab.generation import Decoder, TextStream, beam_search, generate, stream, token_logprobs
from gptlab.hf import from_pretrained
from gptlab.model import GPT
from gptlab.tokenizers import CharTokenizer
from tests.conftest import tiny_gpt
from tests.test_hf import hf_model

transformers.logging.set_verbosity_error()

HF_CONFIGS = [
    dict(vocab_size=101, n_positions=64, n_embd=48, n_layer=2, n_head=3),
    dict(vocab_size=50, n_positions=40, n_embd=32, n_layer=1, n_head=1, activation_function="gelu"),
]


@pytest.fixture(scope="module", params=range(len(HF_CONFIGS)))
def twins(request, tmp_path_factory):
    """A random GPT2LMHeadModel and our GPT loaded from its saved folder (same weights), and prompts."""
    cfg = HF_CONFIGS[request.param]
    hf = hf_model(seed=request.param, **cfg)
    folder = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(folder)
    ours = from_pretrained(folder).eval()
    idx = torch.randint(0, cfg["vocab_size"], (2, 5), generator=torch.Generator().manual_seed(request.param))
    return hf, ours, idx


def hf_generate(hf, idx, max_new_tokens, **kwargs):
    eos = kwargs.get("eos_token_id")
    return hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=max_new_tokens,
                       pad_token_id=eos, **kwargs)


# ---- logits processors -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("temperature,top_k,top_p", [
    (0.7, None, None), (1.3, 5, None), (1.0, None, 0.9), (0.8, 50, 0.95), (1.0, 1, None), (2.0, None, 0.05),
    (1.0, 999, None),
])
def test_processors_equal_transformers_warpers(seed, temperature, top_k, top_p):
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(seed)) * 3
    chain = [TemperatureLogitsWarper(temperature)]
    chain += [TopKLogitsWarper(top_k)] if top_k else []
    chain += [TopPLogitsWarper(top_p)] if top_p else []
    expected = LogitsProcessorList(chain)(None, logits.clone())
    assert torch.equal(process_logits(logits, temperature, top_k, top_p), expected)


def test_top_k_keeps_exactly_k_on_ties():
    logits = torch.tensor([[1.0, 3.0, 2.0, 2.0, 2.0, 0.5], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])
    kept = apply_top_k(logits, 3) > float("-inf")
    assert kept.sum(dim=1).tolist() == [3, 3]  # transformers (and nanoGPT) keep all 4 and all 6 tied
    assert kept.tolist() == [[False, True, True, True, False, False], [True, True, True, False, False, False]]
    assert (TopKLogitsWarper(3)(None, logits) > float("-inf")).sum(dim=1).tolist() == [4, 6]


def test_top_k_larger_than_vocab_and_top_p_keeps_one():
    logits = torch.randn(2, 10)
    assert torch.equal(apply_top_k(logits, 11), logits)
    kept = apply_top_p(logits, 1e-6) > float("-inf")
    assert kept.sum(dim=1).tolist() == [1, 1] and torch.equal(kept.float().argmax(1), logits.argmax(1))


def test_top_p_never_samples_outside_the_nucleus():
    """The nucleus computed independently in float64; 20,000 draws must stay inside it and hit each
    member about as often as its renormalised probability."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, generator=g, dtype=torch.float64) * 2
    probs = logits.softmax(0)
    order = probs.argsort(descending=True)
    n = int((probs[order].cumsum(0) < 0.8).sum()) + 1  # smallest top set holding >= 0.8
    nucleus = set(order[:n].tolist())
    assert 1 < n < 40
    draws = choose(process_logits(logits.float().expand(20_000, 40), top_p=0.8), greedy=False, generator=g)
    counts = torch.bincount(draws, minlength=40).double()
    assert set(draws.unique().tolist()) == nucleus
    expected = probs * (torch.isin(torch.arange(40), torch.tensor(sorted(nucleus)))) / probs[order[:n]].sum()
    sd = (20_000 * expected * (1 - expected)).sqrt()
    assert ((counts - 20_000 * expected).abs() <= 5 * sd + 1).all()


# ---- parity with transformers' generate -----------------------------------------------------------------
def test_greedy_equals_transformers(twins):
    hf, ours, idx = twins
    expected = hf_generate(hf, idx, 20, do_sample=False)
    assert torch.equal(generate(ours, idx, Decoding("greedy", 20)), expected)
    assert torch.equal(generate(ours, idx, Decoding(temperature=0.0, max_new_tokens=20)), expected)  # T=0 is greedy
    eos = int(expected[1, 12])
    expected = hf_generate(hf, idx, 20, do_sample=False, eos_token_id=eos)
    assert torch.equal(generate(ours, idx, Decoding("greedy", 20, eos_token_id=eos)), expected)


@pytest.mark.parametrize("num_beams", [2, 3, 5])
@pytest.mark.parametrize("with_eos", [False, True])
def test_beam_search_equals_transformers(twins, num_beams, with_eos):
    hf, ours, idx = twins
    no_eos = hf_generate(hf, idx, 16, do_sample=False, num_beams=num_beams)
    eos = int(no_eos[0, 12]) if with_eos else None  # a token the best beam meets: the search must change
    expected = hf_generate(hf, idx, 16, do_sample=False, num_beams=num_beams, eos_token_id=eos)
    assert torch.equal(generate(ours, idx, Decoding("beam", 16, num_beams=num_beams, eos_token_id=eos)), expected)
    assert torch.equal(expected, no_eos) != with_eos


@pytest.mark.parametrize("length_penalty,early_stopping", [(0.0, "never"), (2.0, True), (-1.0, False)])
def test_all_beams_and_scores_equal_transformers(twins, length_penalty, early_stopping):
    hf, ours, idx = twins
    k = 3
    eos = int(hf_generate(hf, idx, 16, do_sample=False, num_beams=k)[0, 10])
    expected = hf_generate(hf, idx, 16, do_sample=False, num_beams=k, eos_token_id=eos, num_return_sequences=k,
                           length_penalty=length_penalty, early_stopping=early_stopping,
                           return_dict_in_generate=True, output_scores=True)
    got = beam_search(ours, idx, Decoding("beam", 16, num_beams=k, eos_token_id=eos, length_penalty=length_penalty,
                                          early_stopping=early_stopping))
    assert torch.equal(got.sequences.flatten(0, 1), expected.sequences)
    torch.testing.assert_close(got.scores.flatten(), expected.sequences_scores, atol=1e-4, rtol=1e-5)


def test_seeded_sampling_equals_transformers_and_repeats(twins):
    """Same processed distribution, same multinomial call: under torch.manual_seed the draws match."""
    hf, ours, idx = twins
    kw = dict(temperature=0.9, top_k=20, top_p=0.9)
    torch.manual_seed(7)
    expected = hf_generate(hf, idx, 20, do_sample=True, **kw)
    torch.manual_seed(7)
    assert torch.equal(generate(ours, idx, Decoding(max_new_tokens=20, **kw)), expected)  # seed None: global RNG
    a, b, c = (generate(ours, idx, Decoding(max_new_tokens=20, seed=s, **kw)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(1)  # an explicit generator wins over the seed
    assert torch.equal(generate(ours, idx, Decoding(max_new_tokens=20, seed=2, **kw), generator=g), a)


# ---- KV cache and long contexts ---------------------------------------------------------------------------
def small_gpt(block_size=16, vocab_size=37, seed=0) -> GPT:
    torch.manual_seed(seed)
    return tiny_gpt(block_size=block_size, vocab_size=vocab_size).eval()


@torch.no_grad()
def nanogpt_greedy(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """nanoGPT's generate loop, the reference: forward the last block_size tokens, take the argmax."""
    for _ in range(max_new_tokens):
        nxt = model(idx[:, -model.config.block_size :])[0][:, -1].argmax(-1, keepdim=True)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


def test_cached_and_uncached_logits_match_every_step_past_block_size():
    """The references and the uncached logits come first: any forward while the cache is set up
    writes into it, which would refresh every cached key before each step. Randomised weights, so
    that the keys matter."""
    from tests.test_hf import randomize_

    model = randomize_(small_gpt(), 0)
    seq = torch.randint(0, 37, (3, 40), generator=torch.Generator().manual_seed(1))
    steps = range(4, seq.size(1))  # prefill 4, one token per step, then the window slides at 17
    with torch.no_grad():
        references = {t: model(seq[:, max(0, t - 16) : t])[0][:, -1] for t in steps}
    uncached = Decoder(model, 3, use_cache=False)
    recomputed = {t: uncached(seq[:, :t]) for t in steps}
    cached = Decoder(model, 3, use_cache=True)
    for t in steps:
        a, b = cached(seq[:, :t]), recomputed[t]
        assert (a - references[t]).abs().max() <= 1e-5 and (b - references[t]).abs().max() <= 1e-5


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_cache_does_not_change_outputs(strategy):
    model = small_gpt()
    idx = torch.randint(0, 37, (2, 6), generator=torch.Generator().manual_seed(2))
    d = Decoding(strategy, 30, num_beams=3 if strategy == "beam" else 1)
    assert torch.equal(generate(model, idx, d), generate(model, idx, d.replace(use_cache=False)))


@pytest.mark.slow  # ~45 s: two inductor compiles (batch 2, then 4 beams' rows)
def test_compiled_steps_match_eager():
    """compile=True: the one-token steps run compiled, with the eager logits up to rounding and,
    on these weights, the same tokens (greedy and beam, past block_size where the window slides)."""
    from torch._dynamo.utils import counters

    counters.clear()
    model = small_gpt()
    seq = torch.randint(0, 37, (2, 16), generator=torch.Generator().manual_seed(5))
    compiled = Decoder(model, 2, compile=True)
    for t in range(4, 17):
        with torch.no_grad():
            reference = model(seq[:, :t])[0][:, -1]
        assert (compiled(seq[:, :t]) - reference).abs().max() <= 1e-5
    assert counters["stats"]["unique_graphs"] >= 1  # the steps did go through torch.compile
    for d in (Decoding("greedy", 20), Decoding("beam", 20, num_beams=2)):
        assert torch.equal(generate(model, seq[:, :6], d.replace(compile=True)), generate(model, seq[:, :6], d))


def test_bidirectional_model_rereads_the_window_whatever_use_cache_says():
    """Without the causal mask an earlier position's keys depend on later tokens, so cached keys go
    stale: the next-token logits must be those of the whole window, as generate_text and the CLI
    (use_cache=true by default) both promise."""
    from tests.test_hf import randomize_

    torch.manual_seed(0)
    model = randomize_(tiny_gpt(vocab_size=37, causal=False), 0)
    idx = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(1))
    expected = nanogpt_greedy(model, idx, 8)
    for d in (Decoding("greedy", 8), Decoding("beam", 8, num_beams=1)):
        assert torch.equal(generate(model, idx, d), expected)
    assert Decoder(model, 2).cache is None  # no cache is ever set up


def test_prompt_longer_than_block_size_is_cropped_from_the_left():
    """nanoGPT's loop is the reference."""
    model = small_gpt()
    idx = torch.randint(0, 37, (1, 25), generator=torch.Generator().manual_seed(3))
    assert torch.equal(generate(model, idx, Decoding("greedy", 10)), nanogpt_greedy(model, idx, 10))


def test_equal_length_prompts_batch_without_padding():
    model = small_gpt()
    idx = torch.randint(0, 37, (3, 5), generator=torch.Generator().manual_seed(4))
    together = generate(model, idx, Decoding("greedy", 12))
    assert all(torch.equal(together[i : i + 1], generate(model, idx[i : i + 1], Decoding("greedy", 12)))
               for i in range(3))


def test_stream_yields_what_generate_returns_and_zero_tokens():
    model = small_gpt()
    idx = torch.randint(0, 37, (2, 5))
    tokens = torch.stack(list(stream(model, idx, Decoding("greedy", 7))), dim=1)
    assert torch.equal(torch.cat([idx, tokens], 1), generate(model, idx, Decoding("greedy", 7)))
    assert torch.equal(generate(model, idx, Decoding(max_new_tokens=0)), idx)
    assert torch.equal(generate(model, idx, Decoding("beam", 0, num_beams=2)), idx)


def test_generation_leaves_the_model_as_it_was():
    model = small_gpt().train()
    generate(model, torch.zeros(1, 3, dtype=torch.long), Decoding("beam", 4, num_beams=2))
    assert model.training and not any(torch.is_tensor(v) for m in model.modules() for v in vars(m).values())


@pytest.mark.parametrize("causal", [True, False])
def test_token_logprobs_match_the_model(causal):
    """Each token scored from the window before it, as decoding saw it: a bidirectional model read
    over the whole sequence at once would see the very token it is scored on."""
    from tests.test_hf import randomize_

    torch.manual_seed(0)
    model = randomize_(tiny_gpt(vocab_size=37, causal=causal), 0)
    seq = torch.randint(0, 37, (2, 24), generator=torch.Generator().manual_seed(5))
    got = token_logprobs(model, seq, 3)
    with torch.no_grad():
        expected = [torch.log_softmax(model(seq[:, max(0, t - 16) : t])[0][:, -1], -1)[:, seq[0, t]][0]
                    for t in range(3, 24)]
    torch.testing.assert_close(got[0], torch.stack(expected))


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-0.1), "temperature must be >= 0"),
    (dict(top_k=0), "top_k must be an integer >= 1"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(strategy="beam", num_beams=0), "num_beams must be an integer >= 1"),
    (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 0"),
    (dict(strategy="nucleus"), "strategy must be one of"),
    (dict(num_beams=3), "num_beams=3 needs strategy='beam'"),
    (dict(strategy="beam", num_beams=2, temperature=0.7), "strategy='beam' is deterministic"),
    (dict(strategy="beam", num_beams=2, early_stopping="sometimes"), "early_stopping must be one of"),
])
def test_bad_parameters_are_rejected(kwargs, match):
    kwargs = {"max_new_tokens": 5, **kwargs}
    with pytest.raises(ValueError, match=match):
        Decoding(**kwargs)
    with pytest.raises(ValueError, match=match):
        Decoding.from_dict(kwargs)


@pytest.mark.parametrize("idx,match", [
    (torch.zeros(1, 0, dtype=torch.long), r"at least one token.*shape \(1, 0\)"),
    (torch.tensor([1, 2]), r"\(batch, time\).*shape \(2,\)"),
    (torch.tensor([[1, 37]]), r"token ids 1\.\.37.*vocabulary 0\.\.36"),
])
@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_bad_prompts_are_rejected_with_their_shape_or_ids(idx, match, strategy):
    """An empty or 1-D prompt and out-of-vocabulary ids name themselves, not an IndexError deep in the model."""
    with pytest.raises(ValueError, match=match):
        generate(small_gpt(), idx, Decoding(strategy, 3, num_beams=2 if strategy == "beam" else 1))


# ---- generate.py ------------------------------------------------------------------------------------------
TEXT = "ROMEO: a rose by any other name\n\nJULIET: would smell as sweet\n"


@pytest.fixture(scope="module")
def char_ckpt(tmp_path_factory):
    """A gptlab-style checkpoint of a small random char model: what train.py writes, minus Lightning's extras."""
    tok = CharTokenizer.fit(TEXT)
    model = small_gpt(block_size=32, vocab_size=tok.vocab_size, seed=3)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": model.config.to_dict()}, "tokenizer": tok.to_spec()}, path)
    return path


def run_cli(ckpt, *overrides):
    from hydra import compose, initialize_config_dir

    from gptlab.entrypoints.generate import run_generate
    from tests.conftest import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("generate", overrides=[f"ckpt_path={ckpt}", "device=cpu", *overrides])
    return run_generate(cfg)


def test_cli_decodings_match_the_library(char_ckpt, capsys):
    from gptlab.checkpoint import load_gpt_from_lightning_ckpt

    model, ckpt = load_gpt_from_lightning_ckpt(char_ckpt)
    tok = CharTokenizer.from_spec(ckpt["tokenizer"])
    idx = torch.tensor([tok.encode("ROMEO:")])
    for overrides, kw in [
        (["decoding=greedy"], dict(strategy="greedy")),
        (["decoding=beam", "decoding.num_beams=3", "decoding.length_penalty=0.5"],
         dict(strategy="beam", num_beams=3, length_penalty=0.5)),
        (["decoding=top_p", "decoding.top_p=0.5", "decoding.temperature=0.7"], dict(top_p=0.5, temperature=0.7)),
        (["decoding=top_k", "decoding.top_k=5", "top_k=3"], dict(top_k=3, temperature=0.8)),  # shortcut wins
    ]:
        texts = run_cli(char_ckpt, 'prompt="ROMEO:"', "max_new_tokens=40", "seed=5", *overrides)
        expected = generate(model, idx, Decoding(max_new_tokens=40, seed=5, **kw))
        assert texts == [tok.decode(expected[0].tolist())]
    assert "tokens/s" in capsys.readouterr().out


def test_cli_compile_reaches_the_decoder(char_ckpt, monkeypatch):
    """compile=true reaches the Decoder for greedy and for beams. A stand-in for compiled_step keeps
    this fast; the compiled step itself is test_compiled_steps_match_eager's."""
    import gptlab.generation as generation

    calls = []

    def counting_step():
        calls.append(1)
        return generation._forward_last

    monkeypatch.setattr(generation, "compiled_step", counting_step)
    for decoding in ("decoding=greedy", "decoding=beam"):
        args = (char_ckpt, 'prompt="ROMEO:"', "max_new_tokens=20", decoding)
        assert run_cli(*args, "compile=true") == run_cli(*args)
    assert len(calls) == 2


def test_cli_stream_stop_and_prompt_file(char_ckpt, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("JULIET:")
    texts = run_cli(char_ckpt, f"prompt=FILE:{tmp_path / 'p.txt'}", "max_new_tokens=60", "num_samples=3",
                    "stream=true", "decoding=temperature", "decoding.temperature=1.5", "stop=[e,o]")
    out = capsys.readouterr().out
    assert len(texts) == 3 and all(t.startswith("JULIET:") and not {"e", "o"} & set(t[7:]) for t in texts)
    assert all(t in out for t in texts)  # streamed text is exactly the returned text
    hot = ('prompt="ROMEO:"', "max_new_tokens=100", "decoding=temperature", "decoding.temperature=2.0")
    full, cut = run_cli(char_ckpt, *hot)[0], run_cli(char_ckpt, *hot, 'stop=["\\n"]')[0]
    assert "\n" in full[6:] and cut == full[: full.index("\n", 6)]  # the escape is read as a newline
    with pytest.raises(ValueError, match="num_samples=5 > decoding.num_beams=4"):
        run_cli(char_ckpt, "decoding=beam", "num_samples=5")
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        run_cli(char_ckpt, "temperature=-1")
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        run_cli(char_ckpt, "prompt=FILE:nowhere.txt")


def test_cli_compare_prints_every_decoding(char_ckpt, capsys):
    rows = run_cli(char_ckpt, 'prompt="ROMEO:"', "max_new_tokens=20", "compare=true")
    assert [r["decoding"] for r in rows] == [
        "greedy", "beam k=4", "sample T=0.8 top_k=10", "sample T=1.0 top_p=0.9",
        "sample T=0.5", "sample T=0.8", "sample T=1.0", "sample T=1.2"]
    assert all(r["tokens"] == 20 and r["loglik_per_token"] < 0 for r in rows)
    # beam search maximises the summed log-likelihood, so it beats greedy's
    assert rows[1]["loglik_per_token"] >= rows[0]["loglik_per_token"] - 1e-6
    assert "loglik/token" in capsys.readouterr().out


@pytest.mark.parametrize("stop", [[], ["é"], ["\n\n"], ["日本"]])  # "日" comes with half of "本"
def test_text_stream_holds_back_partial_utf8_and_stop_prefixes(stop):
    """Fed one GPT-2 token at a time, the pieces join to the full text (cut at the stop string) and no
    piece shows a half character or the first half of a stop string."""
    from gptlab.tokenizers import TiktokenTokenizer

    tok = TiktokenTokenizer("gpt2")
    text = "naïve café 日本語 🙂 done\n\nnext é"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some tokens do split characters
    s = TextStream(tok, stop)
    pieces = [s.push(i) for i in ids] + [s.flush()]
    cut = min([text.find(x) for x in stop if x in text], default=len(text))
    assert "".join(pieces) == text[:cut] and "\ufffd" not in "".join(pieces)


def test_generate_text_is_seeded_keeps_the_global_rng_and_starts_an_empty_prompt_at_eot():
    """The helper behind training-time samples: reproducible, never touching the global RNG (so a
    run's dropout masks stay exact), and an empty prompt means "a new document"."""
    from gptlab.generation import generate_text
    from gptlab.tokenizers import TiktokenTokenizer

    tok = TiktokenTokenizer("gpt2")
    torch.manual_seed(0)
    model = tiny_gpt(vocab_size=tok.vocab_size, n_layer=1, n_embd=8)
    state = torch.get_rng_state()
    d = Decoding(max_new_tokens=6, temperature=0.8, seed=3)
    text = generate_text(model, tok, "", d)
    assert torch.equal(torch.get_rng_state(), state)
    expected = generate(model, torch.tensor([[tok.eot_token_id]]), d.replace(seed=None),
                        generator=torch.Generator().manual_seed(3))
    assert text == tok.decode(expected[0, 1:].tolist()) == generate_text(model, tok, "", d)
    assert torch.equal(torch.get_rng_state(), state)  # seed None draws from a generator seeded 0, not the global RNG
    assert generate_text(model, tok, "", d.replace(seed=None)) == generate_text(model, tok, "", d.replace(seed=0))
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="encodes to no tokens"):
        generate_text(small_gpt(), CharTokenizer("ab"), "", Decoding(max_new_tokens=3))


def test_cli_label_names_temperature_zero_greedy():
    """`decoding=temperature decoding.temperature=0` decodes greedily; its label must not say "sample"."""
    assert Decoding(temperature=0).label() == "greedy (T=0)"
    assert Decoding(temperature=0.8, top_k=200).label() == "sample T=0.8 top_k=200"
    assert Decoding("greedy").label() == "greedy"
    assert Decoding("beam", num_beams=4).label() == "beam k=4"


@pytest.mark.parametrize("override,expected", [
    ("stop=END", ["END"]), ('stop="\\n\\n"', ["\n\n"]), ('stop=["\\n\\n",END]', ["\n\n", "END"]),
    ("stop=[42]", ["42"]), ("stop=42", ["42"]), ("stop=null", [])])
def test_cli_stop_given_as_one_string_is_one_stop_string(override, expected):
    """`stop=END` (no brackets) reaches the config as a str: it must not become stops "E", "N", "D",
    nor `stop="\\n\\n"` a lone backslash that the escape reader rejects; Hydra makes 42 a number."""
    from hydra import compose, initialize_config_dir

    from gptlab.entrypoints.generate import stop_strings
    from tests.conftest import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        assert stop_strings(compose("generate", overrides=[override])) == expected


def test_decoding_from_a_mapping_names_unknown_keys_and_wrong_types():
    """conf/decoding entries become a Decoding; a key that is not a field (e.g. the old short `k`) and
    a value of the wrong type are refused with the field's name, before any model runs."""
    assert Decoding.from_dict({"strategy": "sample", "top_k": 5, "stop": "END"}) == Decoding(top_k=5, stop=("END",))
    with pytest.raises(ValueError, match=r"decoding: unknown keys \['k'\]; allowed: \['strategy', 'max_new_tokens'"):
        Decoding.from_dict({"strategy": "sample", "k": 5})
    for field, value in (("temperature", "hot"), ("top_p", "0.9"), ("seed", 1.5), ("eos_token_id", -1),
                         ("length_penalty", True)):
        with pytest.raises(ValueError, match=f"^{field} must be"):
            Decoding(**{field: value})


def test_two_interleaved_decodes_on_one_model_equal_each_alone():
    """Each decode owns its KV cache: two streams advanced in turn on one model (what a server that
    answers two requests at once does) give what each gives alone."""
    model = small_gpt()
    a, b = torch.randint(0, 37, (2, 1, 5), generator=torch.Generator().manual_seed(6))
    d = Decoding("greedy", 10)
    together = list(zip(stream(model, a, d), stream(model, b[:, :3], d)))
    assert torch.equal(torch.stack([x for x, _ in together], 1), generate(model, a, d)[:, 5:])
    assert torch.equal(torch.stack([y for _, y in together], 1), generate(model, b[:, :3], d)[:, 3:])
