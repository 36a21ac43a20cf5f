"""Free text on the command line: `prompt=Café ROMEO`, `prompt=ROMEO, hi`, `prompt=ROMEO:\\n`.

Hydra parses every `key=value` with its override grammar, where a space, a comma, a non-ASCII letter
or a bracket in an unquoted value is an error or a list. For keys that hold free text the entry
script quotes the value for Hydra before it parses it, so that what the shell passed arrives
unchanged; a value the user already quoted for Hydra (`prompt="'ROMEO, hi'"`) is left alone.
Backslash escapes (`\\n`, `\\t`, `\\u00e9`) are then read by `unescape`, as for stop strings.
"""

from __future__ import annotations

import codecs
import re

FREE_TEXT_KEYS = ("prompt",)


def hydra_quote(value: str) -> str:
    """`value` as a single-quoted Hydra string that parses back to exactly `value`: quotes are escaped,
    and so are the backslashes before a quote or at the end (Hydra reads only those as escapes), and
    `${` (OmegaConf would read an interpolation)."""
    value = value.replace("${", "\\${")
    value = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)
    return "'" + value.replace("'", "\\'") + "'"


# Hydra's sweep functions (`prompt=choice(a,b)`): a multirun value that calls one is Hydra's to parse
SWEEP_FUNCTION = re.compile(r"(choice|range|interval|glob|shuffle|sort|tag)\(")


def quote_free_text(argv: list[str], keys: tuple[str, ...] = FREE_TEXT_KEYS) -> list[str]:
    """argv with each unquoted `key=value` of a free-text key quoted for Hydra. In a multirun (`-m`)
    a comma separates sweep values, as everywhere in Hydra: each is quoted on its own
    (`-m prompt=ROMEO,JULIET` runs both); quote a prompt that holds a comma (`-m "prompt='a, b'"`)."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+~") in keys and value[:1] not in ("'", '"'):
            if not multirun:
                arg = f"{key}={hydra_quote(value)}"
            elif not SWEEP_FUNCTION.match(value):
                arg = f"{key}=" + ",".join(hydra_quote(v) for v in value.split(","))
        out.append(arg)
    return out


# Python's string escapes; a backslash that starts none of them stays a backslash
ESCAPE = re.compile(r"\\(?:[\\'\"abfnrtv0]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|N\{[^}]+\})")


def unescape(text: str) -> str:
    """Backslash escapes read as in Python strings (`\\n` → newline, `\\\\` → one backslash); other
    characters, and a backslash that starts no escape, unchanged."""
    return ESCAPE.sub(lambda m: codecs.decode(m.group(0), "unicode_escape"), text)
