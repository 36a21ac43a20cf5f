"""One class for errors the user caused (a bad value, a missing file), and the entry-point wrapper
that prints them as one line.

gptlab raises `UserError` on purpose, with a message that names the file/key/value and what is
allowed; the traceback above it would only bury that message. Entry points print it as
`error: <message>` and exit with status 2 (the Unix convention for bad usage). Every other
exception is a bug and keeps its traceback; `HYDRA_FULL_ERROR=1` shows the traceback of a
UserError too.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., Any])


class UserError(ValueError):
    """Bad input from the user: printed as `error: <message>`, exit status 2. A ValueError, so
    callers that catch ValueError keep working."""


class MissingFile(UserError, FileNotFoundError):
    """A file or folder the user named is not there: a UserError, and a FileNotFoundError for callers
    that catch that."""


def full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def report(error: UserError) -> None:
    """Print the error as the user should see it and exit with status 2."""
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def user_errors(fn: F) -> F:
    """Wrap an entry point's main: a UserError → `error: <message>` on stderr, exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            cause = user_error_in(e)
            if cause is None or full_errors():
                raise
            report(cause)

    return wrapper  # type: ignore[return-value]


def user_error_in(error: BaseException) -> UserError | None:
    """The UserError behind `error`: itself, or the cause of Hydra's error for an object it could not
    build from the config (a callback's bad option), with the config key Hydra names."""
    if isinstance(error, UserError):
        return error
    seen, cause = {id(error)}, error.__cause__ or error.__context__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, UserError):
            key = re.search(r"full_key: (\S+)", str(error))
            return UserError(f"{cause} (config key {key.group(1)})") if key else cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def nearest(name: str, choices: Iterable[str]) -> str | None:
    """The choice closest to a mistyped name (difflib), or None when nothing is close."""
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_key(group: str, key: str, choices: Iterable[str]) -> UserError:
    """`group.key` is not an option: the error names it and the nearest real one (difflib)."""
    guess = nearest(key, choices)
    hint = f"did you mean {group}.{guess}?" if guess else f"see `{group}` in the composed config (--cfg job)"
    return UserError(f"{group}.{key} is not an option of {group}: {hint}")
