"""R5 (GitHub issue 8): property-based fuzzing of recipe files, overrides, CLI and magic
arguments and REST bodies: no traceback reaches the user, no 5xx from the REST API, no
half-written record; schemathesis against /hpcserve/api/openapi.json finds nothing.

Nothing fuzzed here can leave an engine running. The targets file defines `local` with
`python: /bin/false` (a launch that passes validation really starts, through the local runner,
a process that exits at once with code 1: the session goes pending -> failed, exercising the
whole launch path) and `broken` with an interpreter that does not exist (the launch fails in
the target: a `failed` record and a LaunchError). Engines found on PATH (qdrant, chroma,
text-generation-launcher...) cannot start either: PATH is an empty directory for the fuzzed
server and for the in-process front ends. Each test ends by stopping every live session and
checking that no process carrying one of its sessions' marks runs.

Examples are drawn from a fixed seed (HPCSERVE_R5_SEED, default below) so CI runs are stable;
set another seed to explore, and HPCSERVE_R5_SCALE=N for N times as many examples.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import types
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from r5_st_hooks import deliberate
from r5_strategies import (
    FUZZ_RECIPES,
    any_text,
    command_line,
    env_name,
    junk,
    launch_body,
    magic_line,
    mostly,
    options_line,
    overrides,
    pick,
    raw_body,
    recipe_file,
    set_pair,
    text_overrides,
)
from r5_strategies import backend as backend_name

from conftest import TOKEN, KillableServer, free_port, marked_processes, record, until
from hpcserve_jupyter import api, cli, cmdargs
from hpcserve_jupyter.errors import BadInput, HpcserveError, RecipeError
from hpcserve_jupyter.recipes import Catalog, apply_overrides
from hpcserve_jupyter.resolve import resolve
from hpcserve_jupyter.sessions import TERMINAL, State
from hpcserve_jupyter.spec import ServeSpec

pytestmark = [pytest.mark.timeout(400)]

REPO = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("HPCSERVE_R5_SEED", "8052025"))
SCALE = float(os.environ.get("HPCSERVE_R5_SCALE", "1"))
FALSE = shutil.which("false") or "/bin/false"
TARGETS = {"targets": {
    "local": {"kind": "local", "python": FALSE, "stop_grace": 1},
    "broken": {"kind": "local", "python": "/nonexistent/hpcserve-r5/bin/python"},
}}
TARGET_POOL = ["local", "broken", "nowhere"]
TRACEBACK = "Traceback (most recent call last)"
COUNTS: Counter[str] = Counter()  # examples run, per area (recorded as the R5 figures)


def fuzz(examples: int) -> Any:
    """Hypothesis settings of this module: a fixed seed, no example database (nothing is
    written into the repository), no deadline (launches spawn processes)."""
    def wrap(test: Any) -> Any:
        test = settings(max_examples=max(1, int(examples * SCALE)), deadline=None,
                        database=None, suppress_health_check=list(HealthCheck))(test)
        return seed(SEED)(test)
    return wrap


def write_catalog(root: Path) -> Path:
    """The fuzz recipe directory: the FUZZ_RECIPES files (built-in recipes come on top)."""
    recipes = root / "r5-recipes"
    recipes.mkdir(parents=True, exist_ok=True)
    for name, data in FUZZ_RECIPES.items():
        (recipes / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return recipes


def store_problems(db: Path, *, launches_done: bool = True) -> list[str]:
    """Every session row against the store's and the manager's invariants ("half-written"
    records): row columns equal the JSON they were written with (one transaction), a known
    state with ended_at set exactly when terminal, a `created` event and an event that
    recorded the current state, a failed session says why, a ready one has endpoints, and -
    once no launch is in flight - every live session has the handle its target returned
    (a live record without one is a launch that never completed)."""
    problems: list[str] = []
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        rows = con.execute("SELECT id, name, state, target, version, data FROM sessions")
        for sid, name, state, target, version, data in rows.fetchall():
            try:
                s = json.loads(data)
            except ValueError:
                problems.append(f"{sid}: data is not JSON")
                continue
            where = f"{sid} ({s.get('state')})"
            if (s.get("id"), s.get("name"), s.get("state"), s.get("target"),
                    s.get("version")) != (sid, name, state, target, version):
                problems.append(f"{where}: columns and data disagree")
            if state not in {str(x) for x in State}:
                problems.append(f"{where}: unknown state")
                continue
            terminal = State(state) in TERMINAL
            if terminal != (s.get("ended_at") is not None):
                problems.append(f"{where}: ended_at does not match the state")
            if not isinstance(s.get("spec"), dict) or s["spec"].get("recipe") != s.get("recipe"):
                problems.append(f"{where}: no spec for its recipe")
            if launches_done and not terminal and not s.get("handle"):
                problems.append(f"{where}: live without a target handle")
            if state == "ready" and not s.get("endpoints"):
                problems.append(f"{where}: ready without endpoints")
            if state == "failed" and not s.get("reason"):
                problems.append(f"{where}: failed without a reason")
            kinds = con.execute("SELECT kind, state FROM events WHERE session_id=?",
                                (sid,)).fetchall()
            if ("created", "pending") not in kinds:
                problems.append(f"{where}: no created event")
            if state not in {k[1] for k in kinds}:
                problems.append(f"{where}: no event recorded its state")
    return problems


def settle(sessions: Any, stop: Any, home: Path, timeout: float = 30) -> None:
    """Stop every live session, then require all of them terminal and no marked process of
    this state directory alive (nothing fuzzed may keep running)."""
    for s in sessions():
        if s.state.live:
            with contextlib.suppress(HpcserveError):
                stop(s.id)
    assert until(lambda: all(s.state.terminal for s in sessions()), timeout), \
        [(s.name, str(s.state)) for s in sessions() if s.state.live]
    left = until(lambda: not marked_processes(home), timeout) or marked_processes(home)
    assert left is True or not left, f"engine processes left running: {left}"


# ---------------------------------------------------------------------- in-process setup


@pytest.fixture
def fuzz_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_home: Path
             ) -> dict[str, Path]:
    """This test's targets file (the fuzz targets), recipe dir, an empty PATH and cwd."""
    Path(os.environ["HPCSERVE_TARGETS"]).write_text(yaml.safe_dump(TARGETS))
    recipes = write_catalog(tmp_path)
    monkeypatch.setenv("HPCSERVE_RECIPES", str(recipes))
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # the bench magic writes its reports into the cwd
    return {"home": isolated_home, "recipes": recipes, "cwd": work}


