"""`hpcserve`: the command-line front end. Thin: every command calls the api facade and prints
the shared text views (`views.py`, the same tables the magics show).

Exit codes: 0 ok, 2 bad input (unknown names, invalid overrides), 1 any other failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from . import views
from .aicli import add_ai_parser, cmd_ai
from .cmdargs import add_launch_arguments, count_arg, launch_overrides, seconds_arg
from .jobcli import add_job_parser, cmd_job
from .keyscli import add_keys_parser, cmd_keys
from .lifetimecli import add_lifetime_parsers, cmd_extend, cmd_relaunch
from .tapiscli import add_tapis_parser, cmd_tapis
from .weightscli import add_weights_parsers, cmd_models, cmd_pull

if TYPE_CHECKING:
    from .facade import Facade
    from .sessions import Session

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors exit 2 with a short message
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"hpcserve: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hpcserve", description="Serve AI models on local GPUs, SLURM clusters and "
                "Tapis pods, and prompt them.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    r = sub.add_parser("recipes", help="list recipes (what can be served)")
    r.add_argument("name", nargs="?", help="show one recipe in full")
    r.add_argument("--json", action="store_true")
    t = sub.add_parser("targets", help="list targets (where sessions run)")
    t.add_argument("--json", action="store_true")

    la = sub.add_parser("launch", help="launch a recipe as a session")
    add_launch_arguments(la)
    la.add_argument("--wait", action="store_true", help="wait until the session is ready")
    la.add_argument("--timeout", type=seconds_arg, help="with --wait: give up after SECONDS")
    la.add_argument("--json", action="store_true")

    st = sub.add_parser("status", help="show sessions, or one session")
    st.add_argument("id", nargs="?")
    st.add_argument("--all", action="store_true", help="include ended sessions")
    st.add_argument("--json", action="store_true")

    lg = sub.add_parser("logs", help="show a session's engine log")
    lg.add_argument("id")
    lg.add_argument("--tail", type=count_arg, default=100, help="last N lines (0: all)")
    lg.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")

    pr = sub.add_parser("prompt", help="send one prompt and stream the answer")
    pr.add_argument("id")
    pr.add_argument("text", nargs="+")
    pr.add_argument("--system")
    pr.add_argument("--max-tokens", type=int, default=256)
    pr.add_argument("--temperature", type=float)

    ch = sub.add_parser("chat", help="interactive chat with a session (empty line or Ctrl-D ends)")
    ch.add_argument("id")
    ch.add_argument("--system")
    ch.add_argument("--max-tokens", type=int, default=512)

    sp = sub.add_parser("stop", help="stop a session")
    sp.add_argument("id")
    ka = sub.add_parser("keepalive", help="reset a session's idle timer")
    ka.add_argument("id")
    mo = sub.add_parser("monitor", help="run the monitor loop in the foreground (autostop, "
                        "status) until Ctrl-C")
    mo.add_argument("--interval", type=seconds_arg, default=5.0)
    add_job_parser(sub)
    add_tapis_parser(sub)
    add_keys_parser(sub)
    add_ai_parser(sub)
    add_weights_parsers(sub)
    add_lifetime_parsers(sub, seconds_arg)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import api
    from .errors import HpcserveError

    owns_facade = not api.default_exists()  # else a caller's (tests call main in-process)
    try:
        return COMMANDS[args.command](args)
    except HpcserveError as exc:
        print(f"hpcserve: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hpcserve: interrupted", file=sys.stderr)
        return 130
    finally:
        with contextlib.suppress(OSError):  # the output is out before the facade closes
            sys.stdout.flush()
        if owns_facade:
            # Now, not at exit: the interpreter's exit stops the worker threads the monitor
            # polls targets with, and a tick still running then failed with a traceback.
            api.close_default()


# ---------------------------------------------------------------- commands


def _api() -> Facade:
    from . import api

    return api.default()


def _dump(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


def cmd_recipes(args: argparse.Namespace) -> int:
    api = _api()
    if args.name:
        recipe = api.recipe(args.name)
        if args.json:
            _dump(recipe)
        else:
            import yaml

            print(yaml.safe_dump(recipe, sort_keys=False).rstrip())
        return EXIT_OK
    recipes = api.recipes()
    if args.json:
        _dump(recipes)
    else:
        print(views.recipes_table(recipes).grid())
    for err in api.recipe_errors().values():
        print(f"hpcserve: warning: skipped a broken recipe: {err}", file=sys.stderr)
    return EXIT_OK


def cmd_targets(args: argparse.Namespace) -> int:
    targets = _api().targets()
    if args.json:
        _dump(targets)
    else:
        print(views.targets_table(targets, where=False).grid())
    return EXIT_OK


class Progress:
    """Prints a line whenever the session's state or reason changes, with the elapsed time."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.start = time.monotonic()
        self.last: tuple[str, str] | None = None
        # sys.stderr as it is when used, not at import (redirect_stderr, pytest's capture)
        self.stream = stream if stream is not None else sys.stderr

    def __call__(self, session: Session) -> None:
        key = (str(session.state), session.reason)
        if key != self.last:
            self.last = key
            reason = f" ({session.reason})" if session.reason else ""
            print(f"[{time.monotonic() - self.start:6.1f}s] {session.name}: {session.state}"
                  f"{reason}", file=self.stream, flush=True)


