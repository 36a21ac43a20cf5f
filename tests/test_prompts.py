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
