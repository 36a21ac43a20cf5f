"""The READMEs cannot drift: every fenced command of README.md and experiments/*/README.md is checked
against the code without running it, and every file path the README names exists.

- `python train.py|generate.py|analyze.py|ehr_eval.py|vocab_report.py <overrides>`: the overrides
  are composed with the real configs, as the script would (groups, options and keys must exist;
  a placeholder value such as `<run>` or `...` stands for any value; `-m` sweeps take their first value).
- `python <file>.py` and `python -m <module>`: the file or module exists.
- `make <target> VAR=...`: the Makefile has the target and the variable.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import ROOT

READMES = [ROOT / "README.md", *sorted((ROOT / "experiments").glob("*/README.md"))]
SCRIPTS = {"train.py": "train", "generate.py": "generate", "analyze.py": "analyze", "ehr_eval.py": "ehr_eval",
           "vocab_report.py": "vocab_report"}
PLUGINS = {"hparams_search=optuna": "hydra_plugins.hydra_optuna_sweeper",
           "hydra/launcher=slurm": "hydra_plugins.hydra_submitit_launcher"}


def fenced_commands(path: Path) -> list[str]:
    """Shell commands of the ```bash blocks: continuation lines joined, `&&` chains split."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", path.read_text(), re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                if part.strip() and not part.strip().startswith("#"):
                    commands.append(part.strip())
    return commands


CASES = [(readme, cmd) for readme in READMES for cmd in fenced_commands(readme)]


def python_args(words: list[str]) -> list[str] | None:
    """The arguments after `python` (any interpreter path, env assignments before it), or None."""
    for i, word in enumerate(words):
        if re.fullmatch(r"(\S*/)?python3?", word):
            return words[i + 1:]
        if "=" not in word:
            return None
    return None


def placeholder(value: str) -> bool:
    return "<" in value or value in ("...", "…")


def first_sweep_value(key: str, value: str) -> str:
    """The value the first job of a `-m` sweep gets, as Hydra's parser reads it (quoted items keep
    their commas: `prompt='ROMEO, hi',JULIET:` → `'ROMEO, hi'`); a list `[a,b]` is one value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from gptlab.entrypoints.argv import quote_free_text

    (override,) = OverridesParser.create().parse_overrides(quote_free_text(["-m", f"{key}={value}"])[1:])
    return next(iter(override.sweep_string_iterator())) if override.is_sweep_override() else value


def overrides_of(args: list[str]) -> list[str]:
    multirun = "-m" in args or "--multirun" in args
    out, skip = [], False
    for arg in args:
        if skip or arg.startswith("-") or placeholder(arg):
            skip = arg in ("--cfg", "-c", "--package", "-p", "--config-name", "-cn")  # flags with a value
            continue
        key, _, value = arg.partition("=")
        if placeholder(value):
            value = "x"
        elif multirun and "," in value:
            value = first_sweep_value(key, value)
        out.append(f"{key}={value}")
    return out


def check_hydra_command(config_name: str, args: list[str]) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gptlab.entrypoints.argv import quote_free_text
    from gptlab.entrypoints.config import register_resolvers

    for needs, module in PLUGINS.items():
        if any(a.startswith(needs) for a in args) and importlib.util.find_spec(module.split(".")[0]) is None:
            pytest.skip(f"{needs} needs {module} (make install EXTRAS=...)")
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        compose(config_name, overrides=quote_free_text(overrides_of(args)), return_hydra_config=True)


def check_make(words: list[str]) -> None:
    makefile = (ROOT / "Makefile").read_text()
    for word in words[1:]:
        if "=" in word:
            assert re.search(rf"^{re.escape(word.split('=')[0])} \?=", makefile, re.MULTILINE), word
        else:
            assert re.search(rf"^{re.escape(word)}:", makefile, re.MULTILINE), f"make {word}: no such target"


@pytest.mark.parametrize(("readme", "command"), CASES,
                         ids=[f"{r.parent.name}:{c[:60]}" for r, c in CASES])
def test_readme_command_matches_the_code(readme, command):
    words = shlex.split(re.sub(r"<[^<>]*>", "x", command), comments=True)  # <run>, <a multirun folder>
    if words[0] == "make":
        return check_make(words)
    args = python_args(words)
    if args is None:
        return  # not ours (pip, mkdir, ...)
    if args[0] == "-c":
        return  # inline Python
    if args[0] == "-m":
        module = args[1]
        if module == "pytest":
            for arg in args[2:]:
                if arg.startswith("tests/"):
                    assert (ROOT / arg.split("::")[0]).exists(), arg
            return
        assert importlib.util.find_spec(module) is not None, f"no module {module}"
        return
    script = args[0]
    assert (ROOT / script).is_file(), f"{readme.name}: {script} does not exist"
    if script in SCRIPTS:
        check_hydra_command(SCRIPTS[script], args[1:])


def test_readme_names_only_files_that_exist():
    text = (ROOT / "README.md").read_text()
    paths = set(re.findall(r"`((?:src|conf|experiments|tests)/[\w./-]+?)(?::\d+)?`", text))
    paths |= set(re.findall(r"\]\(((?:experiments|src|conf)/[\w./-]+)\)", text))
    missing = [p for p in sorted(paths) if not (ROOT / p).exists() and not (ROOT / "src" / "gptlab" / p).exists()]
    assert paths and not missing, missing


def test_every_fenced_command_is_seen():
    """The parser finds the commands (a change of fence style must not make the test above vacuous)."""
    readme = [c for r, c in CASES if r.name == "README.md" and r.parent == ROOT]
    assert sum("train.py" in c for c in readme) >= 10 and sum("generate.py" in c for c in readme) >= 5


@pytest.mark.parametrize(("name", "run_name"), [("/abs/path/docs.jsonl", "docs.jsonl-baby_cpu"),
                                                ("stas/openwebtext-10k", "stas_openwebtext-10k-baby_cpu")])
def test_a_dataset_named_by_a_path_gets_one_run_folder(tmp_path, name, run_name):
    from tests.conftest import compose_train_cfg

    cfg = compose_train_cfg(tmp_path / "run", tmp_path / "data", ["data=hf", f"data.name={name}"])
    assert cfg.run_name == run_name

