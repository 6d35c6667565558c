"""`hpcserve tapis app --on TARGET`: register (or update) the Tapis app a `tapis-jobs` target
submits its jobs with, or show what would be registered.

    hpcserve tapis app --on frontera                 # upload the bundle, createAppVersion
    hpcserve tapis app --on frontera --update        # replace the existing version (putApp)
    hpcserve tapis app --on frontera --dry-run [--recipe NAME [--backend B]]
                                                     # the app JSON (and a recipe's job request)

The dry run calls nothing but getSystem (for the paths); with `--recipe` it also prints the
submitJob body the recipe's session would be submitted with (engine arguments quoted, no
secret: those travel in a file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .errors import BadInput


def add_tapis_parser(sub: Any) -> None:
    tapis = sub.add_parser("tapis", help="Tapis helpers (the app of tapis-jobs targets)")
    tsub = tapis.add_subparsers(dest="tapis_command", metavar="TAPIS_COMMAND")
    tsub.required = True
    a = tsub.add_parser("app", help="register hpcserve's Tapis app on a tapis-jobs target")
    a.add_argument("--on", required=True, metavar="TARGET", help="a kind: tapis-jobs target")
    a.add_argument("--update", action="store_true", help="replace an existing app version")
    a.add_argument("--dry-run", action="store_true", help="print the app JSON, change nothing")
    a.add_argument("--recipe", help="with --dry-run: also print this recipe's job request")
    a.add_argument("--backend", "-b", help="with --recipe: the serving engine")


def _target(name: str) -> Any:
    from .targets import load_target_configs, target_class
    from .targets.tapis_jobs.target import TapisJobsTarget

    configs = load_target_configs()
    if name not in configs:
        raise BadInput(f"unknown target {name!r}", hint="targets: " + ", ".join(configs))
    config = dict(configs[name])
    kind = config.pop("kind")
    if kind != TapisJobsTarget.kind:
        raise BadInput(f"target {name!r} is kind {kind!r}, not tapis-jobs",
                       hint="hpcserve tapis app registers the app of a kind: tapis-jobs target")
    return target_class(kind)(name, config)


def cmd_tapis(args: argparse.Namespace) -> int:
    from .targets.tapis_jobs import app

    target = _target(args.on)
    try:
        lay = target.layout()
        if args.dry_run:
            _, _, body = app.planned(target.settings, lay)
            out: dict[str, Any] = {"app": body}
            if args.recipe:
                out["job"] = _job_request(target, args.recipe, args.backend)
            print(json.dumps(out, indent=2))
            return 0
        print(app.register(target.api, target.settings, lay, update=args.update))
        return 0
    finally:
        target.api.close()


def _job_request(target: Any, recipe: str, backend: str | None) -> dict[str, Any]:
    """The submitJob body of a session of `recipe` (session id 00000000; secrets travel in
    the job's env file, never in this body)."""
    from .resolve import resolve
    from .targets.base import LaunchRequest

    spec = resolve(recipe, backend)
    req = LaunchRequest(session_id="00000000", name=recipe, spec=spec, workdir=Path("."))
    return target.plan(req).body
