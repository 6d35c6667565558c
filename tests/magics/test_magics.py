"""`%serve` / `%%serve` in a real IPython shell, on a real embedded facade and (for the tests
marked `model`) the real llama.cpp server on SmolLM2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.testing import globalipapp
from IPython.utils.capture import capture_output

from facade_fixtures import facade_fixture
from hpcserve_jupyter import views
from hpcserve_jupyter.magics.core import Answer, magics_of

RECIPE = "smollm2-135m"


hp = facade_fixture(scope="module")


@pytest.fixture
def ip(hp):
    """The test IPython shell with the extension loaded, on this module's facade, terminal mode."""
    globalipapp.start_ipython()  # once per process; later calls return None
    shell = globalipapp.get_ipython()
    result = shell.run_cell("%load_ext hpcserve_jupyter")
    assert result.success
    magics = magics_of(shell)
    magics.facade, magics.rich, magics.current = hp, False, None
    yield shell
    shell.user_ns.pop("answer", None)


@pytest.fixture
def sent(hp, monkeypatch) -> list[dict]:
    """The JSON bodies this module's facade sends to engines, read off the wire (a request hook
    on each prompt client's httpx connection): what the engine received, not what it said."""
    bodies: list[dict] = []
    real_client = hp.client

    def logging_client(key):
        client, session = real_client(key)
        client._http.event_hooks["request"].append(
            lambda request: request.content and bodies.append(json.loads(request.content)))
        return client, session

    monkeypatch.setattr(hp, "client", logging_client)
    return bodies


def run(shell, source: str):
    result = shell.run_cell(source)
    return result


# --------------------------------------------------------------------------- loading


def test_load_ext_registers_line_and_cell_magic(ip):
    assert "serve" in ip.magics_manager.magics["line"]
    assert "serve" in ip.magics_manager.magics["cell"]
    out = run(ip, "%serve help").result
    assert isinstance(out, views.Text)
    for command in ("recipes", "targets", "launch", "status", "logs", "stop", "keepalive", "use",
                    "models", "panel", "bench", "wait"):
        assert command in out.text()
    assert "%%serve" in out.text() and "--max-tokens" in out.text()
    assert run(ip, "%serve").result.text() == out.text()  # no command: the help
    assert "--no-wait" in run(ip, "%serve help launch").result.text()


def test_every_command_of_the_parser_has_a_handler(ip):
    """The commands table of the magics and the line parser's COMMANDs are the same names."""
    import argparse

    magics = magics_of(ip)
    (sub,) = [a for a in magics.line_parser._actions
              if isinstance(a, argparse._SubParsersAction)]
    assert set(magics.commands) == set(sub.choices)


