"""`hpcserve relaunch ID` and `hpcserve extend ID --time T`: carry a session on.

    hpcserve relaunch chat-1            # chat-2: same recipe, backend, target, overrides
    hpcserve relaunch chat-1 --wait     # ... and wait until it is ready
    hpcserve extend chat-1 --time 30m   # SLURM: scontrol (an operator's right on most sites)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .facade import Facade


def relaunch_words(sub: Any, seconds_arg: Any, *, id_optional: bool = False) -> Any:
    """`relaunch`'s words, shared with `%serve relaunch` (which adds --no-wait)."""
    rl = sub.add_parser("relaunch", help="a new session like an existing one (same recipe, "
                        "backend, target and overrides)")
    rl.add_argument("id", nargs="?" if id_optional else None,
                    help="session name or id (it may have ended)")
    rl.add_argument("--name", help="the new session's name (default: the next number)")
    rl.add_argument("--timeout", type=seconds_arg, help="stop waiting after SECONDS")
    ex = sub.add_parser("extend", help="give a live session more time (where its target "
                        "allows)")
    ex.add_argument("id", nargs="?" if id_optional else None)
    ex.add_argument("--time", required=True, help="how much longer: 30m, 2h, 1:30:00")
    return rl, ex


def add_lifetime_parsers(sub: Any, seconds_arg: Any) -> None:
    rl, ex = relaunch_words(sub, seconds_arg)
    rl.add_argument("--wait", action="store_true", help="wait until the session is ready")
    rl.add_argument("--json", action="store_true")
    ex.add_argument("--json", action="store_true")


def cmd_relaunch(args: argparse.Namespace, api: Facade, progress: Any) -> int:
    session = api.relaunch(args.id, name=args.name, wait=False)
    print(f"launched {session.name} (id {session.id}) on {session.target}, like {args.id}",
          file=sys.stderr)
    if args.wait:
        session = api.wait(session.id, timeout=args.timeout, progress=progress)
    print(json.dumps(session.public(), indent=2) if args.json else session.id)
    if session.state.terminal:
        print(f"hpcserve: session {session.name} {session.state}: {session.reason}",
              file=sys.stderr)
        return 1
    return 0


def cmd_extend(args: argparse.Namespace, api: Facade) -> int:
    session, message = api.extend(args.id, args.time)
    if args.json:
        print(json.dumps({"session": session.public(), "message": message}, indent=2))
        return 0
    timing = session.timing()
    left = timing["time_left_s"]
    print(f"{session.name}: {message}" + (f"; ends at {timing['ends_at']}" if left is not None
                                            else ""), file=sys.stderr)
    return 0
