"""Build the sbatch script of a session: readable, every user value quoted, nothing injected.

The script starts one engine per replica on the allocated node(s), each on a free port with its
own CUDA_VISIBLE_DEVICES slice, writes `endpoint.json` (node and ports) once every engine
listens, and exits with the status of the first engine that ends, stopping the others.
A replica that spans nodes is started the way its backend declares (`ServeSpec.multinode`): on a
Ray cluster it starts first, on every node through srun with each node's rank, or as one MPI
world; the script knows the modes, never the engines.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ...durations import format_duration
from ...spec import (
    API_KEY,
    DIST_PORT,
    HEAD_ADDR,
    HOST,
    JOBDIR,
    NNODES,
    NODE_RANK,
    PORT,
    PYTHON,
    MultiNode,
    ServeSpec,
    env_problem,
    has_placeholder,
    nul_problem,
)

# How each placeholder is written inside the job script.
SHELL_VALUES = {PORT: "${PORT}", HOST: "${BIND_HOST}", PYTHON: "${HPCSERVE_PYTHON}",
                API_KEY: "${HPCSERVE_API_KEY}", JOBDIR: "${WORKDIR}"}
# ... and inside the command each node runs (per-node multi-node launches): the job step
# gives each its rank; the head's address and rendezvous port are exported by the script.
NODE_VALUES = {**SHELL_VALUES, NNODES: "${SLURM_JOB_NUM_NODES}", NODE_RANK: "${SLURM_PROCID}",
               HEAD_ADDR: "${HEAD_IP}", DIST_PORT: "${DIST_PORT}"}
# One task per node over all the job's nodes; with block distribution task 0, the engine's
# rank 0 that serves HTTP, runs on the first node, where this script runs.
ALL_NODES = 'srun --nodes="$SLURM_JOB_NUM_NODES"'
JOB_NAME_RE = re.compile(r"[^A-Za-z0-9._-]")
SBATCH_CHARS = r"A-Za-z0-9_.,:@%+=/&|()\[\]*!-"


@dataclass(frozen=True)
class JobOptions:
    """Target settings that shape the job (validated by the target's config model)."""

    workdir: str  # absolute remote directory of this session
    python: str = "python3"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    reservation: str | None = None
    constraint: str | None = None
    sbatch_extra: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    container_runtime: str | None = None  # apptainer | singularity | None
    container_image: str | None = None
    container_binds: tuple[str, ...] = ()
    gpu_request: str = "gres"  # gres -> --gres=gpu:N ; gpus-per-node -> --gpus-per-node=N
    env: tuple[tuple[str, str], ...] = ()
    bind_host: str = "0.0.0.0"


def shell_word(arg: str, values: Mapping[str, str] = SHELL_VALUES) -> str:
    """One argv element as a shell word: literal text single-quoted, placeholders expanded."""
    parts = re.split("(" + "|".join(re.escape(t) for t in values) + ")", arg)
    out = []
    for part in parts:
        if part in values:
            out.append(f'"{values[part]}"')
        elif part:
            out.append(shlex.quote(part))
    return "".join(out) or "''"


ALLOWED_SBATCH = "letters, digits and _ . , : @ % + = / & | ( ) [ ] * ! -"


def sbatch_value(value: str, what: str) -> str:
    """#SBATCH lines are parsed by sbatch, not a shell: refuse what would break out of them."""
    if any(c in value for c in "\n\r\0") or not value.strip():
        raise ValueError(f"{what} must be one non-empty line of {ALLOWED_SBATCH}")
    if not re.fullmatch(f"[{SBATCH_CHARS}]+", value):
        raise ValueError(f"{what} {_short(value)} contains characters SLURM does not accept "
                         f"there; allowed: {ALLOWED_SBATCH}")
    return value


def _short(value: str, limit: int = 80) -> str:
    """A value for an error message: repr'd, and cut when very long."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} chars)"


def quoted(value: str, what: str) -> str:
    """A literal shell word; a NUL byte (which bash drops from a script) is refused."""
    if "\0" in value:
        raise ValueError(f"{what} contains a NUL byte, which a job script cannot carry")
    return shlex.quote(value)


def env_name(name: str) -> str:
    """An exported name is written unquoted, so it must be a plain variable name."""
    if problem := env_problem(name):
        raise ValueError(f"env: {problem}")
    return name


def job_name(name: str, session_id: str) -> str:
    return f"hpcserve-{JOB_NAME_RE.sub('_', name)[:40]}-{session_id}"


def header(spec: ServeSpec, opts: JobOptions, name: str, session_id: str) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name(name, session_id)}"]
    for flag, value in (("partition", opts.partition), ("account", opts.account),
                        ("qos", opts.qos), ("reservation", opts.reservation),
                        ("constraint", opts.constraint)):
        if value:
            lines.append(f"#SBATCH --{flag}={sbatch_value(value, flag)}")
    lines += [f"#SBATCH --nodes={spec.nodes}", "#SBATCH --ntasks-per-node=1",
              f"#SBATCH --cpus-per-task={spec.cpus}", f"#SBATCH --mem={spec.memory_mb}M",
              f"#SBATCH --time={format_duration(spec.time_s)}"]
    if spec.gpus:
        if opts.gpu_request == "gpus-per-node":
            lines.append(f"#SBATCH --gpus-per-node={spec.gpus}")
        else:
            lines.append(f"#SBATCH --gres=gpu:{spec.gpus}")
    out = sbatch_value(opts.workdir, "workdir") + "/slurm-%j.out"
    lines += [f"#SBATCH --output={out}", f"#SBATCH --error={out}"]
    for extra in opts.sbatch_extra:
        # str.split() below also splits at \r, \v, \x1c... : only printable text is one line.
        if not extra.isprintable() or not extra.startswith("--"):
            raise ValueError(f"extra #SBATCH option {_short(extra)} must be one line starting "
                             f"with -- (options of {ALLOWED_SBATCH}, separated by spaces)")
        lines.append("#SBATCH " + " ".join(_sbatch_words(extra)))
    return lines


def _sbatch_words(extra: str) -> list[str]:
    """The words of one sbatch_extra entry: options, each optionally followed by its value
    (`--constraint a100`). sbatch refuses a stray word only after the job's files are written
    ("Invalid directive found in batch script"), so it is refused here, by name."""
    words = extra.split()
    takes_value = False
    for word in words:
        sbatch_value(word, "extra #SBATCH option")
        if word.startswith("-"):
            takes_value = "=" not in word
        elif takes_value:
            takes_value = False
        else:
            raise ValueError(f"extra #SBATCH option {_short(extra)}: {_short(word)} is neither "
                             "an option nor the value of the option before it")
    return words


def engine_command(spec: ServeSpec, opts: JobOptions, *, launcher: Sequence[str] = (),
                   tail: Sequence[str] = (), values: Mapping[str, str] | None = None) -> str:
    """The engine's command line as shell words, inside the container when one is set;
    `launcher` goes before the engine (inside the container), `tail` after its arguments,
    `values` writes the placeholders (SHELL_VALUES when None)."""
    argv = (*launcher, *spec.argv, *tail)
    problem = nul_problem(argv, {})
    if problem:
        raise ValueError(problem)
    words = [shell_word(a) if values is None else shell_word(a, values) for a in argv]
    if opts.container_runtime and opts.container_image:
        prefix = [quoted(opts.container_runtime, "container.runtime"), "exec"]
        if spec.gpus:
            prefix.append("--nv")
        for bind in opts.container_binds:
            prefix += ["--bind", quoted(bind, "container.binds")]
        prefix.append(quoted(opts.container_image, "the container image"))
        words = prefix + words
    return " ".join(words)


def build(spec: ServeSpec, opts: JobOptions, *, name: str, session_id: str,
          secret_env: Sequence[str] = ()) -> str:
    """The whole sbatch script. `secret_env` names variables read from the 0600 secrets file."""
    lines = header(spec, opts, name, session_id)
    lines += ["# Generated by hpcserve-jupyter. Values from recipes and configs are quoted.",
              "set -uo pipefail", f"WORKDIR={quoted(opts.workdir, 'workdir')}", 'cd "$WORKDIR"']
    for module in opts.modules:
        lines.append(f"module load {quoted(module, 'modules')}")
    for key, value in sorted(_env(spec, opts).items()):
        if not has_placeholder(value):  # the others are set per replica (port, host)
            lines.append(f"export {key}={quoted(value, f'env {key}')}")
    lines += [f"export HPCSERVE_PYTHON={quoted(opts.python, 'python')}",
              f"export HPCSERVE_SESSION_ID={quoted(session_id, 'session id')}",
              f"BIND_HOST={quoted(opts.bind_host, 'bind_host')}"]
    # Secrets come from a file only the user can read, never from the script text.
    lines.append('if [ -f "$WORKDIR/secrets.env" ]; then set -a; . "$WORKDIR/secrets.env"; '
                 "set +a; fi")
    for var, key in spec.secret_env:
        lines.append(f'export {var}="${{{secret_var(key)}:-}}"')
    lines += _gpu_slices(spec)
    lines += _runtime(spec, opts)
    return "\n".join(lines) + "\n"


def _env(spec: ServeSpec, opts: JobOptions) -> dict[str, str]:
    """The job's environment (the recipe's wins over the target's), names and values checked."""
    env = {env_name(k): v for k, v in {**dict(opts.env), **spec.env_dict()}.items()}
    problem = nul_problem((), env)
    if problem:
        raise ValueError(problem)
    return env


def _gpu_slices(spec: ServeSpec) -> list[str]:
    if not spec.gpus or spec.nodes > 1:
        return ["GPU_SLICES=()"]
    per = spec.gpus_per_replica or spec.gpus
    return [
        "# This job's GPUs, split into one slice per replica.",
        'IFS=, read -r -a ALL_GPUS <<< "${CUDA_VISIBLE_DEVICES:-}"',
        "GPU_SLICES=()",
        f"for ((r = 0; r < {spec.replicas}; r++)); do",
        f'  GPU_SLICES+=("$(IFS=,; echo "${{ALL_GPUS[*]:$((r * {per})):{per}}}")")',
        "done",
    ]


def _runtime(spec: ServeSpec, opts: JobOptions) -> list[str]:
    multinode = spec.multinode
    cmd = _replica_command(spec, opts, multinode)
    # Values naming the port or host (engines configured by environment) differ per replica.
    per_replica = [f"    export {k}={shell_word(v)}" for k, v in sorted(_env(spec, opts).items())
                   if has_placeholder(v)]
    base = "" if spec.base_port is None else str(spec.base_port)
    lines = [
        f"REPLICAS={spec.replicas}",
        f"BASE_PORT={base}",
        "NODE=$(hostname)",
        "free_port() {",
        '  "$HPCSERVE_PYTHON" -c \'import socket; s = socket.socket(); s.bind(("", 0)); '
        "print(s.getsockname()[1])'",
        "}",
        "PROBE='import socket, sys; "
        "socket.create_connection((\"127.0.0.1\", int(sys.argv[1])), 1)'",
        "PIDS=()",
        "PORTS=()",
        "stop_all() { for p in \"${PIDS[@]}\"; do kill -TERM \"$p\" 2>/dev/null; done; }",
        "trap 'stop_all; wait; exit 143' TERM INT",
    ]
    if multinode is not None:
        lines += _multinode_setup(multinode)
    lines += [
        'for ((r = 0; r < REPLICAS; r++)); do',
        '  if [ -n "$BASE_PORT" ]; then PORT=$((BASE_PORT + r)); else PORT=$(free_port); fi',
        '  PORTS+=("$PORT")',
        '  LOG="$WORKDIR/engine.log"; [ "$r" -gt 0 ] && LOG="$WORKDIR/engine-$r.log"',
        "  (",
        '    if [ "${#GPU_SLICES[@]}" -gt 0 ]; then',
        '      export CUDA_VISIBLE_DEVICES="${GPU_SLICES[$r]}"',
        "    fi",
        '    echo "hpcserve: replica $r on $NODE:$PORT"'
        ' "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-}"',
        *per_replica,
        *(["    export PORT"] if multinode is not None and multinode.mode == "per-node" else []),
        f"    exec {cmd}",
        '  ) >> "$LOG" 2>&1 &',
        '  PIDS+=("$!")',
        "done",
        "# Publish the endpoint once every engine listens (or give up if one dies first).",
        "(",
        '  for port in "${PORTS[@]}"; do',
        '    until "$HPCSERVE_PYTHON" -c "$PROBE" "$port" 2>/dev/null; do sleep 0.5; done',
        "  done",
        '  PORT_LIST=$(IFS=,; echo "${PORTS[*]}")',
        '  printf \'{"node": "%s", "ports": [%s]}\\n\' "$NODE" "$PORT_LIST" \\',
        '    > "$WORKDIR/endpoint.json.tmp"',
        '  mv "$WORKDIR/endpoint.json.tmp" "$WORKDIR/endpoint.json"',
        ") &",
        "WATCHER=$!",
        "# Wait for the first engine to end (portable: no `wait -n PID` before bash 5.1).",
        "CODE=",
        'while [ -z "$CODE" ]; do',
        '  for p in "${PIDS[@]}"; do',
        '    if ! kill -0 "$p" 2>/dev/null; then wait "$p"; CODE=$?; break; fi',
        "  done",
        '  [ -z "$CODE" ] && sleep 1',
        "done",
        'echo "hpcserve: an engine exited with code $CODE; stopping the others"',
        "kill \"$WATCHER\" 2>/dev/null",
        "stop_all",
        "wait",
        'echo "$CODE" > "$WORKDIR/exit_code"',
        "exit \"$CODE\"",
    ]
    return lines


def _replica_command(spec: ServeSpec, opts: JobOptions, multinode: MultiNode | None) -> str:
    """What each replica's subshell execs: the engine, or the job step that starts it on
    every node (a replica spanning nodes spans them all: one endpoint node per job)."""
    if multinode is None or multinode.mode == "ray":
        return engine_command(spec, opts)
    if multinode.mode == "none":
        raise ValueError(f"backend {spec.backend!r} cannot run one replica over several nodes")
    if spec.replicas > 1:
        raise ValueError(f"backend {spec.backend!r} runs a replica over nodes only as the "
                         f"job's one replica, not {spec.replicas}: give it all the job's GPUs "
                         "(gpu_per_replica = gpus x nodes)")
    if multinode.mode == "mpi":
        return (f"{ALL_NODES} --ntasks-per-node={max(1, spec.gpus)} --mpi=pmix "
                + engine_command(spec, opts, launcher=multinode.launcher))
    # per-node: each task's own shell fills in its rank, so the command is quoted once more.
    inner = engine_command(spec, opts, tail=multinode.node_args, values=NODE_VALUES)
    return f"{ALL_NODES} --ntasks-per-node=1 bash -c {shlex.quote(inner)}"


def _multinode_setup(multinode: MultiNode) -> list[str]:
    """What a replica spanning nodes needs before it starts."""
    why = f" ({multinode.note})" if multinode.note else ""
    if multinode.mode == "ray":
        return _ray_head(why)
    if multinode.mode == "mpi":
        return [f"# Multi-node: one MPI world, a rank per GPU on every node{why}."]
    return [
        f"# Multi-node: the engine starts on every node, told its rank and the head{why}.",
        'HEAD_IP=$(hostname -I | awk \'{print $1}\')',
        "DIST_PORT=$(free_port)",
        "export HEAD_IP DIST_PORT BIND_HOST",
    ]


def _ray_head(why: str) -> list[str]:
    """Multi-node: a Ray head on this (first) node, one worker per other node through srun."""
    return [
        f"# Multi-node: Ray head here, workers on the other nodes{why}.",
        'HEAD_IP=$(hostname -I | awk \'{print $1}\')',
        "RAY_PORT=$(free_port)",
        'RAY="$(dirname "$HPCSERVE_PYTHON")/ray"; [ -x "$RAY" ] || RAY=ray',
        '"$RAY" start --head --node-ip-address="$HEAD_IP" --port="$RAY_PORT" --block &',
        "PIDS+=(\"$!\")",
        "sleep 5",
        'srun --nodes=$((SLURM_JOB_NUM_NODES - 1)) --ntasks-per-node=1 --exclude="$NODE" '
        '"$RAY" start --address="$HEAD_IP:$RAY_PORT" --block &',
        "PIDS+=(\"$!\")",
        "sleep 5",
    ]


def secret_var(key: str) -> str:
    """The variable a secret travels in inside the job: api_key -> HPCSERVE_API_KEY."""
    return "HPCSERVE_" + re.sub(r"[^A-Z0-9]", "_", key.upper())


def parse_endpoint(text: str) -> tuple[str, list[int]]:
    data = json.loads(text)
    return str(data["node"]), [int(p) for p in data["ports"]]


def secrets_file(values: Mapping[str, str]) -> str:
    """The secrets.env the job sources: shell-quoted assignments, written with mode 0600."""
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(values.items()))
