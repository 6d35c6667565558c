"""R6 (GitHub issue 8): shell metacharacters, newlines, quotes, NUL bytes and very long values
in every field that reaches a shell or a generated script execute nothing.

Each hostile value carries a command creating its own canary file (r6_cases.HOSTILE). Every
(field, value) pair must end one of two ways: refused before anything runs, with an error that
names the field and says what it allows; or passed literally, as seen where it lands: by a
probe standing in for the engine (argv, environment), for `apptainer`/`singularity` (image,
binds) and for `module` (a BASH_ENV function), on the real SLURM node in jobs submitted through
the real sshd, and by the same probe on the local target. The canary directory is checked once
every job has really run. Positive controls show the check can fail: each value fires when a
shell interpolates it naively, and a job whose quoting is deliberately broken creates its
canaries on the node.
"""

from __future__ import annotations

import contextlib
import copy
import os
import posixpath
import pwd
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from r6_cases import (
    ALL_BACKENDS,
    HOSTILE,
    PROGRAM_BACKENDS,
    PYTHON_BACKENDS,
    RUNTIMES,
    VECTOR_BACKENDS,
    Sandbox,
    Tally,
    naive_fires,
    path_legal,
)

from conftest import marked_processes, record
from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.errors import BadInput, HpcserveError, LaunchError
from hpcserve_jupyter.recipes import Catalog, validate_recipe
from hpcserve_jupyter.resolve import resolve as resolve_spec
from hpcserve_jupyter.spec import (
    API_KEY,
    HOST,
    PORT,
    PYTHON,
    ServeSpec,
    nul_problem,
    render,
    render_argv,
    render_env,
)
from hpcserve_jupyter.targets import make_target
from hpcserve_jupyter.targets.base import LaunchRequest
from hpcserve_jupyter.targets.slurm import script
from hpcserve_jupyter.targets.slurm.connection import SSHConnection

pytestmark = [pytest.mark.timeout(300)]

RECIPES = {
    "r6-llm": """\
name: r6-llm
category: inference
model: org/r6-model
backends: [llama-cpp, vllm, sglang, tgi, transformers, trtllm]
resources: {gpus: 0, cpus: 1, memory: 100M, time: 5m}
""",
    "r6-vdb": """\
name: r6-vdb
category: vector-db
backends: [chroma, qdrant]
resources: {gpus: 0, cpus: 1, memory: 100M, time: 5m}
""",
}
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
RAN = {"COMPLETED", "FAILED"}  # a job that started and ended by itself (the probe exits 3)
MODES = ("direct", "container-target", "container-recipe")
PLAIN_IMAGE = "/r6/plain.sif"
PLAIN_BIND = "/r6/plain"
PLAIN_MODULE = "r6/plain"
JOB_WAIT = 150.0
# Canaries the control job (quoting broken) must create on the node: unquoted in the engine's
# command line (the others there would be syntax errors or run after `exec`), and one line
# appended to the #SBATCH header.
FIRED_BY_BROKEN_QUOTING = {"command-substitution", "backticks", "redirection",
                           "parameter-expansion", "long", "sbatch-directive"}


def recipe_for(backend: str) -> str:
    return "r6-vdb" if backend in VECTOR_BACKENDS else "r6-llm"


def uses_model(backend: str) -> bool:
    return backend not in VECTOR_BACKENDS


# ---------------------------------------------------------------- the fields

# Recipe fields set per launch (the same validation as in a recipe file): value, backend ->
# overrides. Each lands in the engine's argv or environment, or in the job's header.
OVERRIDE_FIELDS: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "model": lambda v, b: {"model": v},
    "engine_args value": lambda v, b: {"engine_args.r6-value": v},
    "engine_args list item": lambda v, b: {"engine_args.r6-list": [v, "plain"]},
    "env value (recipe)": lambda v, b: {"env.R6_RECIPE_ENV": v},
    "served_model_name": lambda v, b: {"served_model_name": v},
    "images (recipe)": lambda v, b: {f"images.{b}": v},
    "resources.memory": lambda v, b: {"memory": v},
    "resources.time": lambda v, b: {"time": v},
    "resources.cpus": lambda v, b: {"cpus": v},
    "replicas.base_port": lambda v, b: {"port": v},
}
# Recipe fields that are names (mapping keys, the recipe's own name): a whole recipe each.
STRUCTURE_FIELDS: dict[str, Callable[[str], dict[str, Any]]] = {
    "recipe name": lambda v: {"name": v},
    "engine_args key": lambda v: {"engine_args": {"llama-cpp": {v: "1"}}},
    "env name (recipe)": lambda v: {"env": {v: "1"}},
}
# SLURM target settings (targets.yaml): value, python path for it -> config patch.
SLURM_CONFIG_FIELDS: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "partition": lambda v, p: {"partition": v},
    "account": lambda v, p: {"account": v},
    "qos": lambda v, p: {"qos": v},
    "reservation": lambda v, p: {"reservation": v},
    "constraint": lambda v, p: {"constraint": v},
    "sbatch_extra": lambda v, p: {"sbatch_extra": [f"--comment={v}"]},
    "modules": lambda v, p: {"modules": [v, PLAIN_MODULE]},
    "container.runtime": lambda v, p: {"container": {"runtime": v, "image": PLAIN_IMAGE}},
    "container.image": lambda v, p: {"container": {"runtime": "apptainer", "image": v}},
    "container.binds": lambda v, p: {"container": {"runtime": "apptainer", "image": PLAIN_IMAGE,
                                                   "binds": [v, PLAIN_BIND]}},
    "workdir": lambda v, p: {"workdir": f"~/.hpcserve-r6/{v}"},
    "python": lambda v, p: {"python": p},
    "env name (target)": lambda v, p: {"env": {v: "1"}},
    "env value (target)": lambda v, p: {"env": {"R6_TARGET_ENV": v}},
    "bind_host": lambda v, p: {"bind_host": v},
}
LOCAL_CONFIG_FIELDS: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "python": lambda v, p: {"python": p},
    "env name (target)": lambda v, p: {"env": {v: "1"}},
    "env value (target)": lambda v, p: {"env": {"R6_TARGET_ENV": v}},
    "host": lambda v, p: {"host": v},
}
LOCAL_OVERRIDE_FIELDS = ("model", "engine_args value", "engine_args list item",
                         "env value (recipe)")


