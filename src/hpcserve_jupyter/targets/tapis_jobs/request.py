"""ServeSpec + LaunchRequest -> the submitJob body and the job's secrets file (pure).

Tapis pastes each `appArgs[].arg` into the command line of its own batch script as it is, so
every word of the engine's command is shell-quoted here, placeholders included: the app's
tapisjob_app.sh fills `{HPCSERVE_PORT}`, `{HPCSERVE_API_KEY}`... itself on the node, after
reading the secrets. Secrets, and the recipe's environment, go into the job's env file
(uploaded 0600, quoted by us, read and deleted by the app), never into `appArgs` or
`envVariables`: Tapis keeps both in the job record for anyone listing it, and writes
envVariables into its tapisjob.env with `$` and backquotes left to bash.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import BadInput
from ...spec import API_KEY, has_placeholder, nul_problem
from ..base import LaunchRequest
from .config import TapisJobsConfig, job_may_set

# Tapis job directories: the exec and the output directory are one, so what the engine or the
# job driver writes there (endpoint.json, progress.json, output.jsonl, tapisjob.out) is read
# with getJobOutputDownload while it runs, and archived when it ends.
JOB_DIR = "${JobWorkingDir}/jobs/${JobUUID}"
SESSION_TAG = "hpcserve-session-"
TOOL_TAG = "hpcserve"
JOB_NAME_RE = re.compile(r"[^A-Za-z0-9._-]")
# What Tapis refuses in an appArg (& > < | ; ` and control characters: 400) or rewrites in it
# (`${...}` macros). A word holding any of these travels in the env file instead, and its
# appArg is the placeholder {HPCSERVE_ARG_<i>} that tapisjob_app.sh swaps back.
TAPIS_UNSAFE = re.compile(r"[&><|;`\x00-\x1f\x7f-\x9f]|\$\{")


def app_args(argv: tuple[str, ...]) -> tuple[list[dict[str, str]], dict[str, str]]:
    """(appArgs, env-file values): each word shell-quoted; unsafe words by placeholder."""
    args, spilled = [], {}
    for i, word in enumerate(argv):
        if TAPIS_UNSAFE.search(word):
            spilled[f"HPCSERVE_ARG_{i}"] = word
            word = f"{{HPCSERVE_ARG_{i}}}"
        args.append({"name": f"arg{i}", "arg": shlex.quote(word)})
    return args, spilled


def job_name(prefix: str, name: str, session_id: str) -> str:
    """The Tapis job's name: readable, unique per session, found again after a restart."""
    return f"{prefix}-{JOB_NAME_RE.sub('_', name)[:40]}-{session_id}"


def secret_lines(req: LaunchRequest, env: Mapping[str, str],
                 extra: Mapping[str, str]) -> dict[str, str]:
    """Variable -> value for the job's env file: the recipe's and target's environment, then
    HPCSERVE_<KEY> for each secret, the engine's own variables (spec.secret_env), and `extra`
    (HF_TOKEN...)."""
    values = dict(env)
    values.update({"HPCSERVE_" + re.sub(r"[^A-Z0-9]", "_", k.upper()): v
                   for k, v in req.secrets.items()})
    values.update(req.secret_env())
    values.update(extra)
    return values


def secrets_file(values: Mapping[str, str]) -> str:
    """Shell assignments the app sources (set -a), each value quoted by us: Tapis's own
    tapisjob.env leaves `$`, backquotes and backslashes of a value to bash."""
    for name, value in values.items():
        if "\0" in value or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise BadInput(f"the secret for {name!r} cannot be passed to a job")
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(values.items()))


def container_env(s: TapisJobsConfig, spec_image: str | None, gpus: int) -> dict[str, str]:
    """What tapisjob_app.sh needs to run the engine inside an image (runtime SINGULARITY):
    Tapis's own SINGULARITY runtime runs an image's runscript, which cannot publish the
    endpoint; so the app stays ZIP and execs the engine in the image."""
    if s.runtime != "SINGULARITY":
        return {}
    image = s.image or spec_image
    if not image:
        raise BadInput("runtime SINGULARITY needs an image",
                       hint="set image: in the target (a .sif path or docker:// URI), or use "
                       "a recipe that names one")
    env = {"HPCSERVE_CONTAINER": s.container_command, "HPCSERVE_CONTAINER_IMAGE": image}
    if s.container_binds:
        env["HPCSERVE_CONTAINER_BINDS"] = ",".join(s.container_binds)
    if gpus:
        env["HPCSERVE_CONTAINER_GPU"] = "1"
    return env