def cmd_launch(args: argparse.Namespace) -> int:
    backend, overrides = launch_overrides(args)
    api = _api()
    # the overrides hold no name of launch()'s own arguments (launch_overrides
    # refuses them), which a type checker cannot see
    session = api.launch(args.recipe, backend=backend, on=args.on, name=args.name,
                         wait=False, **overrides)  # type: ignore[arg-type]
    print(f"launched {session.name} (id {session.id}) on {session.target}", file=sys.stderr)
    if args.wait:
        session = api.wait(session.id, timeout=args.timeout, progress=Progress())
    if args.json:
        _dump(session.public())
    else:
        print(session.id)
    if session.state.terminal:
        _print_failure(session)
        return EXIT_FAIL
    return EXIT_OK


def _metrics(api: Any, session: Session) -> dict[str, Any] | None:
    """A ready session's live metrics (scraped now), else None."""
    return api.metrics(session.id) if session.state == "ready" else None


def _print_failure(session: Session) -> None:
    print(f"hpcserve: session {session.name} {session.state}: {session.reason}", file=sys.stderr)
    if session.log_tail:
        print("--- last lines of the engine log ---", file=sys.stderr)
        print(session.log_tail, file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> int:
    api = _api()
    if args.id:
        session = api.status(args.id)
        metrics = _metrics(api, session)
        if args.json:
            _dump({**session.public(), "metrics": metrics})
        else:
            print(views.SessionDetail(session, metrics).text())
        return EXIT_OK
    sessions = api.sessions(live_only=not args.all)
    if args.json:
        _dump([{**s.public(), "metrics": _metrics(api, s)} for s in sessions])
        return EXIT_OK
    if not sessions:
        print("no live sessions (hpcserve status --all lists ended ones)", file=sys.stderr)
        return EXIT_OK
    print(views.SessionList(sessions).text())
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    api = _api()
    if args.follow:
        for chunk in api.follow_logs(args.id):
            sys.stdout.write(chunk)
            sys.stdout.flush()
        return EXIT_OK
    print(api.logs(args.id, tail=args.tail or None))
    return EXIT_OK


def _params(max_tokens: int, temperature: float | None = None) -> dict[str, object]:
    params: dict[str, object] = {"max_tokens": max_tokens}
    if temperature is not None:
        params["temperature"] = temperature
    return params


def cmd_prompt(args: argparse.Namespace) -> int:
    for delta in _api().stream(args.id, " ".join(args.text), system=args.system,
                               **_params(args.max_tokens, args.temperature)):
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return EXIT_OK


def cmd_chat(args: argparse.Namespace) -> int:
    api = _api()
    history: list[dict[str, str]] = []
    session = api.status(args.id)
    from .prompting import require_ready

    require_ready(session)  # before asking for a first line that could not be answered
    print(f"chatting with {session.name} ({session.model}); an empty line ends", file=sys.stderr)
    while True:
        try:
            line, eof = input("> "), False
        except EOFError:
            line, eof = "", True
        if not line.strip():
            # input() left "> " on stdout; a terminal echoes an Enter, not a Ctrl-D or piped
            # text: end that line, or the next output (the shell's prompt) is glued to it
            if eof or not sys.stdin.isatty():
                sys.stdout.write("\n")
            break
        history.append({"role": "user", "content": line})
        answer = []
        for delta in api.stream(args.id, history, system=args.system,
                                **_params(args.max_tokens)):
            answer.append(delta)
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(answer)})
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    session = _api().stop(args.id)
    print(f"{session.name}: {session.state}", file=sys.stderr)
    return EXIT_OK


def cmd_keepalive(args: argparse.Namespace) -> int:
    session = _api().keepalive(args.id)
    print(f"{session.name}: idle timer reset", file=sys.stderr)
    return EXIT_OK


def cmd_monitor(args: argparse.Namespace) -> int:
    from .api import Hpcserve

    api = Hpcserve(poll_interval=args.interval)
    print(f"monitoring (every {args.interval:g} s); Ctrl-C stops monitoring, not the sessions",
          file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    finally:
        api.close()


def cmd_jobs(args: argparse.Namespace) -> int:
    return cmd_job(args, _api())


def cmd_gateway_keys(args: argparse.Namespace) -> int:
    return cmd_keys(args, _api())


def cmd_jupyter_ai(args: argparse.Namespace) -> int:
    return cmd_ai(args, _api())


def cmd_relaunch_session(args: argparse.Namespace) -> int:
    return cmd_relaunch(args, _api(), Progress())


def cmd_extend_session(args: argparse.Namespace) -> int:
    return cmd_extend(args, _api())


COMMANDS = {
    "recipes": cmd_recipes, "targets": cmd_targets, "launch": cmd_launch, "status": cmd_status,
    "logs": cmd_logs, "prompt": cmd_prompt, "chat": cmd_chat, "stop": cmd_stop,
    "keepalive": cmd_keepalive, "monitor": cmd_monitor, "job": cmd_jobs, "tapis": cmd_tapis,
    "keys": cmd_gateway_keys, "ai": cmd_jupyter_ai, "pull": cmd_pull, "models": cmd_models,
    "relaunch": cmd_relaunch_session, "extend": cmd_extend_session,
}

if __name__ == "__main__":
    sys.exit(main())