def merged(base: dict[str, Any], *patches: dict[str, Any]) -> dict[str, Any]:
    """A target config with patches applied: env and container merge, sbatch_extra appends."""
    out = copy.deepcopy(base)
    for patch in patches:
        for key, value in patch.items():
            if key in ("env", "container"):
                out[key] = {**out.get(key, {}), **value}
            elif key == "sbatch_extra":
                out[key] = [*out.get(key, []), *value]
            else:
                out[key] = value
    return out


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox()
    yield box
    box.remove()


@pytest.fixture(scope="module")
def tally() -> Iterator[Tally]:
    """Collects every outcome; records the R6 figures once all parts of the module ran."""
    t = Tally()
    started = time.monotonic()
    yield t
    if t.parts >= {"naive", "ssh", "slurm", "local"}:
        counts = t.counts()
        record("R6", fields_checked=len(t.fields()), hostile_values=len(HOSTILE),
               combinations=len(t.outcomes),
               rejected_with_clear_error=counts["rejected"],
               passed_literally=counts["literal"], sanitized=counts["sanitized"],
               canary_executions=0, targets=["slurm via real sshd", "local"],
               per_field=t.per_field(), values=[h.name for h in HOSTILE],
               wall_time_s=round(time.monotonic() - started, 1), **t.details)


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    d = tmp_path / "r6-recipes"
    d.mkdir()
    for name, text in RECIPES.items():
        (d / f"{name}.yaml").write_text(text)
    return Catalog([d])


# ---------------------------------------------------------------- positive control (naive)


def test_each_value_fires_when_a_shell_interpolates_it_naively(
        sandbox: Sandbox, tmp_path: Path, tally: Tally) -> None:
    """The values are really hostile and the canary check sees it: pasted into a bash line
    without quoting care, each one runs its canary command in at least one context."""
    fired = {h.name: naive_fires(h, tmp_path, sandbox.control) for h in HOSTILE
             if h.naive_fires}
    assert all(fired.values()), {k: v for k, v in fired.items() if not v}
    assert sandbox.fired() == []
    tally.details["naive_contexts_firing"] = {k: len(v) for k, v in fired.items()}
    tally.parts.add("naive")


# ---------------------------------------------------------------- remote commands (real sshd)


def test_remote_commands_take_every_value_literally(cluster: Any, sandbox: Sandbox,
                                                    tally: Tally) -> None:
    """Every remote command (mkdir, chmod, sbatch --chdir=..., squeue --name=...) goes through
    SSHConnection.run: each argument arrives as one literal word, with and without a login
    shell; a NUL byte, which a command line cannot carry, is refused with BadInput."""
    conn = SSHConnection(cluster.settings())
    try:
        for login_shell in (False, True):
            fieldname = f"remote command argument (login_shell={login_shell})"
            carried = {h.name: sandbox.values[h.name] for h in HOSTILE
                       if "\0" not in sandbox.values[h.name]}
            result = conn.run(["printf", "%s\\0", *carried.values()], login_shell=login_shell,
                              timeout=60)
            assert result.stdout.split("\0")[:-1] == list(carried.values())
            for name in carried:
                tally.set("ssh", fieldname, name, "literal")
            for h in HOSTILE:
                if h.name in carried:
                    continue
                with pytest.raises(BadInput, match=r"argument 1 of 'printf' contains a NUL"):
                    conn.run(["printf", sandbox.values[h.name]], login_shell=login_shell)
                tally.set("ssh", fieldname, h.name, "rejected")
    finally:
        conn.close()
    assert sandbox.fired() == []
    tally.parts.add("ssh")


