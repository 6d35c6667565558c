"""`hpcserve pull` and `hpcserve models`: model weights in a target's cache ahead of launch.

    hpcserve pull RECIPE [--on TARGET] [--backend B] [--revision R] [--token-env VAR]
    hpcserve models [--on TARGET] [--json]
    hpcserve models rm REPO [--on TARGET]

`pull` prints progress lines (bytes and files) to stderr and the snapshot folder to stdout
(`SNAP=$(hpcserve pull smollm2-135m-hf)`). The files are those the recipe's engine needs
(weights/formats.py); a gated model needs a token in $HF_TOKEN (or --token-env's variable; on
a SLURM or Tapis Pods target its `hf_token_env`). Local, SLURM (pulled on the login node over
SSH, weights/remote.py) and Tapis Pods targets (fetched here, uploaded into the shared model
volume, weights/volume.py); Tapis Jobs answers "not yet supported" (exit 2). No session service
is started: these commands touch the cache only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from typing import Any

from .views import Table

TOKEN_ENV = "HF_TOKEN"


def add_weights_parsers(sub: Any) -> None:
    add_pull_parser(sub)
    m = sub.add_parser("models", help="list the models a target's cache holds; "
                       "`models rm REPO` frees one")
    m.add_argument("--on", metavar="TARGET", help="the target (default: local)")
    m.add_argument("--json", action="store_true")
    msub = m.add_subparsers(dest="models_command", metavar="rm")
    rm = msub.add_parser("rm", help="remove a model (every revision) from the cache")
    rm.add_argument("repo", metavar="REPO", help="the repo id, OWNER/NAME")
    rm.add_argument("--on", dest="rm_on", metavar="TARGET", help="the target (default: local)")


def add_pull_parser(sub: Any) -> None:
    """`pull`'s words, shared by the CLI and `%serve pull`."""
    p = sub.add_parser("pull", help="download a recipe's model weights into a target's cache")
    p.add_argument("recipe")
    p.add_argument("--on", metavar="TARGET", help="the target whose cache gets them "
                   "(default: local)")
    p.add_argument("--backend", "-b", help="the engine the files are for (default: the "
                   "recipe's first backend)")
    p.add_argument("--revision", "-r", help="branch, tag or commit (default: main)")
    p.add_argument("--token-env", metavar="VAR",
                   help=f"environment variable holding the Hugging Face token (default: "
                   f"{TOKEN_ENV}, or a SLURM target's hf_token_env); needed for gated models")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


# ---------------------------------------------------------------- pull


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class ProgressPrinter:
    """A line whenever the phase or (downloading) the files done change, or a tenth more of
    the bytes is done."""

    def __init__(self, stream: Any = None) -> None:
        self.start = time.monotonic()
        self.stream = stream if stream is not None else sys.stderr
        self.last: tuple[str, int, int] | None = None

    def __call__(self, p: Any) -> None:
        step = max(p.bytes_total // 10, 1)
        files = p.files_done if p.phase == "download" else -1  # verifying: tenths only
        key = (p.phase, files, p.bytes_done // step)
        if key == self.last:
            return
        self.last = key
        print(f"[{time.monotonic() - self.start:6.1f}s] {p.phase}: {_size(p.bytes_done)} / "
              f"{_size(p.bytes_total)}, {p.files_done}/{p.files_total} files",
              file=self.stream, flush=True)


def cmd_pull(args: argparse.Namespace) -> int:
    from .weights import recipe_pull

    p = recipe_pull.plan(args.recipe, on=args.on, backend=args.backend,
                         revision=args.revision, token_env=args.token_env)
    print(p.describe(), file=sys.stderr)

    def started(state: str) -> None:
        if state == "running":
            print(f"a pull of the same files is already running on {p.site.target}: "
                  "following it", file=sys.stderr)
        elif state.startswith("submitted"):
            print(f"pull: {state} on {p.site.target} (pull: job)", file=sys.stderr)

    try:
        done = recipe_pull.run(p, ProgressPrinter(), started)
    except KeyboardInterrupt:
        if p.site.kind != "slurm":  # pulled by this process: it stops here
            raise
        print("stopped following; the pull goes on on the login node (run the same command "
              "to follow it again)", file=sys.stderr)
        return 130
    if args.json:
        out = done.public()
        if p.site.remote is None:
            out.pop("cache")  # local: the cache is this machine's (as before)
        print(json.dumps(out, indent=2))
    else:
        where = f", in {done.cache} on {done.target}" if p.site.remote is not None else ""
        print(f"{done.repo_id}@{done.commit[:12]}: {len(done.files)} files, "
              f"{_size(done.size)}, verified{where}", file=sys.stderr)
        print(done.model_path)
    return 0


# ---------------------------------------------------------------- models


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"


def models_table(models: list[dict[str, Any]]) -> Table:
    return Table(models, [
        ("REPO", "repo_id"),
        ("REVISION", lambda m: m["revision"][:12] + (f" ({','.join(m['refs'])})"
                                                     if m["refs"] else "")),
        ("SIZE", lambda m: _size(m["size"])), ("FILES", "files"),
        ("LAST USED", lambda m: _when(m["last_used"]))], empty="no models in the cache")


def cmd_models(args: argparse.Namespace) -> int:
    from .errors import BadInput, shown
    from .weights import cache_site, list_models, remove

    if args.models_command == "rm":
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*",
                            args.repo):
            raise BadInput(f"{shown(args.repo)} is not a repo id", hint="OWNER/NAME, as "
                           "`hpcserve models` lists them")
        site = cache_site(args.rm_on or args.on)
        if site.remote is not None:
            where, freed = site.cache().remove(args.repo)
        else:
            assert site.cache_dir is not None
            where, freed = str(site.cache_dir), remove(args.repo, site.cache_dir)
        print(f"removed {args.repo} from {where} (target {site.target}), "
              f"{_size(freed)} freed", file=sys.stderr)
        return 0
    site = cache_site(args.on)
    if site.remote is not None:
        where, found = site.cache().list()
        public = found
    else:
        assert site.cache_dir is not None
        where, public = str(site.cache_dir), [m.public() for m in list_models(site.cache_dir)]
    if args.json:
        print(json.dumps(public, indent=2))
    elif public:
        print(models_table(public).grid())
    else:
        print(f"no models in {where} (target {site.target}); hpcserve pull RECIPE "
              "fetches one", file=sys.stderr)
    return 0