@dataclass
class JobPlan:
    """What a launch submits; `body` lacks only what needs the system (secrets path, inputs)."""

    name: str
    body: dict[str, Any]
    secret_values: dict[str, str] = field(repr=False, default_factory=dict)  # the env file
    secrets: list[str] = field(repr=False, default_factory=list)  # what errors never show


def plan(req: LaunchRequest, s: TapisJobsConfig, *, app_version: str,
         hf_token: str | None = None) -> JobPlan:
    """The submitJob body for this launch; every bad value fails here, before any call."""
    spec = req.spec
    if spec.replicas > 1:
        raise BadInput(f"a tapis-jobs session runs one engine, not {spec.replicas} replicas",
                       hint="launch one session per replica, or use a kind: slurm target")
    if spec.nodes > 1 and spec.multinode is not None:
        raise BadInput("a replica spanning nodes is not started through Tapis Jobs yet",
                       hint="use a kind: slurm target for multi-node engines")
    if problem := nul_problem(spec.argv, spec.env_dict()):
        raise BadInput(problem)
    if not re.fullmatch(r"[a-f0-9]{4,32}", req.session_id):
        raise BadInput(f"invalid session id {req.session_id!r}")
    env = {**s.env, **spec.env_dict()}
    for key in env:
        if not job_may_set(key):
            raise BadInput(f"env: {key!r} is not a variable a job may set")
    templated = sorted(k for k, v in env.items() if has_placeholder(v))
    if any(API_KEY in v for v in env.values()):
        raise BadInput("the API key cannot be put into an environment variable's value here",
                       hint="the engine reads it from the variable its backend declares")
    # The recipe's environment goes into the job's 0600 env file, quoted by us; Tapis's
    # envVariables carry only plain values hpcserve controls.
    env_vars = [{"key": "HPCSERVE_PYTHON", "value": s.python},
                 {"key": "HPCSERVE_BIND_HOST", "value": s.bind_host},
                 {"key": "HPCSERVE_SESSION_ID", "value": req.session_id}]
    if spec.base_port is not None:
        env_vars.append({"key": "HPCSERVE_PORT", "value": str(spec.base_port)})
    if templated:
        env_vars.append({"key": "HPCSERVE_TEMPLATED_ENV", "value": " ".join(templated)})
    name = job_name(s.job_prefix, req.name, req.session_id)
    options = list(s.scheduler_options)
    if s.allocation:
        options.append(f"--account={s.allocation}")
    if spec.gpus:
        options.append(f"--gres=gpu:{spec.gpus}")
    minutes = s.max_minutes or max(1, -(-spec.time_s // 60))
    args, spilled = app_args(spec.argv)
    body: dict[str, Any] = {
        "name": name,
        "appId": s.app_id,
        "appVersion": app_version,
        "description": f"hpcserve-jupyter {'job' if req.files else 'session'} {req.name}",
        "execSystemId": s.system_id,
        "execSystemExecDir": JOB_DIR,
        "execSystemInputDir": JOB_DIR,
        "execSystemOutputDir": JOB_DIR,
        "maxMinutes": minutes,
        "nodeCount": s.nodes or spec.nodes,
        "coresPerNode": s.cores_per_node or spec.cpus,
        "memoryMB": s.memory_mb or spec.memory_mb,
        "tags": [TOOL_TAG, SESSION_TAG + req.session_id],
        "parameterSet": {
            "appArgs": args,
            "envVariables": env_vars,
            "schedulerOptions": [{"name": f"opt{i}", "arg": o} for i, o in enumerate(options)],
        },
    }
    if s.queue:
        body["execSystemLogicalQueue"] = s.queue
    if s.archive_system_id:
        body["archiveSystemId"] = s.archive_system_id
    extra = {"HF_TOKEN": hf_token} if hf_token else {}
    extra.update(container_env(s, spec.image, spec.gpus))
    return JobPlan(name=name, body=body,
                   secret_values={**spilled, **secret_lines(req, env, extra)},
                   secrets=[v for v in (*req.secrets.values(), hf_token) if v])