# ---------------------------------------------------------------- SLURM through the real sshd


@dataclass
class Rejection:
    target: str  # slurm | local
    field: str
    value: str  # hostile value name
    on: str  # target name to launch on
    recipe: str
    backend: str
    overrides: dict[str, Any]
    error: HpcserveError  # what the offline check raised (BadInput; LaunchError on local)


@dataclass
class Job:
    index: int
    value: str  # hostile value name
    mode: str
    backend: str
    recipe: str
    on: str
    config: dict[str, Any]
    overrides: dict[str, Any]
    fields: list[str]  # the fields carrying the hostile value in this job
    name: str | None = None
    session: Any = None
    state: str = ""
    record: dict[str, Any] = field(default_factory=dict)


class Recipes:
    """The module's recipes, plus per-value copies carrying hostile names (an engine flag,
    an environment variable), registered in the catalog the manager uses."""

    def __init__(self, catalog: Catalog) -> None:
        import yaml

        self.catalog = catalog
        self.data = {name: yaml.safe_load(text) for name, text in RECIPES.items()}

    def derive(self, name: str, base: str, patch: dict[str, Any]) -> str:
        data = copy.deepcopy(self.data[base])
        for key, value in patch.items():
            if key == "engine_args":  # the hostile flag for every backend of the recipe
                flags = next(iter(value.values()))
                data["engine_args"] = {b: dict(flags) for b in data["backends"]}
            elif key == "env":
                data["env"] = {**data.get("env", {}), **value}
            else:
                data[key] = value
        self.catalog.recipes[name] = validate_recipe({**data, "name": name})
        return name


def remote_workdir(workdir: str, home: str) -> str:
    """The session directory SlurmTarget._launch derives from `workdir` (before any remote
    command), for the offline check."""
    if workdir.startswith("~"):
        workdir = home + workdir[1:]
    return posixpath.join(posixpath.normpath(workdir), "sessions", "0123abcd")


def slurm_error(catalog: Catalog, recipe: str, backend: str, overrides: dict[str, Any],
                config: dict[str, Any], home: str, name: str = "r6") -> BadInput | None:
    """What a launch with these values would refuse before anything remote, else None: the
    same validation (recipe, overrides, target settings, script) a real launch runs."""
    try:
        spec = resolve_spec(recipe, backend, overrides, catalog=catalog)
        target = make_target("r6-offline", {"r6-offline": config})
        target.render(LaunchRequest(session_id="0123abcd", name=name, spec=spec,
                                    workdir=Path("/nonexistent")),
                      remote_workdir(target.settings.workdir, home))
    except BadInput as exc:
        return exc
    return None


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    out = subprocess.run(["squeue", "--noheader", "--states=all", "-j", ",".join(job_ids),
                          "-o", "%i|%T|%j"], capture_output=True, text=True, check=False)
    return {line.split("|")[0]: line.split("|")[1] for line in out.stdout.splitlines()
            if line.count("|") >= 2}


def squeue_names(job_ids: list[str]) -> dict[str, str]:
    out = subprocess.run(["squeue", "--noheader", "--states=all", "-j", ",".join(job_ids),
                          "-o", "%i|%j"], capture_output=True, text=True, check=False)
    return dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)


def wait_for_jobs(job_ids: list[str], timeout: float) -> dict[str, str]:
    """Final states once every job has ended (completed jobs stay in squeue for MinJobAge)."""
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = squeue_states(job_ids)
        if len(states) == len(job_ids) and all(s in ENDED for s in states.values()):
            return states
        time.sleep(0.5)
    return states


def cancel_jobs(job_ids: list[str]) -> None:
    """Cancel whatever of ours is still queued or running, and wait until it has ended."""
    live = [j for j, s in squeue_states(job_ids).items() if s not in ENDED]
    if live:
        subprocess.run(["scancel", *live], capture_output=True, check=False)
        wait_for_jobs(live, 30)


# Stands for the port (chosen on the node) in expected values: no accepted value holds a NUL.
ANY_PORT = "\0port\0"


def pattern(expected: str) -> re.Pattern[str]:
    """`expected` literally, except that the port may be any number (or empty when the job's
    interpreter cannot run to pick one)."""
    return re.compile(re.escape(expected).replace(re.escape(ANY_PORT), r"\d*"), re.DOTALL)


def assert_argv(actual: list[str], expected: list[str], what: str) -> None:
    assert len(actual) == len(expected), (what, len(actual), len(expected))
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert pattern(e).fullmatch(a), (what, i, a[:200], e[:200])


def sbatch_header(text: str) -> list[str]:
    """The #SBATCH lines sbatch reads: those before the first line that is not a comment."""
    lines = []
    for line in text.splitlines()[1:]:
        if line.strip() and not line.startswith("#"):
            break
        if line.startswith("#SBATCH"):
            lines.append(line)
    return lines


