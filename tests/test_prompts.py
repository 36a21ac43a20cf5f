"""Free text typed on the command line reaches generate.py unchanged: what the shell passes after
`prompt=` is the prompt (spaces, commas, accents, quotes, brackets), and escapes are read."""

from __future__ import annotations

import pytest

from gptlab.entrypoints.argv import quote_free_text
from gptlab.entrypoints.generate import read_prompt
from tests.conftest import compose_generate_cfg

# what the shell passes for: prompt="Café ROMEO"   prompt="ROMEO, hi"   prompt='ROMEO:\n'   ...
TYPED = [("prompt=Café ROMEO", "Café ROMEO"), ("prompt=ROMEO, hi", "ROMEO, hi"), ("prompt=ROMEO:\\n", "ROMEO:\n"),
         ("prompt=it's [a] {b} ${c", "it's [a] {b} ${c"), ("prompt=a\\\\b\\", "a\\b\\"),
         ("prompt='ROMEO, hi'", "ROMEO, hi"), ("prompt=naïve 🙂\\t", "naïve 🙂\t")]


@pytest.mark.parametrize(("arg", "prompt"), TYPED, ids=[t[0] for t in TYPED])
def test_typed_prompt_arrives_unchanged(arg, prompt):
    cfg = compose_generate_cfg(quote_free_text([arg, "max_new_tokens=5"]))
    assert read_prompt(cfg.prompt) == prompt and cfg.max_new_tokens == 5


def test_without_quoting_hydra_refuses_them():
    """Why the entry script quotes: Hydra's grammar reads these as errors or lists."""
    from hydra.errors import ConfigCompositionException, OverrideParseException

    with pytest.raises(OverrideParseException, match="LexerNoViableAltException"):
        compose_generate_cfg(["prompt=Café ROMEO"])
    with pytest.raises(ConfigCompositionException, match="Ambiguous value for argument"):
        compose_generate_cfg(["prompt=ROMEO, hi"])


def test_other_keys_and_flags_pass_through():
    argv = ["generate.py", "-m", "max_new_tokens=5", "stop=[a,b]", "+prompt=x y"]
    assert quote_free_text(argv) == ["generate.py", "-m", "max_new_tokens=5", "stop=[a,b]", "+prompt='x y'"]


def test_a_multirun_sweeps_over_comma_separated_prompts():
    """`-m prompt=a,b` is Hydra's sweep over two prompts, each still free text (`Café ROMEO`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parse = OverridesParser.create().parse_overrides

    def jobs(o):  # what each job of the sweep gets: Hydra passes it sweep_string_iterator's override
        return [parse([f"prompt={v}"])[0].value() for v in o.sweep_string_iterator()]

    (o,) = parse(quote_free_text(["-m", "prompt=Café ROMEO,JULIET:\\n"])[1:])
    assert o.is_sweep_override() and jobs(o) == ["Café ROMEO", "JULIET:\\n"]
    (o,) = parse(quote_free_text(["-m", "prompt=choice(a,b)"])[1:])
    assert jobs(o) == ["a", "b"]
    (o,) = parse(quote_free_text(["-m", "prompt='a, b'"])[1:])
    assert not o.is_sweep_override() and o.value() == "a, b"
    (o,) = parse(quote_free_text(["prompt=a,b"]))  # a single run: one prompt with a comma
    assert o.value() == "a,b"