@pytest.fixture
def facade(fuzz_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An embedded facade on this test's state directory, as api.default() (what the CLI and
    the magics use), polling fast so launches of /bin/false end quickly."""
    hp = api.Hpcserve(poll_interval=0.1)
    monkeypatch.setattr(api, "_default", hp)
    try:
        yield hp
    finally:
        hp.close()


def check_in_process_end(hp: Any, home: Path) -> None:
    """After a front end's property: whole records, then nothing left running."""
    problems = store_problems(home / "sessions.db")
    assert not problems, problems
    settle(hp.sessions, hp.stop, home)


def pools(hp: Any) -> tuple[list[str], list[str]]:
    """(recipe names, session names and ids) as they are now."""
    sessions = hp.sessions()
    return hp.manager.catalog.names(), [s.name for s in sessions] + [s.id for s in sessions]

# ---------------------------------------------------------------------- (a) recipe files


def test_recipe_files_load_or_fail_with_a_recipe_error(tmp_path: Path) -> None:
    """Any bytes in recipe files, loaded as users load them (Catalog of a directory): each file
    is a recipe or a RecipeError naming the file (never another exception); a recipe that
    loads resolves to a spec (or a HpcserveError saying what to change) whose JSON round-trips,
    as the store keeps it."""
    folders = iter(range(10**9))

    @fuzz(500)
    @given(files=st.lists(recipe_file(), min_size=1, max_size=3),
           suffix=st.sampled_from([".yaml", ".yml"]))
    def prop(files: list[bytes], suffix: str) -> None:
        folder = tmp_path / f"recipes-{next(folders)}"
        folder.mkdir()
        paths = [folder / f"r{i}{suffix}" for i in range(len(files))]
        for path, data in zip(paths, files, strict=True):
            path.write_bytes(data)
        catalog = Catalog([folder])  # must not raise: a broken file is kept as an error
        for path in paths:
            if path in catalog.errors:
                err = catalog.errors[path]
                assert isinstance(err, RecipeError) and err.path == str(path), err
                assert str(err).startswith(str(path)) and TRACEBACK not in str(err)
                if path.stem not in catalog.recipes:  # else a recipe of that name wins
                    with pytest.raises(RecipeError):
                        catalog.get(path.stem)
                COUNTS["recipe_files_refused"] += 1
            else:
                assert path in catalog.sources.values(), path
                COUNTS["recipe_files_loaded"] += 1
        for name in catalog.names():
            recipe = catalog.get(name)
            json.dumps(recipe.summary())
            json.dumps(recipe.model_dump(mode="json"))
            try:
                spec = resolve(name, catalog=catalog)
            except HpcserveError as exc:
                assert exc.message and TRACEBACK not in str(exc)
                continue
            assert ServeSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
            COUNTS["recipe_specs"] += 1
        COUNTS["recipe_examples"] += 1
        shutil.rmtree(folder)

    prop()
    assert COUNTS["recipe_files_loaded"] and COUNTS["recipe_files_refused"], COUNTS
    record("R5", seed=SEED, recipe_examples=COUNTS["recipe_examples"],
           recipe_files_loaded=COUNTS["recipe_files_loaded"],
           recipe_files_refused=COUNTS["recipe_files_refused"],
           recipe_specs_resolved=COUNTS["recipe_specs"])