HEADER_OPTIONS = {"job-name", "nodes", "ntasks-per-node", "cpus-per-task", "mem", "time",
                  "output", "error", "partition", "export"}

# What a refusal of each field says: the field's name, then what it allows. Matched against
# the message and hint of the error (case-insensitive).
SBATCH_REFUSAL = (r"(contains characters SLURM does not accept there; allowed: letters, "
                  r"digits|must be one non-empty line of letters, digits)")
NUL_REFUSAL = r"contains a NUL byte"
REFUSALS: dict[str, str] = {
    "recipe name": r"^name: String should match pattern '\^\[a-z0-9\]",
    "engine_args key": r"^engine_args\.llama-cpp\..* is not a flag name; write it as the engine",
    "env name (recipe)": r"env: .* is not an environment variable name \(",
    "session name": r"^invalid session name .*hint: use letters, digits",
    **{f: rf"^target 'r6-rej-{f}-\d+': {f} .*{SBATCH_REFUSAL}"
       for f in ("partition", "account", "qos", "reservation", "constraint")},
    "sbatch_extra": r"^target '[^']+': extra #SBATCH option .*(allowed: letters, digits|must "
                    r"be one line starting with --|neither an option nor the value of the option)",
    "container.runtime": r"container\.runtime: Input should be 'apptainer' or 'singularity'",
    "workdir": rf"^target '[^']+': workdir .*{SBATCH_REFUSAL}",
    "env name (target)": r"^target '[^']+': env: .* is not an environment variable name "
                         r"\(letters, digits and _",
    "served_model_name": r"^invalid override served_model_name=.*should match pattern",
    "resources.memory": r"^invalid override memory=.*is not a size: use '16G' or '512M'",
    "resources.time": r"^invalid override time=.*is not a duration: use '30m'",
    "resources.cpus": r"^invalid override cpus=.*should be a valid integer",
    "replicas.base_port": r"^invalid override port=.*should be a valid integer",
    "model": r"^invalid override model=.*the model must be a hub id, a path",
    "modules": rf"^target '[^']+': modules {NUL_REFUSAL}",
    "container.image": rf"^target '[^']+': the container image {NUL_REFUSAL}",
    "images (recipe)": rf"^target '[^']+': the container image {NUL_REFUSAL}",
    "container.binds": rf"^target '[^']+': container\.binds {NUL_REFUSAL}",
    "python": rf"^target '[^']+': python {NUL_REFUSAL}",
    "bind_host": rf"^target '[^']+': bind_host {NUL_REFUSAL}",
    "env value (target)": rf"^target '[^']+': environment variable 'R6_TARGET_ENV' {NUL_REFUSAL}",
    "env value (recipe)": rf"^invalid override env\b.*R6_RECIPE_ENV {NUL_REFUSAL}",
    "engine_args value": rf"^target '[^']+': the value of --r6-value {NUL_REFUSAL}",
    "engine_args list item": rf"^target '[^']+': the value of --r6-list {NUL_REFUSAL}",
}


def check_refusal(fieldname: str, exc: BadInput) -> None:
    text = f"{exc.message}\nhint: {exc.hint}"
    assert re.search(REFUSALS[fieldname], text, re.IGNORECASE | re.DOTALL), (fieldname, text[:400])


def pick_backend(i: int, mode: str, python_runs: bool, python_ok: bool) -> str:
    """Direct jobs exec the interpreter itself when its path can exist; container jobs cycle
    through all eight engines."""
    if mode == "container-target":
        return ALL_BACKENDS[i % len(ALL_BACKENDS)]
    if mode == "container-recipe":
        return ALL_BACKENDS[(i + 3) % len(ALL_BACKENDS)]
    if python_ok and not python_runs:
        return PROGRAM_BACKENDS[i % len(PROGRAM_BACKENDS)]
    return PYTHON_BACKENDS[i % len(PYTHON_BACKENDS)]


