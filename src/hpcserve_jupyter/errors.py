"""Errors that front ends show to users as-is: each says what was wrong and how to fix it.

Front ends (CLI, magics, REST) catch `HpcserveError` and print its message; anything else is
a bug and may surface as a traceback.
"""

from __future__ import annotations

from typing import Any


def shown(value: Any, limit: int = 60) -> str:
    """A value as an error message shows it: repr'd, cut to `limit` characters (a pasted blob
    stays readable), and safe for values nested too deeply to repr."""
    try:
        text = repr(value)
    except RecursionError:
        return f"<a {type(value).__name__} nested too deeply>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


class HpcserveError(Exception):
    """Base of every error meant for the user. `exit_code` is what the CLI exits with."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n  hint: {hint}")


class BadInput(HpcserveError):
    """The user asked for something invalid (unknown name, bad override, bad file)."""

    exit_code = 2
    http_status = 400


class NotFound(BadInput):
    """A recipe, backend, target or session that does not exist."""

    http_status = 404


class NameInUse(BadInput):
    """A live session already has the name asked for: a conflict with the current state."""

    http_status = 409


class Refused(BadInput):
    """A well-formed request that the target or the server's limits refuse (SLURM will not
    raise a time limit, past the lifetime bound): a conflict, not bad syntax."""

    http_status = 409


class FixedLimit(Refused):
    """The target's own time limit cannot change once it is set (a Tapis pod or job):
    hpcserve's max lifetime still may be raised, but the session ends at that limit anyway."""


class RecipeError(BadInput):
    """A recipe file that does not parse or validate; carries file and line."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 hint: str | None = None) -> None:
        self.path = path
        self.line = line
        where = path or ""
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}" if where else message, hint=hint)


class LaunchError(HpcserveError):
    """A launch that could not start: port in use, no free GPU, engine missing..."""

    http_status = 409  # a conflict with the target's state, not a server fault


class NotReady(HpcserveError):
    """A prompt to a session that is not (or no longer) serving."""

    http_status = 409


class EngineError(HpcserveError):
    """The serving engine answered with an error; the message is the engine's own."""

    http_status = 502

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


class TargetUnreachable(HpcserveError):
    """The target (SSH host, scheduler, Pods API) did not answer; state is unknown, not failed."""

    http_status = 503


def close_matches(word: str, choices: list[str]) -> str:
    """A 'did you mean' hint listing the closest names, or all of them when none is close."""
    import difflib

    near = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    if near:
        return "did you mean " + " or ".join(repr(n) for n in near) + "?"
    return "choose one of: " + ", ".join(sorted(choices)) if choices else "none are defined"