# ---------------------------------------------------------------------- (b) overrides


def test_overrides_apply_or_fail_with_bad_input(tmp_path: Path) -> None:
    """Overrides as the REST API takes them (a JSON object) and as the CLI and magics take them
    (`--set K=V` words, --gpus, --time, --backend through cmdargs.launch_overrides) go through
    apply_overrides / resolve: a valid recipe and spec, or a BadInput (exit code 2); a spec
    that comes out is JSON-safe for the store."""
    from hpcserve_jupyter.recipes import builtin_recipe_dir

    catalog = Catalog([builtin_recipe_dir(), write_catalog(tmp_path)])

    @fuzz(600)
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(catalog.names()), label="recipe")
        recipe = catalog.get(name)
        backend = data.draw(st.one_of(st.sampled_from(recipe.backends), backend_name),
                            label="backend")
        given_overrides = data.draw(overrides, label="overrides")
        try:
            changed = apply_overrides(recipe, given_overrides, backend)
            json.dumps(changed.model_dump(mode="json"))
            COUNTS["overrides_applied"] += 1
        except BadInput as exc:
            assert exc.message and TRACEBACK not in str(exc)
            COUNTS["overrides_refused"] += 1
        ns = types.SimpleNamespace(
            set=data.draw(st.lists(set_pair, max_size=4), label="--set"),
            backend=data.draw(st.none() | backend_name, label="--backend"),
            gpus=data.draw(st.none() | junk, label="--gpus"),
            time=data.draw(st.none() | junk, label="--time"))
        for given_ in (ns, data.draw(text_overrides, label="text overrides")):
            try:
                if isinstance(given_, dict):
                    chosen, ovr = backend, given_
                else:
                    chosen, ovr = cmdargs.launch_overrides(given_)  # type: ignore[arg-type]
                spec = resolve(name, chosen, ovr, catalog=catalog)
            except HpcserveError as exc:
                assert exc.exit_code == 2, exc  # bad input, never "a failure"
                assert exc.message and TRACEBACK not in str(exc)
                continue
            assert ServeSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
            COUNTS["override_specs"] += 1
        COUNTS["override_examples"] += 1

    prop()
    assert COUNTS["overrides_applied"] and COUNTS["overrides_refused"], COUNTS
    record("R5", override_examples=COUNTS["override_examples"],
           overrides_applied=COUNTS["overrides_applied"],
           overrides_refused=COUNTS["overrides_refused"],
           override_specs_resolved=COUNTS["override_specs"])


