"""`hpcserve ai SESSION`: use a chat session in Jupyter AI (Jupyternaut) on the Jupyter server
the CLI talks to (HPCSERVE_SERVER_URL), through that server's gateway with a key scoped to the
session; the entry goes when the session ends.

    hpcserve ai m1              # a model in Jupyternaut's picker
    hpcserve ai m1 --default    # ... and the one it uses when none is picked
    hpcserve ai m1 --remove     # remove it now (and revoke its key)
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from . import views

if TYPE_CHECKING:
    from .facade import Facade


def add_ai_parser(sub: Any) -> None:
    ai = sub.add_parser("ai", help="use a session in Jupyter AI (Jupyternaut)")
    ai.add_argument("session", metavar="SESSION", help="session name or id (a chat model)")
    how = ai.add_mutually_exclusive_group()
    how.add_argument("--default", action="store_true",
                     help="also the model Jupyternaut uses when none is picked")
    how.add_argument("--remove", action="store_true",
                     help="remove it from Jupyter AI and revoke its gateway key")
    ai.add_argument("--json", action="store_true")


def cmd_ai(args: argparse.Namespace, api: Facade) -> int:
    done = (api.drop_from_jupyter_ai(args.session) if args.remove
            else api.use_in_jupyter_ai(args.session, default=args.default))
    print(json.dumps(done, indent=2) if args.json else views.ai_note(done, removed=args.remove))
    return 0
