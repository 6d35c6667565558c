"""`%serve` and `%%serve`: the CLI's commands as IPython magics, on the api facade.

Every command calls `hpcserve_jupyter.api.default()` (or the facade given to HpcserveMagics),
so the magics hold no launch logic. In a notebook (an ipykernel shell) progress and streamed
answers are updating displays; in a terminal they are printed lines. The one-off job commands
(`%serve job ...`) are in `jobs.py`.
"""

from __future__ import annotations

import argparse
import json
import keyword
import queue
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from .. import views
from ..cmdargs import add_launch_arguments, count_arg, launch_overrides, seconds_arg
from ..lifetimecli import relaunch_words
from ..weightscli import add_pull_parser
from .jobs import JobCommands, add_job_parser

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import DisplayHandle
    from IPython.lib.pretty import PrettyPrinter

    from ..bench import BenchReport
    from ..facade import Facade
    from ..sessions import Session
    from ..widgets import ControlPanel

PROMPT_UPDATE_S = 0.1  # at most this often a streamed answer's display is redrawn
PROGRESS_TICK_S = 0.5  # the elapsed time of a launch in progress is redrawn this often


SessionView = views.SessionNote | views.SessionList | views.SessionDetail  # a command's outcome


class _Exit(Exception):
    """argparse asked to exit (after --help): the magic returns quietly."""


class UsageParser(argparse.ArgumentParser):
    """argparse that raises UsageError (IPython shows it without a traceback) instead of
    exiting, and prints help to stdout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # argparse.ArgumentParser's own
        kwargs.setdefault("exit_on_error", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}\n{self.format_usage().rstrip()}\n"
                         f"(`{self.prog} --help` for more)")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            print(message, file=sys.stderr, end="")
        raise _Exit()

    def parse(self, line: str) -> argparse.Namespace:
        if "\0" in line:  # no file name, session or value can hold one (os calls would raise)
            raise UsageError("the command contains a NUL character")
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"{exc} in: {line}") from None
        try:
            return self.parse_args(words)
        except argparse.ArgumentError as exc:
            self.error(str(exc))
            raise  # not reached


def build_line_parser() -> UsageParser:
    p = UsageParser(prog="%serve", description="Serve AI models from this notebook: "
                    "%serve COMMAND ...; prompt a session with the %%serve cell magic.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=UsageParser)
    sub.required = True

    r = sub.add_parser("recipes", help="list recipes (what can be served), or show one")
    r.add_argument("name", nargs="?")
    sub.add_parser("targets", help="list targets (where sessions run)")

    la = sub.add_parser("launch", help="launch a recipe; shows progress until it is ready")
    add_launch_arguments(la)
    la.add_argument("--no-wait", action="store_true", help="return at once (then %%serve wait)")
    la.add_argument("--timeout", type=seconds_arg, help="stop waiting after SECONDS")

    w = sub.add_parser("wait", help="wait until a session is ready, with progress")
    w.add_argument("id", nargs="?")
    w.add_argument("--timeout", type=seconds_arg, help="give up after SECONDS")

    st = sub.add_parser("status", help="live sessions, or one session in detail")
    st.add_argument("id", nargs="?")
    st.add_argument("--all", action="store_true", help="include ended sessions")

    lg = sub.add_parser("logs", help="a session's engine log")
    lg.add_argument("id", nargs="?")
    lg.add_argument("--tail", type=count_arg, default=100, help="last N lines (0: all)")

    sub.add_parser("stop", help="stop a session").add_argument("id", nargs="?")
    sub.add_parser("keepalive", help="reset a session's idle timer").add_argument("id", nargs="?")
    relaunch, _ = relaunch_words(sub, seconds_arg, id_optional=True)
    relaunch.add_argument("--no-wait", action="store_true", help="return at once")
    sub.add_parser("use", help="the session %%%%serve prompts by default").add_argument("id")
    sub.add_parser("models", help="the models a session serves").add_argument("id", nargs="?")
    sub.add_parser("panel", help="the control panel (widgets)")

    ai = sub.add_parser("ai", help="use a chat session in Jupyter AI (Jupyternaut)")
    ai.add_argument("id", nargs="?")
    how = ai.add_mutually_exclusive_group()
    how.add_argument("--default", action="store_true",
                     help="also the model Jupyternaut uses when none is picked")
    how.add_argument("--remove", action="store_true", help="remove it from Jupyter AI")

    b = sub.add_parser("bench", help="load-test a ready session (report + evaluation files)")
    b.add_argument("id", nargs="?")
    b.add_argument("--requests", "-n", type=int, default=20)
    b.add_argument("--concurrency", "-c", type=int, default=4)
    b.add_argument("--max-tokens", type=int, default=64)
    b.add_argument("--temperature", type=float)
    b.add_argument("--prompt", help="the prompt every request sends")
    b.add_argument("--criteria", metavar="FILE", help="YAML/JSON pass/fail criteria, e.g. "
                   "[\"p95_latency_s <= 2\", \"errors == 0\"]")
    b.add_argument("--out", metavar="DIR", help="where the JSON files go (default: .)")
    b.add_argument("--no-plot", action="store_true")

    add_job_parser(sub)
    add_pull_parser(sub)

    h = sub.add_parser("help", help="this help")
    h.add_argument("topic", nargs="?")
    return p


def build_cell_parser() -> UsageParser:
    p = UsageParser(prog="%%serve", description="The cell is the prompt; {name} fills in a "
                    "notebook variable ({{ and }} are literal braces). The answer streams in "
                    "and is the cell's result.")
    p.add_argument("id", nargs="?", help="session (default: the one in use)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float)
    p.add_argument("-o", "--output", metavar="VAR", help="also store the answer in VAR")
    p.add_argument("--json", action="store_true",
                   help="ask for a JSON object and return it parsed")
    p.add_argument("--wait", action="store_true",
                   help="if the session is still starting, wait for it first")
    p.add_argument("--timeout", type=seconds_arg, help="with --wait: give up after SECONDS")
    return p


def markdown(text: str) -> str:
    """An answer as Markdown that keeps its line breaks (a poem stays a poem)."""
    return text.replace("\n", "  \n")


class Answer(str):
    """A streamed answer: a str, shown as Markdown in a notebook and as text in a terminal."""

    def _repr_markdown_(self) -> str:
        return markdown(str(self))

    def _repr_pretty_(self, p: PrettyPrinter, cycle: bool) -> None:
        p.text(str(self))


class _PrintedAnswer(Answer):
    """An answer already printed token by token (terminal): its first display is skipped, so the
    cell's result does not print it twice; later displays show it."""

    _printed = True

    def _ipython_display_(self) -> None:
        if self._printed:
            self._printed = False
            return
        print(str(self))