def test_load_ext_stays_light(tmp_path):
    """Loading the extension registers the magics and imports neither the facade, the manager,
    httpx nor ipywidgets (they load on first use)."""
    ipython = Path(sys.executable).with_name("ipython")
    code = ("%load_ext hpcserve_jupyter\n"
            "import sys\n"
            "heavy = ['hpcserve_jupyter.api', 'hpcserve_jupyter.manager', 'httpx', "
            "'ipywidgets', 'matplotlib', 'pydantic']\n"
            "print('LOADED', [m for m in heavy if m in sys.modules])\n"
            "print('MAGICS', 'serve' in get_ipython().magics_manager.magics['cell'])\n")
    script = tmp_path / "check.ipy"
    script.write_text(code)
    env = {**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")}
    out = subprocess.run([str(ipython), "--no-banner", str(script)], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout, out.stdout
    assert "MAGICS True" in out.stdout


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("line", [
    "%serve launch",                      # missing RECIPE
    "%serve frobnicate",                  # unknown command
    "%serve launch smollm2-135m --gpus",  # option without its value
    "%serve logs --tail many",            # not a number
    '%serve status "unclosed',            # shell quoting
    "%serve launch smollm2-135m --set nonsense",  # --set without =
])
def test_bad_input_is_a_short_usage_error(ip, capsys, line):
    result = run(ip, line)
    err = capsys.readouterr().err
    if "--set" in line:  # the CLI's own check: a BadInput with a hint, printed, no traceback
        assert result.error_in_exec is None and result.result is None
        assert "--set expects KEY=VALUE" in err and "hint:" in err
    else:
        assert isinstance(result.error_in_exec, UsageError)
        assert "UsageError" in err
    assert "Traceback" not in err


def test_bad_cell_input(ip, capsys):
    result = run(ip, "%%serve --max-tokens lots\nhello")
    assert isinstance(result.error_in_exec, UsageError)
    result = run(ip, "%%serve -o 1x some-session\nhello")
    assert isinstance(result.error_in_exec, UsageError)
    assert "not a Python variable name" in str(result.error_in_exec)
    result = run(ip, "%%serve\nhello")  # no session given and none in use
    assert isinstance(result.error_in_exec, UsageError)
    assert "%serve use ID" in str(result.error_in_exec)
    assert "Traceback" not in capsys.readouterr().err


def test_unknown_names_print_message_and_hint(ip, capsys):
    result = run(ip, "%serve launch smollm2-135n")
    err = capsys.readouterr().err
    assert result.error_in_exec is None and result.result is None
    assert "hpcserve: unknown recipe 'smollm2-135n'" in err
    assert "hint: did you mean 'smollm2-135m'" in err
    assert "Traceback" not in err
    run(ip, "%serve status no-such-session")
    assert "no session 'no-such-session'" in capsys.readouterr().err


def test_cell_text_fills_in_notebook_variables(ip):
    magics = magics_of(ip)
    ip.user_ns.update(topic="the sea", numbers=[3, 4], cfg={"lang": "French"})
    assert magics.fill_in("  About {topic} in {cfg[lang]}: {numbers[1]} {{literal}} \n") == \
        "About the sea in French: 4 {literal}"
    with pytest.raises(UsageError, match=r"\{nope\} in the prompt: no such variable"):
        magics.fill_in("About {nope}")
    with pytest.raises(UsageError, match="literal braces"):
        magics.fill_in("a {} b")
    with pytest.raises(UsageError, match="the cell is empty"):
        magics.fill_in("  \n ")


# --------------------------------------------------------------------------- catalog


def test_recipes_and_targets_are_tables(ip):
    recipes = run(ip, "%serve recipes").result
    assert RECIPE in [r["name"] for r in recipes]
    assert "NAME" in repr(recipes) and RECIPE in repr(recipes)
    assert "<table" in recipes._repr_html_()
    one = run(ip, f"%serve recipes {RECIPE}").result
    assert "llama-cpp" in one.text() and "n_ctx: 2048" in one.text()
    targets = run(ip, "%serve targets").result
    assert [t["name"] for t in targets] == ["local"]
    assert "this machine" in targets.text()


def test_panel_command_returns_the_control_panel(ip):
    panel = run(ip, "%serve panel").result
    try:
        assert type(panel).__name__ == "ControlPanel"
        assert panel.facade is magics_of(ip).facade
        assert RECIPE in panel.recipe.options
    finally:
        panel.close()


# --------------------------------------------------------------------------- with the model


@pytest.mark.model
def test_launch_prompt_status_logs_stop(ip, hp, capsys, sent):
    """Nothing here reads the model's words (greedy answers differ between CPUs): what the
    engine received is read off the wire (`sent`)."""
    result = run(ip, f"%serve launch {RECIPE}")
    out = capsys.readouterr().out
    sessions = result.result
    assert isinstance(sessions, views.SessionList) and len(sessions) == 1
    s = sessions[0]
    assert str(s.state) == "ready"
    # progress lines in a terminal: the header, then each state with its elapsed time
    assert f"launched {s.name} (id {s.id}) on local" in out
    assert f"{s.name}: pending" in out and f"{s.name}: ready" in out
    assert 'class="hpcserve-state hpcserve-ready"' in sessions._repr_html_()
    assert magics_of(ip).current == s.id  # the session %%serve prompts by default

    # %%serve streams to stdout and returns the whole answer
    result = run(ip, "%%serve --max-tokens 16 --temperature 0\nName a colour.\n")
    out = capsys.readouterr().out
    answer = result.result
    assert isinstance(answer, Answer) and answer.strip()
    assert out.startswith(answer + "\n")  # printed as it streamed...
    assert out.count(answer) == 1  # ... and not a second time as the cell's Out[]
    assert sent[-1]["stream"] is True and sent[-1]["max_tokens"] == 16
    assert sent[-1]["messages"][-1] == {"role": "user", "content": "Name a colour."}

    # -o VAR and {var} interpolation: the engine receives the variable's value
    ip.user_ns["word"] = "pineapple"
    result = run(ip, f"%%serve {s.name} --max-tokens 16 --temperature 0 -o answer\n"
                     "Repeat this word exactly: {word}")
    assert result.error_in_exec is None and result.result.strip()
    assert sent[-1]["messages"][-1] == {"role": "user",
                                        "content": "Repeat this word exactly: pineapple"}
    assert sent[-1]["temperature"] == 0 and sent[-1]["model"] == s.model
    assert ip.user_ns["answer"] == result.result and type(ip.user_ns["answer"]) is str
    result = run(ip, "%%serve\nAbout {undefined_name}")
    assert isinstance(result.error_in_exec, UsageError)
    assert "{undefined_name}" in str(result.error_in_exec)

    status = run(ip, "%serve status").result
    assert [x.id for x in status] == [s.id]
    detail = run(ip, f"%serve status {s.id}").result
    assert "ready" in detail.text() and s.endpoints[0] in detail.text()
    logs = run(ip, "%serve logs --tail 50").result
    assert "chat/completions" in logs.text()
    assert run(ip, "%serve models").result[0]["model"] == RECIPE
    assert run(ip, "%serve keepalive").result.text() == f"{s.name}: idle timer reset"
    assert run(ip, f"%serve use {s.name}").result.text() == \
        f"{s.name}: in use for %%serve (ready)"

    stopped = run(ip, "%serve stop").result
    assert stopped.text() == f"{s.name}: stopped"
    assert run(ip, "%serve status").result == []
    assert "no live sessions" in run(ip, "%serve status").result.text()

    # an ended session: the cell says so and how to go on, without a traceback
    result = run(ip, "%%serve\nAnyone there?")
    err = capsys.readouterr().err
    assert result.result is None and result.error_in_exec is None
    assert f"session {s.name} has ended" in err and f"%serve launch {RECIPE}" in err


@pytest.mark.model
def test_not_ready_says_how_to_wait(ip, hp, capsys):
    note = run(ip, f"%serve launch {RECIPE} --no-wait").result
    s = note.session
    assert str(s.state) == "pending"
    assert f"%serve wait {s.name}" in note.text()
    result = run(ip, "%%serve --max-tokens 8\nHello")  # right away: not ready yet
    err = capsys.readouterr().err
    assert result.result is None and result.error_in_exec is None
    assert f"session {s.name} is " in err and "not ready yet" in err
    assert f"`%serve wait {s.name}`" in err and f"`%%serve {s.name} --wait`" in err
    # --wait waits (with progress), then answers
    result = run(ip, f"%%serve {s.name} --wait --max-tokens 8 --temperature 0\nHello")
    out = capsys.readouterr().out
    assert isinstance(result.result, Answer) and result.result
    assert f"waiting for {s.name}" in out
    waited = run(ip, f"%serve wait {s.name}").result
    assert str(waited[0].state) == "ready"
    run(ip, f"%serve stop {s.id}")


@pytest.mark.model
def test_json_answers_are_parsed(ip, hp, sent):
    """--json asks the engine for a JSON object (llama.cpp constrains its sampling to that
    grammar), so the answer parses whatever words the model picks; which keys it chose is the
    model's business and is not checked (greedy answers differ between CPUs)."""
    s = hp.launch(RECIPE, timeout=120)
    try:
        run(ip, f"%serve use {s.id}")
        result = run(ip, "%%serve --json --max-tokens 120 --temperature 0 -o data\n"
                         'Give a JSON object with the keys "name" and "age" for Ann, aged 30.')
        assert sent[-1]["response_format"] == {"type": "json_object"}
        assert isinstance(result.result, dict)
        assert ip.user_ns["data"] == result.result
        assert json.dumps(result.result)
    finally:
        hp.stop(s.id)


@pytest.mark.model
def test_notebook_mode_updates_displays(ip, hp):
    """In a notebook, progress and the streamed answer are displays updated in place (by
    display_id); each ends as it began, and the outcome is the cell's result."""
    magics = magics_of(ip)
    magics.rich = True
    with capture_output() as cap:
        result = run(ip, f"%serve launch {RECIPE}")
    s = result.result[0]
    outs = cap.outputs
    first, updates = outs[0], outs[1:]
    display_id = first.transient["display_id"]
    assert first.data["text/plain"] == f"launched {s.name} (id {s.id}) on local"
    assert not first.update and updates and all(o.update for o in updates)
    assert {o.transient["display_id"] for o in updates} == {display_id}
    states = [o.data["text/plain"] for o in updates]
    assert any(f"{s.name}: ready" in t for t in states)
    assert any("hpcserve-state" in o.data["text/html"] for o in updates)
    assert updates[-1].data == first.data  # back to the header line at the end

    with capture_output() as cap:
        result = run(ip, "%%serve --max-tokens 40 --temperature 0\nWrite a haiku about rain.")
    answer = result.result
    assert isinstance(answer, Answer)
    assert answer._repr_markdown_() == str(answer).replace("\n", "  \n")  # keeps line breaks
    outs = cap.outputs
    assert outs[0].data == {"text/plain": "", "text/markdown": ""} and not outs[0].update
    partial = [o.data["text/plain"] for o in outs[1:-1]]
    assert partial and all(answer.startswith(p) for p in partial)  # grew as tokens came
    assert outs[-1].update and outs[-1].data == outs[0].data  # gives way to the result
    hp.stop(s.id)


@pytest.mark.model
def test_bench_magic_writes_report_and_evaluation(ip, hp, tmp_path):
    s = hp.launch(RECIPE, timeout=120)
    try:
        criteria = tmp_path / "criteria.yaml"
        criteria.write_text("criteria:\n  - errors == 0\n  - p95_latency_s <= 60\n")
        out = tmp_path / "out"
        result = run(ip, f"%serve bench {s.id} --requests 4 --concurrency 2 --max-tokens 8 "
                         f"--criteria {criteria} --out {out}")
        report = result.result
        assert report.metrics["requests"] == 4 and report.metrics["errors"] == 0
        assert report.passed
        assert "evaluation: PASSED" in repr(report)
        evaluation = json.loads((out / "load_test_evaluation.json").read_text())
        assert evaluation["passed"] is True
        assert [c["criterion"] for c in evaluation["criteria"]] == ["errors == 0",
                                                                    "p95_latency_s <= 60"]
        assert json.loads((out / "load_test_report.json").read_text())["metrics"]["requests"] == 4
    finally:
        hp.stop(s.id)


# --------------------------------------------------------------------------- found by fuzzing


class _Awkward:
    def __format__(self, spec: str) -> str:
        raise RuntimeError("no format")


@pytest.mark.parametrize("cell", ["{n[0]}", "{awkward}", "{n:%Y}"])
def test_prompt_cells_that_cannot_be_filled_in_are_usage_errors(ip, capsys, cell):
    """'{n[0]}' on an int is a TypeError, an object's own __format__ may raise anything:
    both were tracebacks."""
    ip.user_ns.update(n=3, awkward=_Awkward())
    try:
        result = run(ip, f"%%serve some-session\n{cell}")
    finally:
        ip.user_ns.pop("n"), ip.user_ns.pop("awkward")
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert "cannot fill in the prompt" in str(result.error_in_exec)
    assert "Traceback" not in capsys.readouterr().out


@pytest.mark.parametrize("source,words", [
    ("%%serve -o class some-session\nhi", "not a Python variable name"),  # a keyword
    ("%serve status 'a\\x00b'", "NUL"),
    ("%serve logs x --tail -1", "integer >= 0"),
    ("%serve wait x --timeout nan", "seconds > 0"),
    ("%serve launch smollm2-135m --set wait=1", None),  # a BadInput, printed (below)
])
def test_more_bad_input_is_a_usage_error(ip, capsys, source, words):
    source = source.replace("\\x00", "\x00")
    result = run(ip, source)
    err = capsys.readouterr().err
    if words is None:
        assert result.error_in_exec is None and "unknown override 'wait'" in err
    else:
        assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
        assert words in str(result.error_in_exec)
    assert "Traceback" not in err


def test_files_the_user_names_fail_with_a_message(ip, capsys, tmp_path):
    """bench --out under a regular file: an OSError from mkdir, printed, not a traceback."""
    (tmp_path / "file").write_text("x")
    result = run(ip, f"%serve bench nosuch --out {tmp_path}/file/sub")
    captured = capsys.readouterr()
    assert result.error_in_exec is None and result.result is None
    assert "hpcserve: Not a directory" in captured.err and "file/sub" in captured.err
    assert "Traceback" not in captured.err + captured.out