# ---------------------------------------------------------------------- (c) CLI


class _Interrupted:
    """`time` for cli.py during `hpcserve monitor`: the sleep is a Ctrl-C."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    @staticmethod
    def sleep(_: float) -> None:
        raise KeyboardInterrupt


def test_cli_exits_0_1_2_with_a_message_never_a_traceback(
        facade: Any, fuzz_env: dict[str, Path], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Random `hpcserve` argument lists through cli.main, on the embedded facade and the fuzz
    targets: exit 0, 1 or 2 (130 for `monitor`, whose sleep here is a Ctrl-C), a message on
    stderr when not 0, no traceback and no exception but argparse's SystemExit. `chat` reads
    from a stdin holding one line; launches end at once (see the module docstring)."""
    monkeypatch.setattr(cli, "time", _Interrupted)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n\n" * 1000))
    # `hpcserve pull` of a built-in recipe: a hub that refuses at once, never a real download
    # (pull reads HF_ENDPOINT on each call) on a machine with internet.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")

    @fuzz(300)
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        recipes, sessions = pools(facade)
        argv = data.draw(mostly(
            command_line(cli.build_parser(), recipes, TARGET_POOL, sessions),
            st.lists(junk, max_size=4), 10), label="argv")
        capsys.readouterr()
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
            code = exc.code
        out = capsys.readouterr()
        allowed = {0, 1, 2} | ({130} if argv[:1] == ["monitor"] else set())
        assert code in allowed, (argv, code, out.err)
        assert TRACEBACK not in out.err and TRACEBACK not in out.out, (argv, out.err)
        if code:
            assert out.err.strip(), (argv, code)
        COUNTS["cli_argv"] += 1
        COUNTS[f"cli_exit_{code}"] += 1

    prop()
    check_in_process_end(facade, fuzz_env["home"])
    launched = len(facade.sessions())
    assert COUNTS["cli_exit_0"] and COUNTS["cli_exit_2"] and launched, COUNTS
    record("R5", cli_argv=COUNTS["cli_argv"], cli_sessions_recorded=launched,
           cli_exit_codes={k[9:]: v for k, v in sorted(COUNTS.items())
                           if k.startswith("cli_exit_")})


# ---------------------------------------------------------------------- (d) magics


class Awkward:
    """A notebook object whose formatting and indexing fail in their own ways."""

    def __format__(self, spec: str) -> str:
        raise RuntimeError("no format for you")

    def __getitem__(self, key: Any) -> Any:
        raise LookupError(key)


CELLS = ["{topic}", "{n:>{n}}", "{items[5]}", "{n[0]}", "{cfg[a]}", "{cfg[zz]}", "{awkward}",
         "{awkward:x}", "{awkward[0]}", "{0}", "{}", "{topic.upper}", "{topic!z}", "{{lit}}",
         "{", "}", "{topic:%Y}", "{missing}", "{n.__class__}", "plain text", "   ", ""]


@pytest.fixture
def shell(facade: Any) -> Iterator[Any]:
    """The test IPython shell with the extension loaded, on this test's facade (terminal)."""
    from IPython.testing import globalipapp

    from hpcserve_jupyter.magics.core import magics_of

    globalipapp.start_ipython()
    ip = globalipapp.get_ipython()
    assert ip.run_cell("%load_ext hpcserve_jupyter").success
    magics = magics_of(ip)
    magics.facade, magics.rich, magics.current = facade, False, None
    ip.user_ns.update(topic="the sea", n=3, items=[1, 2], cfg={"a": 1}, awkward=Awkward())
    try:
        yield ip
    finally:
        magics.facade, magics.current = None, None
        for key in ("topic", "n", "items", "cfg", "awkward", "answer"):
            ip.user_ns.pop(key, None)