def _in_kernel(shell: InteractiveShell | None) -> bool:
    """An ipykernel shell (a notebook's), told apart without importing ipykernel: it has the
    kernel it serves, a plain IPython shell has none."""
    return type(shell).__name__ == "ZMQInteractiveShell" or getattr(shell, "kernel", None) \
        is not None


class _Progress:
    """Launch/wait progress: an updating display in a notebook, lines in a terminal."""

    def __init__(self, rich: bool, header: str) -> None:
        self.rich = rich
        self.header = header
        self.start = time.monotonic()
        self.last_key: tuple[str, str, bool] | None = None
        self.last: Session | None = None
        self.handle: DisplayHandle | None = None
        if rich:
            from IPython.display import display

            self.handle = display(self._bundle(None), raw=True, display_id=True)
        else:
            print(header, flush=True)

    def _bundle(self, session: Session | None) -> dict[str, str]:
        import html

        if session is None:
            return {"text/plain": self.header, "text/html": f"<code>{html.escape(self.header)}"
                    "</code>"}
        elapsed = time.monotonic() - self.start
        return {"text/plain": f"{self.header}: {views.progress_line(session, elapsed)}",
                "text/html": views.progress_html(session, elapsed)}

    def update(self, session: Session) -> None:
        self.last = session
        key = (str(session.state), session.reason, bool(session.unreachable))
        changed = key != self.last_key
        self.last_key = key
        if self.handle is not None:
            self.handle.update(self._bundle(session), raw=True)
        elif changed:
            print(views.progress_line(session, time.monotonic() - self.start), flush=True)

    def tick(self) -> None:
        if self.handle is not None and self.last is not None:
            self.handle.update(self._bundle(self.last), raw=True)

    def done(self) -> None:
        """Back to the header line: the outcome is the cell's result, right below."""
        if self.handle is not None:
            self.handle.update(self._bundle(None), raw=True)


