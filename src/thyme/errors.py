"""What a command shows a user when something fails: the first line of the error, never a traceback.

The Python API and the command line give the same advice in their own words. An error whose fix is a
boolean keyword argument says so with `suggest` ("pass overwrite=True") and records the argument with
`needs_argument`; `first_line` then names the command's flag instead ("pass --overwrite"):

    raise needs_argument(FileExistsError(f"{out} is not empty; {suggest('overwrite')}"), "overwrite")

A config value a flag set is a `FieldError`: its message names the field as Python does, and a command that
passes `first_line` its flags names the flag instead ("--max-steps must be >= 1, got 0").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

E = TypeVar("E", bound=BaseException)


def suggest(argument: str) -> str:
    """The advice to set a boolean keyword argument, as the Python API words it."""
    return f"pass {argument}=True"


def flag(argument: str) -> str:
    """The command-line flag of a keyword argument: allow_weak_isolation -> --allow-weak-isolation."""
    return "--" + argument.replace("_", "-")


class FieldError(ValueError):
    """A value of the config field `field` that cannot be used. The message is `name problem`, with `name`
    as Python spells the field (`max_steps`, `SandboxConfig.timeout_s`) and `problem` what is wrong."""

    def __init__(self, name: str, field: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.field = field
        self.problem = problem


def cli_flags(*fields: str, **renamed: str) -> dict[str, str]:
    """The flags a command sets config fields with: each of `fields` by `flag`, the `renamed` ones as given
    (`cli_flags("max_steps", timeout_s="--timeout")`)."""
    return {**{name: flag(name) for name in fields}, **renamed}


def needs_argument(exc: E, argument: str) -> E:
    """Record on `exc` the keyword argument its message suggests (worded by `suggest`); returns `exc`."""
    exc.argument = argument  # type: ignore[attr-defined]
    return exc


def first_line(exc: BaseException, flags: Mapping[str, str] | None = None) -> str:
    """The first line of an exception's message (its type's name when the message is empty), with the
    keyword argument it suggests (see `needs_argument`) named as the command-line flag, and a `FieldError`
    of a field in `flags` (see `cli_flags`) named by its flag."""
    if flags and isinstance(exc, FieldError) and exc.field in flags:
        return f"{flags[exc.field]} {exc.problem}"
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    argument = getattr(exc, "argument", None)
    if isinstance(argument, str):
        line = line.replace(suggest(argument), f"pass {flag(argument)}")
    return line


def image_error(exc: BaseException) -> str:
    """Why PIL could not read an image, in words a user can act on: never PIL's name for an in-memory file
    (`<_io.BytesIO object at 0x...>`), which tells them nothing; the caller names the image."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image format PIL can read"
    return first_line(exc)
