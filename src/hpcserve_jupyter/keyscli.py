"""`hpcserve keys ...`: gateway keys, the bearer tokens /hpcserve/v1 accepts and no other
Jupyter route does (for tools that keep their key in clear text, such as jupyter-ai).

    hpcserve keys create [--label L] [--session S ...] [--json]   # prints the key, once
    hpcserve keys list [--json]
    hpcserve keys revoke ID_OR_LABEL

The key goes to stdout alone (`KEY=$(hpcserve keys create --session m1)`), what it is to
stderr. The keys live in the state directory the server shares, so a key made here works on
the server's gateway at once, and a revocation here stops it at its next request.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import TYPE_CHECKING, Any

from .views import Table

if TYPE_CHECKING:
    from .facade import Facade
    from .gatewaykeys import GatewayKey


def add_keys_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="gateway keys: tokens for /hpcserve/v1 only")
    ksub = keys.add_subparsers(dest="keys_command", metavar="KEYS_COMMAND")
    ksub.required = True
    c = ksub.add_parser("create", help="create a gateway key (printed once)")
    c.add_argument("--label", help="a name to recognise it by (default: key-N)")
    c.add_argument("--session", "-s", action="append", dest="sessions", metavar="SESSION",
                   help="a session name or id the key may use (repeatable; default: every "
                   "session, also '*')")
    c.add_argument("--json", action="store_true", help="print the key's record, key included")
    ls = ksub.add_parser("list", help="list gateway keys (never the keys themselves)")
    ls.add_argument("--json", action="store_true")
    r = ksub.add_parser("revoke", help="revoke a gateway key")
    r.add_argument("id", metavar="ID", help="the key's id or label")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def keys_table(keys: list[GatewayKey]) -> Table:
    return Table([k.public() for k in keys], [
        ("ID", "id"), ("LABEL", "label"), ("SESSIONS", lambda k: ",".join(k["scope"])),
        ("KEY", lambda k: k["prefix"] + "..."), ("CREATED", lambda k: _when(k["created_at"])),
        ("LAST USED", lambda k: _when(k["last_used_at"])),
        ("STATE", lambda k: "revoked " + _when(k["revoked_at"]) if k["revoked_at"]
         else "active")], empty="no gateway keys")


def cmd_keys(args: argparse.Namespace, api: Facade) -> int:
    if args.keys_command == "create":
        made = api.create_gateway_key(args.label, sessions=args.sessions)
        if args.json:
            print(json.dumps(made.public(), indent=2))
        else:
            print(made.key)
        print(f"gateway key {made.id} ({made.label}) for sessions: {', '.join(made.scope)}.\n"
              "It is shown this once: store it now. It works on /hpcserve/v1 only; "
              f"hpcserve keys revoke {made.id} ends it.", file=sys.stderr)
        return 0
    if args.keys_command == "list":
        keys = api.gateway_keys()
        if args.json:
            print(json.dumps([k.public() for k in keys], indent=2))
        elif keys:
            print(keys_table(keys).grid())
        else:
            print("no gateway keys (hpcserve keys create makes one)", file=sys.stderr)
        return 0
    revoked = api.revoke_gateway_key(args.id)
    print(f"gateway key {revoked.id} ({revoked.label}): revoked", file=sys.stderr)
    return 0