def test_magics_show_a_usage_error_or_message_never_a_traceback(
        shell: Any, facade: Any, fuzz_env: dict[str, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    """Random `%serve` lines and `%%serve` cells run as a notebook runs them (run_cell on a real
    InteractiveShell): the outcome is a result, a printed `hpcserve:` message or a UsageError
    (IPython shows it without a traceback); never another exception or a traceback."""
    from hpcserve_jupyter.magics.core import build_cell_parser, build_line_parser

    line_parser, cell_parser = build_line_parser(), build_cell_parser()

    @fuzz(300)
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        recipes, sessions = pools(facade)
        raw = data.draw(st.booleans(), label="raw")
        if data.draw(st.integers(0, 2), label="kind") == 0:
            words = data.draw(options_line(cell_parser, recipes, TARGET_POOL, sessions),
                              label="cell line")
            line = magic_line(words, raw)
            cell = data.draw(mostly(st.lists(st.sampled_from(CELLS), min_size=1, max_size=3)
                                    .map(" ".join), any_text), label="cell")
            source = f"get_ipython().run_cell_magic('serve', {line!r}, {cell!r})"
            COUNTS["magic_cells"] += 1
        else:
            words = data.draw(mostly(
                command_line(line_parser, recipes, TARGET_POOL, sessions),
                st.lists(any_text, max_size=4), 10), label="words")
            source = f"get_ipython().run_line_magic('serve', {magic_line(words, raw)!r})"
            COUNTS["magic_lines"] += 1
        capsys.readouterr()
        result = shell.run_cell(source, store_history=False)
        out = capsys.readouterr()
        if type(result.result).__name__ == "ControlPanel":
            result.result.close()
        assert result.error_before_exec is None, (source, result.error_before_exec)
        assert result.error_in_exec is None or isinstance(result.error_in_exec, UsageError), \
            (source, repr(result.error_in_exec), out.out[-2000:])
        assert TRACEBACK not in out.out and TRACEBACK not in out.err, (source, out.out[-2000:])
        COUNTS["magic_usage_errors" if result.error_in_exec else "magic_ok"] += 1

    prop()
    check_in_process_end(facade, fuzz_env["home"])
    assert COUNTS["magic_usage_errors"] and COUNTS["magic_ok"], COUNTS
    record("R5", magic_lines=COUNTS["magic_lines"], magic_cells=COUNTS["magic_cells"],
           magic_usage_errors=COUNTS["magic_usage_errors"],
           magic_sessions_recorded=len(facade.sessions()), tracebacks=0)


# ---------------------------------------------------------------------- the fuzzed server


class FuzzServer:
    """A real `jupyter server` with the extension, on the fuzz targets and an empty PATH."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "hpcserve-home"
        targets = root / "targets.yaml"
        targets.write_text(yaml.safe_dump(TARGETS))
        empty = root / "empty-bin"
        empty.mkdir()
        (root / "user").mkdir()
        with pytest.MonkeyPatch.context() as mp:  # the server's environment only
            mp.setenv("HPCSERVE_HOME", str(self.home))
            mp.setenv("HPCSERVE_TARGETS", str(targets))
            mp.setenv("HPCSERVE_RECIPES", str(write_catalog(root)))
            mp.setenv("HOME", str(root / "user"))
            mp.setenv("PATH", str(empty))
            self.server = KillableServer(root, free_port())
        self.http = self.server.http
        self.doc = self.http.get("hpcserve/api/openapi.json").json()

    def sessions(self) -> list[Any]:
        from hpcserve_jupyter.sessions import Session

        r = self.http.get("hpcserve/api/sessions")
        assert r.status_code == 200, r.text
        return [Session.from_dict({**s, "spec": {}}) for s in r.json()["sessions"]]

    def stop(self, sid: str) -> None:
        r = self.http.delete(f"hpcserve/api/sessions/{sid}")
        assert r.status_code in (200, 404), r.text

    def log_mark(self) -> int:
        """Where the server's log ends now (log_tracebacks reads from there)."""
        self.server.log.flush()
        return Path(self.server.log.name).stat().st_size

    def log_tracebacks(self, since: int) -> list[str]:
        """Tracebacks the server logged since `since`: an exception some handler did not turn
        into an answer (Jupyter logs those with their traceback)."""
        self.server.log.flush()
        with open(self.server.log.name, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode("utf-8", "replace")
        return [chunk[:1500] for chunk in text.split(TRACEBACK)[1:]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any) -> Iterator[FuzzServer]:
    srv = FuzzServer(tmp_path_factory.mktemp("r5-server"))
    try:
        yield srv
        settle(srv.sessions, srv.stop, srv.home)
    finally:
        srv.server.stop()


def check_answer(route: str, method: str, status: int, text: str) -> None:
    """What any answer of the fuzzed server must look like."""
    body: Any = None
    with contextlib.suppress(ValueError):
        body = json.loads(text) if text else None
    if route.startswith("/hpcserve/api/"):
        assert status < 500, (route, method, status, text[:500])
    else:
        assert deliberate(route, status, body, method) is None, (route, method, status, text)
    assert TRACEBACK not in text
    if status >= 400 and method != "HEAD":
        assert isinstance(body, dict), (route, status, text[:300])
        err = body.get("error")
        message = err.get("message") if isinstance(err, dict) else err
        assert isinstance(message, str) and message.strip(), (route, status, body)
        assert "internal error" not in message, (route, status, body)


def test_rest_bodies_never_5xx_nor_half_written(server: FuzzServer) -> None:
    """Random bodies (JSON of the right shape with pools of real names, any JSON, broken JSON,
    bytes, JSON nested thousands deep) to every POST/PUT/PATCH/DELETE operation of the OpenAPI
    document, with path parameters from the live sessions, recipes and targets or junk: no 5xx
    from /hpcserve/api (the proxy and the gateway: only their documented 502/503/504 about a
    session's engine), every error a JSON body with a message. Then: every record whole, no
    traceback in the server's log, nothing running once the live sessions are stopped."""
    mark = server.log_mark()
    ops = sorted((path, method) for path, item in server.doc["paths"].items()
                 for method in item if method in ("post", "put", "patch", "delete"))
    # Examples per operation: more for those that parse their bodies than for the relays.
    share = {"/hpcserve/api/sessions": 6, "/hpcserve/api/targets/{name}/secrets": 3}
    recipes = sorted({*FUZZ_RECIPES, "smollm2-135m", "qdrant", "bge-m3"})
    segment = st.one_of(junk, any_text).filter(lambda v: v not in ("", ".", ".."))
    statuses: Counter[str] = Counter()
    routes: set[str] = set()

    def prop(route: str, method: str, data: st.DataObject) -> None:
        sessions = [x for s in server.sessions() for x in (s.id, s.name)]
        values = {
            "id": mostly(pick(sessions, "none"), segment),
            "name": mostly(st.just("local"), st.one_of(st.sampled_from(TARGET_POOL), segment)),
            "path": st.one_of(st.sampled_from(["", "v1/models", "health", "v1/chat/completions",
                                               "a%2Fb", "x@y"]), junk).filter(
                lambda v: ".." not in v and not v.startswith("/"))}
        url = route
        for param, strategy in values.items():
            if "{" + param + "}" in url:
                url = url.replace("{" + param + "}", urllib.parse.quote(
                    data.draw(strategy, label=param), safe="/%@" if param == "path" else ""))
        if route == "/hpcserve/api/sessions":
            body = raw_body(launch_body(recipes, TARGET_POOL), deep_ok=True)
        elif route.endswith("/secrets"):
            value = st.one_of(st.sampled_from(["", "hf_x", "a\x00b", "é" * 300, "\ud800",
                                               "a\udcffb"]), any_text)
            body = raw_body(mostly(st.fixed_dictionaries({"HF_TOKEN": value}), st.dictionaries(
                st.one_of(env_name, any_text), value, max_size=2)), deep_ok=True)
        elif route.startswith("/hpcserve/v1/"):
            body = raw_body(st.fixed_dictionaries(
                {"model": mostly(pick(sessions, "x"), any_text)},
                optional={"stream": st.booleans(), "messages": st.just(
                    [{"role": "user", "content": "hi"}])}), deep_ok=True)
        else:
            body = raw_body(st.just({}), deep_ok=False)
        content = data.draw(body, label="body")
        headers = {"Content-Type": data.draw(st.sampled_from(
            ["application/json", "text/plain", "application/x-www-form-urlencoded"]))}
        r = server.http.request(method.upper(), url.lstrip("/"), content=content,
                                headers=headers)
        check_answer(route, method.upper(), r.status_code, r.text)
        statuses[str(r.status_code)] += 1
        routes.add(f"{method.upper()} {route}")

    total = sum(share.get(route, 1) for route, _ in ops)
    def for_operation(route: str, method: str) -> Any:
        @fuzz(max(1, round(500 * share.get(route, 1) / total)))
        @given(data=st.data())
        def one_operation(data: st.DataObject) -> None:
            prop(route, method, data)
        return one_operation

    for route, method in ops:  # every operation, each its share of the examples
        for_operation(route, method)()
    problems = store_problems(server.home / "sessions.db")
    assert not problems, problems
    assert not server.log_tracebacks(mark), server.log_tracebacks(mark)
    recorded = len(server.sessions())
    assert routes == {f"{m.upper()} {p}" for p, m in ops}, sorted(routes)
    assert recorded and statuses["201"] and statuses["400"] and statuses["404"], statuses
    settle(server.sessions, server.stop, server.home)
    record("R5", rest_requests=sum(statuses.values()), rest_operations=len(routes),
           rest_statuses=dict(sorted(statuses.items())),
           rest_5xx=sum(n for s, n in statuses.items() if s.startswith("5")),
           rest_5xx_from_api=0, rest_sessions_recorded=recorded, half_written_records=0,
           server_log_tracebacks=0)


def test_gateway_refuses_json_nested_too_deeply(server: FuzzServer) -> None:
    """A gateway body nested 100000 deep is bad input (400), as on /hpcserve/api."""
    r = server.http.post("hpcserve/v1/chat/completions", content=b"[" * 100000)
    assert r.status_code == 400, r.text


def test_proxy_refusals_keep_keepalive_clients_working(server: FuzzServer) -> None:
    """The proxy refuses in prepare(), before a streamed body is read, and tornado then closes
    the connection: the answer says `Connection: close`, so a keep-alive client never sends its
    next request into it (before the fix about 1 in 2 requests after such an answer, and 3 in
    100 with a body, ended in a connection reset; 300 tries leave no room for luck)."""
    import httpx

    resets = 0
    for i in range(300):
        try:
            r = server.http.post("hpcserve/proxy/no-such-session/v1/x",
                                 content=b"0123456789" * (i % 3))
            assert r.status_code == 404 and r.headers["connection"] == "close", r.headers
            assert server.http.get("hpcserve/api/sessions").status_code == 200
        except httpx.TransportError:
            resets += 1
    assert resets == 0, f"{resets} of 300 request pairs ended in a connection reset"


def test_api_refuses_json_nested_too_deeply(server: FuzzServer) -> None:
    """JSON nested 100000 deep is bad input (400) for the API's own bodies, not a 500."""
    for route in ("hpcserve/api/sessions", "hpcserve/api/targets/local/secrets"):
        method = "PUT" if route.endswith("secrets") else "POST"
        r = server.http.request(method, route, content=b"[" * 100000)
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"], r.text


# ---------------------------------------------------------------------- schemathesis

# Only deliberate exceptions, each for a documented answer that is not a fault:
# - use_after_free: DELETE /sessions/{id} *stops* a session; its record stays readable
#   (status, logs, history: `hpcserve status --all`), so GET after DELETE is 200 by design.
# - not_a_server_error on the health probes (503 = not live/ready, the probe's contract) and on
#   the proxy and gateway (502/503/504: the session's engine is gone, starting, unreachable or
#   too slow). r5_st_hooks.deliberate_5xx_only then fails any 5xx that is not exactly that.
# - positive_data_acceptance may see 400 from three operations whose valid inputs depend on the
#   server's state, which no static schema can say: POST /sessions (overrides and backend are
#   checked against the chosen recipe), PUT .../secrets (the names the target reads) and
#   POST /jobs (its input is a file on the server, which must exist and be well formed).
ST_CONFIG = """\
[[operations]]
include-path = "/hpcserve/api/events"
max-stream-events = 1

[[operations]]
include-path-regex = "/v1/(live|ready)$"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]

[[operations]]
include-path-regex = "^/hpcserve/(proxy/|v1/(chat/completions|completions|embeddings)$)"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "502", "503", "504"]

[[operations]]
include-name = ["POST /hpcserve/api/sessions", "PUT /hpcserve/api/targets/{name}/secrets",
                "POST /hpcserve/api/jobs"]
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
"""


def test_schemathesis_finds_no_failure(server: FuzzServer, tmp_path: Path) -> None:
    """`st run` (examples, coverage, fuzzing, stateful phases) with every check against the live
    server's /hpcserve/api/openapi.json, authenticated with the Jupyter token: 0 failures."""
    mark = server.log_mark()
    config = tmp_path / "schemathesis.toml"
    config.write_text(ST_CONFIG)
    report = tmp_path / "st-report.json"
    st_exe = Path(sys.executable).with_name("st")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent),
           "SCHEMATHESIS_HOOKS": "r5_st_hooks"}
    # One worker: with two, schemathesis's threads both reach hypothesis's lambda descriptions,
    # and CPython 3.11's ast.parse is not thread-safe (gh-106905: "AST constructor recursion
    # depth mismatch" SystemError), which failed two fresh-clone CI runs of this test.
    cmd = [str(st_exe), "--config-file", str(config), "run",
           f"{server.server.url}hpcserve/api/openapi.json",
           "-H", f"Authorization: token {TOKEN}", "--checks", "all",
           "--exclude-checks", "use_after_free", "--max-examples",
           str(max(1, int(60 * SCALE))), "--seed", str(SEED), "--request-timeout", "30",
           "--generation-database", "none", "--workers", "1", "--no-color",
           "--report", "json", "--report-json-path", str(report)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert report.exists(), proc.stdout[-5000:] + proc.stderr[-3000:]
    result = json.loads(report.read_text())
    summary = proc.stdout[-8000:]
    assert result["exit_code"] == 0 and proc.returncode == 0, summary
    assert result["failures"] == [] and result["errors"] == [], summary
    ops = result["operations"]
    assert ops["tested"] == ops["selected"] == ops["total"], ops
    assert all(p["status"] == "success" for p in result["phases"].values()), result["phases"]
    assert not result["warnings"].get("unsupported_regex"), result["warnings"]
    cases = result["test_cases"]
    assert cases["generated"] > 20 * ops["tested"], cases  # a run, not a smoke test
    assert not server.log_tracebacks(mark), server.log_tracebacks(mark)
    settle(server.sessions, server.stop, server.home)
    problems = store_problems(server.home / "sessions.db")
    assert not problems, problems
    record("R5", schemathesis_operations=ops["tested"], schemathesis_cases=cases["generated"],
           schemathesis_failures=len(result["failures"]), schemathesis_seed=SEED,
           schemathesis_phases=sorted(result["phases"]),
           schemathesis_seconds=round(result["running_time"], 1))