@magics_class
class HpcserveMagics(Magics):
    """`%serve` (line) and `%%serve` (cell). `facade`: a facade to use instead of
    `api.default()`; `rich`: updating displays (notebook) rather than printed lines."""

    def __init__(self, shell: InteractiveShell | None = None, facade: Facade | None = None,
                 rich: bool | None = None) -> None:
        super().__init__(shell)
        self._facade = facade
        self.rich = _in_kernel(shell) if rich is None else rich
        self.current: str | None = None
        self.line_parser = build_line_parser()
        self.cell_parser = build_cell_parser()
        # what each COMMAND of the line parser runs (test_magics checks that they match)
        self.commands: dict[str, Callable[[argparse.Namespace], object]] = {
            "help": self.cmd_help, "recipes": self.cmd_recipes, "targets": self.cmd_targets,
            "launch": self.cmd_launch, "wait": self.cmd_wait, "status": self.cmd_status,
            "logs": self.cmd_logs, "stop": self.cmd_stop, "keepalive": self.cmd_keepalive,
            "use": self.cmd_use, "models": self.cmd_models, "panel": self.cmd_panel,
            "bench": self.cmd_bench, "job": JobCommands(self), "ai": self.cmd_ai,
            "pull": self.cmd_pull, "relaunch": self.cmd_relaunch, "extend": self.cmd_extend,
        }

    @property
    def facade(self) -> Facade:
        if self._facade is None:
            from .. import api

            return api.default()
        return self._facade

    @facade.setter
    def facade(self, value: Facade | None) -> None:
        self._facade = value

    # ------------------------------------------------------------------ entry

    @line_cell_magic
    def serve(self, line: str, cell: str | None = None) -> object:
        """Serve AI models from the notebook. `%serve help` lists the commands; `%%serve`
        prompts a session with the cell's text."""
        from ..errors import HpcserveError

        try:
            if cell is None:
                if not line.strip():
                    return self.cmd_help(argparse.Namespace(topic=None))
                args = self.line_parser.parse(line)
                return self.commands[args.command](args)
            return self.prompt_cell(line, cell)
        except _Exit:
            return None
        except HpcserveError as exc:
            print(f"hpcserve: {exc.message}", file=sys.stderr)
            if exc.hint:
                print(f"  hint: {exc.hint}", file=sys.stderr)
            return None
        except OSError as exc:  # a file the user named (bench --out, --criteria): their fix
            where = f": {exc.filename}" if exc.filename else ""
            print(f"hpcserve: {exc.strerror or exc}{where}", file=sys.stderr)
            return None
        except KeyboardInterrupt:
            print("hpcserve: interrupted", file=sys.stderr)
            return None

    def _key(self, given: str | None) -> str:
        if given:
            return given
        if self.current:
            return self.current
        raise UsageError("no session given and none in use: give an ID, `%serve use ID`, "
                         "or `%serve launch RECIPE` first")

    # ------------------------------------------------------------------ commands

    def cmd_help(self, args: argparse.Namespace) -> views.Text:
        if args.topic:
            sub = _subparser(self.line_parser, args.topic)
            if sub is None:
                raise UsageError(f"no command {args.topic!r}: `%serve help` lists them")
            return views.Text(sub.format_help())
        return views.Text(self.line_parser.format_help() + "\n"
                          + self.cell_parser.format_help())

    def cmd_recipes(self, args: argparse.Namespace) -> views.Text | views.Table:
        hp = self.facade
        if args.name:
            import yaml

            return views.Text(yaml.safe_dump(hp.recipe(args.name), sort_keys=False).rstrip(),
                              title=args.name)
        for err in hp.recipe_errors().values():
            print(f"hpcserve: warning: skipped a broken recipe: {err}", file=sys.stderr)
        return views.recipes_table(hp.recipes())

    def cmd_targets(self, args: argparse.Namespace) -> views.Table:
        return views.targets_table(self.facade.targets())

    def cmd_launch(self, args: argparse.Namespace) -> SessionView:
        backend, overrides = launch_overrides(args)
        hp = self.facade
        # the overrides hold no name of launch()'s own arguments (launch_overrides
        # refuses them), which a type checker cannot see
        session = hp.launch(args.recipe, backend=backend, on=args.on, name=args.name,
                            wait=False, **overrides)  # type: ignore[arg-type]
        self.current = session.id
        header = f"launched {session.name} (id {session.id}) on {session.target}"
        if args.no_wait:
            return views.SessionNote(session, f"{session.state}; launched (id {session.id}) on "
                                     f"{session.target}; `%serve wait {session.name}` waits "
                                     "until it is ready")
        return self._outcome(self._wait(session, args.timeout, header))

    def cmd_wait(self, args: argparse.Namespace) -> SessionView:
        session = self.facade.status(self._key(args.id))
        if session.state.terminal:
            return self._outcome(session)
        return self._outcome(self._wait(session, args.timeout, f"waiting for {session.name}"))

    def cmd_status(self, args: argparse.Namespace) -> SessionView:
        hp = self.facade
        if args.id:
            session = hp.status(args.id)
            metrics = hp.metrics(session.id) if session.state == "ready" else None
            return views.SessionDetail(session, metrics)
        empty = "no sessions" if args.all else \
            "no live sessions (`%serve status --all` lists ended ones)"
        return views.SessionList(hp.sessions(live_only=not args.all), empty=empty)

    def cmd_logs(self, args: argparse.Namespace) -> views.Text:
        hp = self.facade
        session = hp.status(self._key(args.id))
        text = hp.logs(session.id, tail=args.tail or None)
        what = f"last {args.tail} lines" if args.tail else "whole log"
        return views.Text(text, title=f"{session.name}: {what}")

    def cmd_stop(self, args: argparse.Namespace) -> views.SessionNote:
        return views.SessionNote(self.facade.stop(self._key(args.id)))

    def cmd_keepalive(self, args: argparse.Namespace) -> views.SessionNote:
        return views.SessionNote(self.facade.keepalive(self._key(args.id)), "idle timer reset")

    def cmd_relaunch(self, args: argparse.Namespace) -> SessionView:
        old = self.facade.status(self._key(args.id))
        session = self.facade.relaunch(old.id, name=args.name, wait=False)
        self.current = session.id
        header = f"launched {session.name} (id {session.id}) on {session.target}, like {old.name}"
        if args.no_wait:
            return views.SessionNote(session, f"{session.state}; {header}")
        return self._outcome(self._wait(session, args.timeout, header))

    def cmd_extend(self, args: argparse.Namespace) -> views.SessionNote:
        session, message = self.facade.extend(self._key(args.id), args.time)
        return views.SessionNote(session, message)

    def cmd_use(self, args: argparse.Namespace) -> views.SessionNote:
        session = self.facade.status(args.id)
        self.current = session.id
        return views.SessionNote(session, f"in use for %%serve ({session.state})")

    def cmd_models(self, args: argparse.Namespace) -> views.Table:
        models = self.facade.models(self._key(args.id))
        return views.Table([{"model": m} for m in models], [("MODEL", "model")],
                           empty="no models")

    def cmd_ai(self, args: argparse.Namespace) -> views.Text:
        key = self._key(args.id)
        done = (self.facade.drop_from_jupyter_ai(key) if args.remove
                else self.facade.use_in_jupyter_ai(key, default=args.default))
        return views.Text(views.ai_note(done, removed=args.remove), title="Jupyter AI")

    def cmd_pull(self, args: argparse.Namespace) -> None:
        """The CLI's pull, in this process (it touches the target's cache, no session): its
        progress lines and the model's path print into the cell's output."""
        from ..weightscli import cmd_pull

        cmd_pull(args)

    def cmd_panel(self, args: argparse.Namespace) -> ControlPanel:
        from ..widgets import ControlPanel

        return ControlPanel(self.facade)

    def cmd_bench(self, args: argparse.Namespace) -> BenchReport:
        kwargs: dict[str, object] = {"requests": args.requests, "concurrency": args.concurrency,
                                     "max_tokens": args.max_tokens, "criteria": args.criteria,
                                     "out": args.out, "temperature": args.temperature}
        if args.prompt:
            kwargs["prompt"] = args.prompt
        report: BenchReport = self.facade.bench(self._key(args.id), **kwargs)
        if not self.rich or args.no_plot:
            from .reports import TextOnlyReport

            return TextOnlyReport.of(report)
        return report

    # ------------------------------------------------------------------ waiting

    def _wait(self, session: Session, timeout: float | None, header: str) -> Session:
        """facade.wait on a worker thread; this thread shows its progress (display updates
        belong to the cell's thread). Ctrl-C stops waiting, not the session."""
        hp = self.facade
        updates: queue.Queue[Session | None] = queue.Queue()  # None: the wait is over
        waited: list[Session] = []
        failed: list[BaseException] = []

        def work() -> None:
            try:
                waited.append(hp.wait(session.id, timeout=timeout, progress=updates.put))
            except BaseException as exc:
                failed.append(exc)
            finally:
                updates.put(None)

        progress = _Progress(self.rich, header)
        threading.Thread(target=work, name="hpcserve-wait", daemon=True).start()
        try:
            while True:
                try:
                    item = updates.get(timeout=PROGRESS_TICK_S)
                except queue.Empty:
                    progress.tick()
                    continue
                if item is None:
                    break
                progress.update(item)
        except KeyboardInterrupt:
            progress.done()
            print(f"hpcserve: stopped waiting; {session.name} goes on starting: "
                  f"`%serve wait {session.name}` or `%serve stop {session.name}`",
                  file=sys.stderr)
            raise _Exit() from None
        progress.done()
        if failed:
            raise failed[0]
        return waited[0]

    def _outcome(self, session: Session) -> views.SessionList | views.SessionDetail:
        if str(session.state) == "ready":
            return views.SessionList([session])
        if session.state.terminal:
            print(f"hpcserve: session {session.name} {session.state}: {session.reason}",
                  file=sys.stderr)
        return views.SessionDetail(session)

    # ------------------------------------------------------------------ prompting

    def prompt_cell(self, line: str, cell: str) -> object:
        """The answer (or, with --json, what it parses to); None when the session is not
        ready."""
        args = self.cell_parser.parse(line)
        if args.output is not None and (not args.output.isidentifier()
                                        or keyword.iskeyword(args.output)):
            raise UsageError(f"-o {args.output!r}: not a Python variable name")
        text = self.fill_in(cell)
        hp = self.facade
        session = hp.status(self._key(args.id))
        if str(session.state) != "ready" and args.wait and session.state.live:
            session = self._wait(session, args.timeout, f"waiting for {session.name}")
        if str(session.state) != "ready":
            self._not_ready(session)
            return None
        params: dict[str, object] = {"max_tokens": args.max_tokens}
        if args.temperature is not None:
            params["temperature"] = args.temperature
        if args.json:
            params["response_format"] = {"type": "json_object"}
        answer = self._stream(hp.stream(session.id, text, system=args.system, **params))
        result: object = answer
        if args.json:
            try:
                result = json.loads(answer)
            except ValueError as exc:
                print(f"hpcserve: the answer is not valid JSON ({exc}); returning the text",
                      file=sys.stderr)
        if args.output:
            self.user_ns()[args.output] = str(result) if isinstance(result, str) else result
        return result

    def user_ns(self) -> dict[str, object]:
        """The notebook's variables."""
        if self.shell is None:
            raise UsageError("the %serve magics are not loaded into an IPython shell")
        return self.shell.user_ns

    def fill_in(self, cell: str) -> str:
        """The cell's text with {name} replaced by notebook variables ({{ }} for braces)."""
        text = cell.strip()
        if not text:
            raise UsageError("the cell is empty: write the prompt in the cell, below %%serve")
        try:
            return text.format_map(self.user_ns())
        except KeyError as exc:
            raise UsageError(f"{{{exc.args[0]}}} in the prompt: no such variable in the notebook "
                             "(write {{ and }} for literal braces)") from None
        except Exception as exc:  # IndexError, ValueError, TypeError ('{n[0]}' on an int)
            # or whatever a notebook object's own __format__/__getitem__ raises
            raise UsageError(f"cannot fill in the prompt: {type(exc).__name__}: {exc} "
                             "(write {{ and }} for literal braces)") from None

    def _not_ready(self, session: Session) -> None:
        name = session.name
        if session.state.terminal:
            print(f"hpcserve: session {name} has ended ({session.state}: {session.reason}); "
                  f"launch it again: `%serve launch {session.recipe}`", file=sys.stderr)
        else:
            print(f"hpcserve: session {name} is {session.state}, not ready yet: run "
                  f"`%serve wait {name}` first, or add --wait to this cell "
                  f"(`%%serve {name} --wait`)", file=sys.stderr)

    def _stream(self, deltas: Iterable[str]) -> Answer:
        parts: list[str] = []
        if not self.rich:
            for delta in deltas:
                parts.append(delta)
                sys.stdout.write(delta)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()
            return _PrintedAnswer("".join(parts))
        from IPython.display import display

        empty = {"text/plain": "", "text/markdown": ""}
        handle = display(empty, raw=True, display_id=True)
        last = 0.0
        try:
            for delta in deltas:
                parts.append(delta)
                now = time.monotonic()
                if now - last >= PROMPT_UPDATE_S:
                    last = now
                    text = "".join(parts)
                    handle.update({"text/plain": text, "text/markdown": markdown(text) + " ▌"},
                                  raw=True)
        finally:
            # The streamed text gives way to the cell's result (the whole answer) right below.
            handle.update(empty, raw=True)
        return Answer("".join(parts))


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def register(ipython: InteractiveShell, *, facade: Facade | None = None) -> HpcserveMagics:
    magics = HpcserveMagics(ipython, facade=facade)
    ipython.register_magics(magics)
    return magics


def unregister(ipython: InteractiveShell) -> None:
    registry = ipython.magics_manager.registry
    registry.pop(HpcserveMagics.__name__, None)
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("serve", None)


def magics_of(ipython: InteractiveShell) -> HpcserveMagics | None:
    """The HpcserveMagics instance loaded into `ipython` (to set its facade, or `rich`)."""
    return ipython.magics_manager.registry.get(HpcserveMagics.__name__)