def union(patches: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for patch in patches:
        for key, value in patch.items():
            out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def launch_control(hp: Hpcserve, sandbox: Sandbox) -> Any:
    """The positive control on the node: quoting deliberately broken (argv words pasted as
    they are, one recipe value appended to the #SBATCH header), so the canary check must see
    the control canaries appear once the job ran."""
    fired = sorted(FIRED_BY_BROKEN_QUOTING - {"sbatch-directive"})
    overrides = {f"engine_args.r6-c{k}": sandbox.control_values[name]
                 for k, name in enumerate(fired)}
    real_header = script.header

    def naive_header(*args: Any) -> list[str]:
        return [*real_header(*args),
                f"#SBATCH --comment={sandbox.control_values['sbatch-directive']}"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(script, "shell_word", lambda arg: arg)
        mp.setattr(script, "header", naive_header)
        return hp.launch("r6-llm", backend="llama-cpp", on="r6-control", wait=False,
                         **overrides)


def launch_job(hp: Hpcserve, job: Job, tally: Tally) -> Any:
    if job.name is not None:
        try:
            return hp.launch(job.recipe, backend=job.backend, on=job.on, name=job.name,
                             wait=False, **job.overrides)
        except BadInput as exc:
            check_refusal("session name", exc)
            tally.set("slurm", "session name", job.value, "rejected")
            job.name = None
    return hp.launch(job.recipe, backend=job.backend, on=job.on, wait=False, **job.overrides)


def plan_slurm(sandbox: Sandbox, recipes: Recipes, base: dict[str, Any], home: str,
               configs: dict[str, dict[str, Any]], tally: Tally,
               ) -> tuple[list[Rejection], list[Job]]:
    """Sort every (field, value) into refused (with the error a launch would raise) or
    accepted, and put each value's accepted fields together into one job per mode."""
    catalog = recipes.catalog
    rejections: list[Rejection] = []
    jobs: list[Job] = []
    for i, h in enumerate(HOSTILE):
        v = sandbox.values[h.name]
        py = sandbox.python_for(i, v)
        ok_config: dict[str, dict[str, Any]] = {}
        for fname, make in SLURM_CONFIG_FIELDS.items():
            cfg = merged(base, make(v, py))
            err = slurm_error(catalog, "r6-llm", "llama-cpp", {}, cfg, home)
            if err is None:
                ok_config[fname] = make(v, py)
            else:
                on = f"r6-rej-{slug(fname)}-{i}"
                configs[on] = cfg
                rejections.append(Rejection("slurm", fname, h.name, on, "r6-llm", "llama-cpp",
                                            {}, err))
        ok_overrides: list[str] = []
        for fname, make_override in OVERRIDE_FIELDS.items():
            on = "r6-base-container" if fname == "images (recipe)" else "r6-base"
            overrides = make_override(v, "llama-cpp")
            err = slurm_error(catalog, "r6-llm", "llama-cpp", overrides, configs[on], home)
            if err is None:
                ok_overrides.append(fname)
            else:
                rejections.append(Rejection("slurm", fname, h.name, on, "r6-llm", "llama-cpp",
                                            overrides, err))
        ok_structure: dict[str, dict[str, Any]] = {}
        for fname, make_structure in STRUCTURE_FIELDS.items():
            patch = make_structure(v)
            try:
                if fname == "recipe name":
                    validate_recipe({**recipes.data["r6-llm"], **patch})
                    continue  # accepted: left unclassified, so the coverage check fails
                derived = recipes.derive(f"r6-s{i}-{slug(fname)}", "r6-llm", patch)
            except BadInput as exc:
                check_refusal(fname, exc)
                tally.set("slurm", fname, h.name, "rejected")
                continue
            err = slurm_error(catalog, derived, "llama-cpp", {}, base, home)
            if err is None:
                ok_structure[fname] = patch
            else:
                rejections.append(Rejection("slurm", fname, h.name, "r6-base", derived,
                                            "llama-cpp", {}, err))
        # The job name a session gets (the manager validates session names first).
        text = make_target("r6-offline", {"r6-offline": base}).render(
            LaunchRequest(session_id="0123abcd", name=v, spec=resolve_spec(
                "r6-llm", "llama-cpp", {}, catalog=catalog), workdir=Path("/nonexistent")),
            remote_workdir("~/.hpcserve", home))
        assert f"#SBATCH --job-name={script.job_name(v, '0123abcd')}\n" in text
        assert re.fullmatch(r"hpcserve-[A-Za-z0-9._-]*-0123abcd", script.job_name(v, "0123abcd"))
        tally.set("slurm", "job name (target, without the manager's check)", h.name, "sanitized")

        structure = union(list(ok_structure.values()))
        job_recipes = {b: recipes.derive(f"r6-{i}-{b}", b, structure) for b in RECIPES}
        python_ok = "python" in ok_config
        for mode in MODES:
            backend = pick_backend(i, mode, python_ok and path_legal(v), python_ok)
            patches = [p for f, p in ok_config.items() if not f.startswith("container.")]
            fields = [f for f in ok_config if not f.startswith("container.")]
            fields += list(ok_structure)
            overrides: dict[str, Any] = {}
            for fname in ok_overrides:
                if fname == "images (recipe)" or (fname == "model" and not uses_model(backend)):
                    continue
                overrides.update(OVERRIDE_FIELDS[fname](v, backend))
                fields.append(fname)
            if mode != "direct":
                container: dict[str, Any] = {"runtime": RUNTIMES[i % 2], "binds": [PLAIN_BIND]}
                if "container.binds" in ok_config:
                    container["binds"] = [v, PLAIN_BIND]
                    fields.append("container.binds")
                if mode == "container-target":
                    container["image"] = PLAIN_IMAGE
                    if "container.image" in ok_config:
                        container["image"] = v
                        fields.append("container.image")
                elif "images (recipe)" in ok_overrides:
                    overrides[f"images.{backend}"] = v
                    fields.append("images (recipe)")
                else:
                    overrides[f"images.{backend}"] = PLAIN_IMAGE
                patches.append({"container": container})
            on = f"r6-job-{mode}-{i}"
            configs[on] = merged(base, *patches, {"login_shell": bool(i % 2)})
            jobs.append(Job(i, h.name, mode, backend, job_recipes[recipe_for(backend)], on,
                            configs[on], overrides, fields,
                            name=v if mode == "direct" else None))
    return rejections, jobs


def verify_job(hp: Hpcserve, sandbox: Sandbox, job: Job, state: str, tally: Tally) -> None:
    """The job ran to its end, its script parses, its header holds only our options, and each
    hostile value is exactly what the engine, the container runtime and `module` received."""
    session = hp.status(job.session.id)
    sid, handle = session.id, session.handle
    job_id = handle["job_id"]
    where = f"{job.value}/{job.mode}/{job.backend} (job {job_id})"
    assert state in RAN, (where, state)
    workdir = Path(handle["workdir"])
    text = (workdir / "job.sh").read_text()
    check = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert check.returncode == 0, (where, check.stderr)
    options = {line.split("=", 1)[0].removeprefix("#SBATCH --") for line in sbatch_header(text)}
    assert options <= HEADER_OPTIONS, (where, options)
    assert (workdir / "exit_code").exists(), f"{where}: the script did not run to its end"

    spec = ServeSpec.from_dict(session.spec)
    python = job.config["python"]
    values = {HOST: job.config.get("bind_host", "0.0.0.0"), PYTHON: python,
              API_KEY: hp.manager.api_key(sid), PORT: ANY_PORT}
    engine = [render(a, values) for a in spec.argv]
    env = {k: render(v, values) for k, v in {**job.config["env"], **spec.env_dict()}.items()}
    env["HPCSERVE_PYTHON"] = python
    records = sandbox.records(sid)
    runs = job.backend not in PYTHON_BACKENDS or os.path.exists(python)
    assert len(records["engine"]) == int(runs), (where, len(records["engine"]))
    assert len(records["container"]) == int(job.mode != "direct"), where
    for rec in records["engine"]:
        first = rec["argv"][0] if "/" in engine[0] else os.path.basename(rec["argv"][0])
        assert_argv([first, *rec["argv"][1:]], engine, f"{where}: engine argv")
    for rec in records["container"]:
        container = job.config["container"]
        expected = ["exec", *[w for b in container["binds"] for w in ("--bind", b)],
                    container.get("image") or spec.image, *engine]
        assert os.path.basename(rec["argv"][0]) == container["runtime"], where
        assert_argv(rec["argv"][1:], expected, f"{where}: {container['runtime']} argv")
    for rec in records["engine"] + records["container"]:
        for key, value in env.items():
            assert pattern(value).fullmatch(rec["env"].get(key, "<unset>")), (where, key)
    modules = [w for m in job.config.get("modules", []) for w in ("load", m)]
    assert (sandbox.modules(job_id) or []) == modules, (where, sandbox.modules(job_id))
    if job.name is not None:  # a session name the manager let through
        name = squeue_names([job_id])[job_id]
        assert name == script.job_name(job.name, sid), (where, name)
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name), (where, name)
        tally.set("slurm", "session name", job.value, "sanitized")
    for fname in job.fields:
        tally.set("slurm", fname, job.value, "literal")


def test_slurm_every_field_is_refused_or_literal_on_the_node(
        cluster: Any, slurm_config: dict[str, Any], sandbox: Sandbox, catalog: Catalog,
        tally: Tally) -> None:
    """One job per hostile value and mode (no container; apptainer/singularity with the
    target's image; with the recipe's image), each carrying the value in every field that
    accepts it, submitted through the real sshd and run on the node; every refusal repeated
    on the real launch path. Then, once all jobs ran: no canary, and each value exactly where
    it belongs. A control job with quoting broken on purpose must create its canaries."""
    started = time.monotonic()
    home = pwd.getpwnam(cluster.user).pw_dir
    env = {"PATH": sandbox.path_env(), "R6_OUT": str(sandbox.out)}
    base = merged(slurm_config, {"python": str(sandbox.probe), "env": env,
                                 "sbatch_extra": [f"--export=ALL,BASH_ENV={sandbox.bash_env}"]})
    configs = {"r6-base": base,
               "r6-base-container": merged(base, {"container": {"runtime": "apptainer"}}),
               "r6-control": merged(slurm_config, {"python": str(sandbox.probe), "env": env})}
    recipes = Recipes(catalog)
    rejections, jobs = plan_slurm(sandbox, recipes, base, home, configs, tally)

    hp = Hpcserve(poll_interval=1.0, target_configs=configs, catalog=catalog)
    submitted: list[str] = []
    passed = False
    try:
        control = launch_control(hp, sandbox)
        submitted.append(control.handle["job_id"])
        for job in jobs:
            job.session = launch_job(hp, job, tally)
            submitted.append(job.session.handle["job_id"])
        launched = time.monotonic()
        # Meanwhile: every refusal, on the real launch path, before anything remote.
        for r in rejections:
            with pytest.raises(BadInput) as info:
                hp.launch(r.recipe, backend=r.backend, on=r.on, wait=False, **r.overrides)
            offline = r.error.message.replace("'r6-offline'", repr(r.on))
            assert info.value.message == offline, (r.field, r.value)
            check_refusal(r.field, info.value)
            tally.set("slurm", r.field, r.value, "rejected")
        refused = [s for s in hp.sessions() if not s.handle]
        assert {s.id for s in hp.sessions() if s.handle} == \
            {control.id, *(j.session.id for j in jobs)}
        remote = Path(home, ".hpcserve", "sessions")
        assert not [s.id for s in refused if (remote / s.id).exists()], \
            "a refused launch created its remote directory"

        states = wait_for_jobs(submitted, JOB_WAIT)
        assert all(states.get(j) in ENDED for j in submitted), \
            f"jobs still queued after {JOB_WAIT:.0f} s (is the cluster busy?): {states}"
        ran = time.monotonic()
        assert states[control.handle["job_id"]] in RAN
        fired = sorted(p.name for p in sandbox.control.iterdir())
        assert set(fired) >= FIRED_BY_BROKEN_QUOTING, fired  # the check can fail
        assert sandbox.fired() == [], "a hostile value was executed on the node"
        for job in jobs:
            verify_job(hp, sandbox, job, states[job.session.handle["job_id"]], tally)
        assert sandbox.fired() == []
        passed = True
    finally:
        cancel_jobs(submitted)
        workdirs = [s.handle["workdir"] for s in hp.sessions() if s.handle]
        hp.close()
        if passed:  # else kept for a look at job.sh and the logs
            for workdir in workdirs:
                shutil.rmtree(workdir, ignore_errors=True)
    missing = [(f, h.name) for f in [*OVERRIDE_FIELDS, *STRUCTURE_FIELDS, *SLURM_CONFIG_FIELDS,
                                      "session name"] for h in HOSTILE
               if ("slurm", f, h.name) not in tally.outcomes]
    assert not missing, f"neither refused nor seen literally: {missing}"
    tally.details["slurm"] = {
        "jobs": len(submitted), "job_states": dict(Counter(states.values())),
        "refusals_on_launch_path": len(rejections),
        "seconds_submit_to_all_ended": round(ran - launched, 1),
        "seconds_total": round(time.monotonic() - started, 1)}
    tally.parts.add("slurm")


# ---------------------------------------------------------------- the local target

LOCAL_REFUSALS: dict[str, str] = {
    "python": r"^(target '[^']+': python: must be the path of an interpreter \(non-empty, no NUL"
              r"|the engine program .* was not found on this machine.*set `python:`)",
    "host": r"^target '[^']+': host: .* is not an IP address or host name \(letters, digits",
    "env name (target)": r"^target '[^']+': env: .* is not an environment variable name "
                         r"\(letters, digits and _",
    "env value (target)": rf"^target '[^']+': env: the value of R6_TARGET_ENV {NUL_REFUSAL}",
    "model": REFUSALS["model"],
    "env value (recipe)": REFUSALS["env value (recipe)"],
    "engine_args value": rf"^target '[^']+': the value of --r6-value {NUL_REFUSAL}",
    "engine_args list item": rf"^target '[^']+': the value of --r6-list {NUL_REFUSAL}",
    "engine_args key": REFUSALS["engine_args key"],
    "env name (recipe)": REFUSALS["env name (recipe)"],
}


def local_error(catalog: Catalog, recipe: str, backend: str, overrides: dict[str, Any],
                config: dict[str, Any]) -> HpcserveError | None:
    """What a local launch with these values would refuse before starting anything (recipe
    and settings validation, a NUL byte, a missing program), else None."""
    try:
        spec = resolve_spec(recipe, backend, overrides, catalog=catalog)
        target = make_target("r6-offline", {"r6-offline": config})
        values = {PORT: "1", HOST: target.settings.host, PYTHON: target.settings.python,
                  API_KEY: "key"}
        argv = render_argv(spec, values)
        problem = nul_problem(argv, render_env({**target.settings.env, **spec.env_dict()},
                                               values))
        if problem:
            raise BadInput(problem)
        target._program(argv)  # the check LocalTarget.launch makes before starting anything
    except (BadInput, LaunchError) as exc:
        return exc
    return None


def check_local_refusal(fieldname: str, exc: HpcserveError) -> None:
    text = f"{exc.message}\nhint: {exc.hint}"
    assert re.search(LOCAL_REFUSALS[fieldname], text, re.IGNORECASE | re.DOTALL), \
        (fieldname, text[:400])


def test_local_every_field_is_refused_or_literal(sandbox: Sandbox, catalog: Catalog,
                                                 tally: Tally) -> None:
    """The local target runs engines without any shell (argv lists, an environment mapping):
    the same hostile values reach the engine exactly, or are refused before it starts."""
    started = time.monotonic()
    recipes = Recipes(catalog)
    base = {"kind": "local", "python": str(sandbox.probe), "env": {"R6_OUT": str(sandbox.out)},
            "stop_grace": 2}
    configs: dict[str, dict[str, Any]] = {"r6-local": base}
    rejections: list[Rejection] = []
    plans: list[tuple[int, str, str, str, dict[str, Any], list[str]]] = []
    for i, h in enumerate(HOSTILE):
        v = sandbox.values[h.name]
        py = sandbox.python_for(i, v)
        backend = PYTHON_BACKENDS[i % len(PYTHON_BACKENDS)]
        patches: list[dict[str, Any]] = []
        fields: list[str] = []
        for fname, make in LOCAL_CONFIG_FIELDS.items():
            cfg = merged(base, make(v, py))
            err = local_error(catalog, "r6-llm", backend, {}, cfg)
            if err is None:
                patches.append(make(v, py))
                fields.append(fname)
            else:
                on = f"r6-local-rej-{slug(fname)}-{i}"
                configs[on] = cfg
                rejections.append(Rejection("local", fname, h.name, on, "r6-llm", backend, {},
                                            err))
        overrides: dict[str, Any] = {}
        for fname in LOCAL_OVERRIDE_FIELDS:
            ovr = OVERRIDE_FIELDS[fname](v, backend)
            err = local_error(catalog, "r6-llm", backend, ovr, base)
            if err is None:
                overrides.update(ovr)
                fields.append(fname)
            else:
                rejections.append(Rejection("local", fname, h.name, "r6-local", "r6-llm",
                                            backend, ovr, err))
        structure: list[dict[str, Any]] = []
        for fname in ("engine_args key", "env name (recipe)"):
            patch = STRUCTURE_FIELDS[fname](v)
            try:
                derived = recipes.derive(f"r6-l{i}-{slug(fname)}", "r6-llm", patch)
            except BadInput as exc:
                check_local_refusal(fname, exc)
                tally.set("local", fname, h.name, "rejected")
                continue
            err = local_error(catalog, derived, backend, {}, base)
            if err is None:
                structure.append(patch)
                fields.append(fname)
            else:
                rejections.append(Rejection("local", fname, h.name, "r6-local", derived,
                                            backend, {}, err))
        recipe = recipes.derive(f"r6-l{i}", "r6-llm", union(structure))
        configs[f"r6-local-{i}"] = merged(base, *patches)
        plans.append((i, h.name, backend, recipe, overrides, fields))

    hp = Hpcserve(poll_interval=0.5, target_configs=configs, catalog=catalog)
    home = hp.manager.home
    try:
        sessions = [hp.launch(recipe, backend=backend, on=f"r6-local-{i}", wait=False, **ovr)
                    for i, _, backend, recipe, ovr, _ in plans]
        for r in rejections:
            with pytest.raises((BadInput, LaunchError)) as info:
                hp.launch(r.recipe, backend=r.backend, on=r.on, wait=False, **r.overrides)
            assert type(info.value) is type(r.error), (r.field, r.value, info.value)
            check_local_refusal(r.field, info.value)
            tally.set("local", r.field, r.value, "rejected")
        ended = [hp.wait(s.id, timeout=60) for s in sessions]
        assert all(s.state.terminal for s in ended), [(s.name, s.state) for s in ended]
        assert sandbox.fired() == [], "a hostile value was executed by the local target"
        for s, (i, value, _, _, _, fields) in zip(ended, plans, strict=True):
            config = configs[f"r6-local-{i}"]
            spec = ServeSpec.from_dict(s.spec)
            values = {PORT: str(s.handle["replicas"][0]["port"]), HOST: "127.0.0.1",
                      PYTHON: config["python"], API_KEY: hp.manager.api_key(s.id)}
            records = sandbox.records(s.id)
            assert len(records["engine"]) == 1, (value, s.reason, s.log_tail)
            rec = records["engine"][0]
            assert rec["argv"] == render_argv(spec, values), value
            env = render_env({**config["env"], **spec.env_dict()}, values)
            assert {k: rec["env"].get(k) for k in env} == env, value
            assert s.exit_code == 3, (value, s.reason)  # the probe's own exit
            for fname in fields:
                tally.set("local", fname, value, "literal")
    finally:
        for s in hp.sessions(live_only=True):
            with contextlib.suppress(HpcserveError):
                hp.stop(s.id)
        hp.close()
    assert not marked_processes(home), "a local engine was left running"
    every = [*LOCAL_CONFIG_FIELDS, *LOCAL_OVERRIDE_FIELDS, "engine_args key", "env name (recipe)"]
    missing = [(f, h.name) for f in every for h in HOSTILE
               if ("local", f, h.name) not in tally.outcomes]
    assert not missing, f"neither refused nor seen literally: {missing}"
    tally.details["local"] = {"launches": len(plans), "refusals_on_launch_path": len(rejections),
                              "seconds_total": round(time.monotonic() - started, 1)}
    tally.parts.add("local")
