"""The words of a command line shared by the `hpcserve` CLI and the `%serve` magics: a launch's
arguments, `--set` pairs, the launch options that are no recipe override, and argparse types for
numbers.

No front end itself: both parse with argparse and hand the result to the api facade.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

from .errors import BadInput


def parse_sets(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--set expects KEY=VALUE, got {pair!r}",
                           hint="for example --set engine_args.n_ctx=4096 or --set env.HF_HOME=/x")
        out[key.strip()] = value
    return out


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """What `hpcserve launch` and `%serve launch` both take (read by `launch_overrides`); each
    front end adds its own way of waiting."""
    parser.add_argument("recipe")
    parser.add_argument("--backend", "-b", help="serving engine (default: the recipe's first)")
    parser.add_argument("--on", default="local", metavar="TARGET",
                        help="target (default: local)")
    parser.add_argument("--name", help="session name (default: RECIPE-N)")
    parser.add_argument("--gpus", help="GPUs per node")
    parser.add_argument("--time", help="time limit, e.g. 30m, 2h, 1:30:00")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field (repeatable): cpus=4, port=8000, "
                        "engine_args.FLAG=V, env.NAME=V")


# Options of a launch that are no recipe override: `--set` must not reach the facade's launch()
# under these names, where they would clash with (or silently become) its own arguments.
_LAUNCH_OPTIONS = {"recipe": "RECIPE", "on": "--on", "name": "--name", "wait": "--wait",
                   "timeout": "--timeout", "progress": None}


def launch_overrides(args: argparse.Namespace) -> tuple[str | None, dict[str, str]]:
    """(backend, overrides) of a launch command (CLI and %serve launch): --set pairs plus the
    --gpus/--time shortcuts; `--set backend=B` is accepted as the REST API accepts it."""
    overrides = parse_sets(args.set)
    for key, option in _LAUNCH_OPTIONS.items():
        if key in overrides:
            raise BadInput(f"unknown override {key!r}: it is not a recipe field",
                           hint=f"use {option}" if option else None)
    backend = args.backend
    if "backend" in overrides:
        chosen = overrides.pop("backend")
        if backend is not None and chosen != backend:
            raise BadInput(f"--backend {backend} and --set backend={chosen} disagree")
        backend = chosen or backend
    if args.gpus is not None:
        overrides["gpus"] = args.gpus
    if args.time is not None:
        overrides["time"] = args.time
    return backend, overrides


def seconds_arg(text: str) -> float:
    """An argparse type: a finite number of seconds > 0 (nan, inf and negatives are typos)."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def count_arg(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value
