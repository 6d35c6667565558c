"""R6 helpers: the hostile values, the sandbox of canaries and probes, and the outcome tally.

Every hostile value embeds a command that creates its own canary file (`<canary dir>/<name>`)
if any shell ever runs it. The probe stands in for every program hpcserve starts (engines,
`apptainer`/`singularity`, an interpreter at a hostile path): it writes what it was given
(argv, environment) as JSON and, for a container runtime, execs the command inside the
"container", as the real runtime would. Engines never need to load a model for this: by the time
the probe runs, every shell expansion has happened.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANARY = "@CANARY@"
PYTHON_BACKENDS = ("llama-cpp", "vllm", "sglang")  # argv[0] is {HPCSERVE_PYTHON}
PROGRAM_BACKENDS = ("tgi", "transformers", "trtllm")  # argv[0] is the engine's own program
VECTOR_BACKENDS = ("chroma", "qdrant")
ALL_BACKENDS = PYTHON_BACKENDS + PROGRAM_BACKENDS + VECTOR_BACKENDS
PROGRAMS = ("text-generation-launcher", "transformers", "trtllm-serve", "chroma", "qdrant")
RUNTIMES = ("apptainer", "singularity")
LONGEST_PATH = 3500  # PATH_MAX is 4096: longer values cannot be file names


@dataclass(frozen=True)
class Hostile:
    name: str
    template: str
    # Runs its canary command when pasted into a shell line unquoted, in '...' or in "..."
    # (the positive control); False for values aimed at other parsers (sbatch) or inert ones.
    naive_fires: bool = True

    def value(self, canary_dir: Path) -> str:
        return self.template.replace(CANARY, str(canary_dir / self.name))


HOSTILE: tuple[Hostile, ...] = (
    Hostile("command-substitution", f"$(touch {CANARY})"),
    Hostile("backticks", f"`touch {CANARY}`"),
    Hostile("semicolon", f"x; touch {CANARY}"),
    Hostile("and-or-pipe-background",
            f"x && touch {CANARY} || touch {CANARY} | touch {CANARY} & touch {CANARY}"),
    Hostile("redirection", f"x >{CANARY} 2>{CANARY}"),
    Hostile("single-quote-breakout", f"' ; touch {CANARY}; '"),
    Hostile("double-quote-breakout", f'" ; touch {CANARY}; "'),
    Hostile("parameter-expansion", f"${{R6:=$(touch {CANARY})}} $HOME ~ * ?"),
    Hostile("newline", f"x\ntouch {CANARY}"),
    Hostile("backslash-newline", f"x\\\n; touch {CANARY}"),
    Hostile("trailing-newline", "r6\n", naive_fires=False),  # `$` in a Python regex allows it
    Hostile("sbatch-directive", f"x\n#SBATCH --output={CANARY}", naive_fires=False),
    Hostile("format-and-placeholders",
            "%s %n %j {} {0} {model} %(x)s {HPCSERVE_PORT}:{HPCSERVE_HOST}"
            f"$(touch {CANARY})"),
    Hostile("control-characters", f"a\tb\rc\x1b[31md\x07\x7f\x01;touch {CANARY}"),
    # bash refuses a script holding a NUL ("cannot execute binary file"): no naive control.
    Hostile("nul-byte", f"a\x00$(touch {CANARY})", naive_fires=False),
    Hostile("unicode-separators", f"\u00e9\u2713\u2028\u0085;touch {CANARY}"),
    Hostile("long", "A" * 3000 + f"$(touch {CANARY})"),
    Hostile("huge", "B" * 50_000 + f"`touch {CANARY}`"),
)

NAIVE_CONTEXTS = ("echo {v}\n", "echo '{v}'\n", 'echo "{v}"\n', "X={v}\n")


def path_legal(value: str) -> bool:
    """Whether `value` can be part of a file name (no NUL, short enough for PATH_MAX)."""
    return "\0" not in value and len(value.encode()) < LONGEST_PATH


def as_path(base: Path, value: str) -> Path:
    """A path under `base` spelling `value` literally ('/' separates directories; parts are cut
    to 200 bytes so each stays a legal file name)."""
    parts: list[str] = []
    for piece in value.split("/"):
        while len(piece.encode()) > 200:
            parts.append(piece[:200])
            piece = piece[200:]
        parts.append(piece)
    return Path(str(base) + "/" + "/".join(parts))


PROBE = '''#!{python}
"""R6 probe: records argv and environment; a container runtime then runs the command."""
import json, os, sys
if len(sys.argv) > 1 and sys.argv[1] == "-c":  # free_port and the job's port probe
    os.execv({python!r}, [{python!r}, *sys.argv[1:]])
name = os.path.basename(sys.argv[0])
kind = "container" if name in {runtimes!r} else "engine"
sid = os.environ.get("HPCSERVE_SESSION_ID", "none")
path = os.path.join({out!r}, f"{{sid}}-{{kind}}-{{os.getpid()}}.json")
with open(path + ".tmp", "w") as fh:
    json.dump({{"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd()}}, fh)
os.replace(path + ".tmp", path)
if kind == "container":
    args = sys.argv[2:]  # after "exec"
    while args and args[0] in ("--nv", "--bind"):
        args = args[2:] if args[0] == "--bind" else args[1:]
    command = args[1:]  # after the image
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"r6 probe: cannot run {{command[0][:60]!r}}: {{exc.strerror}}", file=sys.stderr)
        sys.exit(127)
sys.exit(3)
'''

BASH_ENV = """# R6: `module` for the job script (sbatch --export=...,BASH_ENV=this file)
module() {{ printf '%s\\0' "$@" >> "{out}/modules-${{SLURM_JOB_ID:-none}}.bin"; }}
"""


class Sandbox:
    """A fresh directory the cluster's user can use: canary/, control/, out/, bin/, py/."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hpcserve-r6-", dir="/tmp"))
        self.root.chmod(0o755)
        self.canary = self._dir("canary", 0o777)
        self.control = self._dir("control", 0o777)
        self.out = self._dir("out", 0o777)
        self.bin = self._dir("bin", 0o755)
        self.py = self._dir("py", 0o755)
        self.probe = self.bin / "probe"
        self.probe.write_text(PROBE.format(python=sys.executable, runtimes=RUNTIMES,
                                           out=str(self.out)))
        self.probe.chmod(0o755)
        for name in (*PROGRAMS, *RUNTIMES):
            (self.bin / name).symlink_to(self.probe)
        self.bash_env = self.root / "bashenv.sh"
        self.bash_env.write_text(BASH_ENV.format(out=self.out))
        self.bash_env.chmod(0o644)
        self.values = {h.name: h.value(self.canary) for h in HOSTILE}
        self.control_values = {h.name: h.value(self.control) for h in HOSTILE}

    def _dir(self, name: str, mode: int) -> Path:
        path = self.root / name
        path.mkdir()
        path.chmod(mode)
        return path

    def python_for(self, index: int, value: str) -> str:
        """An interpreter path spelling `value`: the probe, reachable there (path-legal
        values), else the value itself, which no file can have."""
        if not path_legal(value):
            return value
        path = as_path(self.py / str(index), value) / "probe"
        os.makedirs(path.parent, mode=0o755, exist_ok=True)
        if not path.is_symlink():
            path.symlink_to(self.probe)
        return str(path)

    def path_env(self) -> str:
        return f"{self.bin}:/usr/local/bin:/usr/bin:/bin"

    def fired(self) -> list[str]:
        return sorted(p.name for p in self.canary.iterdir())

    def records(self, session_id: str) -> dict[str, list[dict[str, Any]]]:
        """What the probes saw for one session, by kind (engine, container)."""
        found: dict[str, list[dict[str, Any]]] = {"engine": [], "container": []}
        for path in self.out.glob(f"{session_id}-*.json"):
            kind = path.name.split("-")[1]
            found[kind].append(json.loads(path.read_text()))
        return found

    def modules(self, job_id: str) -> list[str] | None:
        path = self.out / f"modules-{job_id}.bin"
        if not path.exists():
            return None
        return path.read_bytes().decode("utf-8", "surrogateescape").split("\0")[:-1]

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def naive_fires(value: Hostile, workdir: Path, canary_dir: Path) -> list[str]:
    """The naive contexts (unquoted, '...', "...", an assignment) in which bash runs the
    value's canary command: what an unquoted interpolation would do."""
    fired = []
    target = canary_dir / value.name
    for i, context in enumerate(NAIVE_CONTEXTS):
        target.unlink(missing_ok=True)
        script = workdir / f"naive-{value.name}-{i}.sh"
        script.write_text(context.replace("{v}", value.value(canary_dir)))
        subprocess.run(["bash", str(script)], cwd=workdir, capture_output=True, timeout=30,
                       check=False)
        if target.exists():
            fired.append(context.strip())
    target.unlink(missing_ok=True)
    return fired


@dataclass
class Tally:
    """Outcome of every (target, field, hostile value): rejected / literal / sanitized."""

    outcomes: dict[tuple[str, str, str], str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    parts: set[str] = field(default_factory=set)

    def set(self, target: str, fieldname: str, value: str, outcome: str) -> None:
        key = (target, fieldname, value)
        previous = self.outcomes.get(key)
        assert previous in (None, outcome), f"{key}: {previous} and {outcome}"
        self.outcomes[key] = outcome

    def counts(self) -> Counter[str]:
        return Counter(self.outcomes.values())

    def fields(self) -> list[str]:
        return sorted({f"{t}: {f}" for t, f, _ in self.outcomes})

    def per_field(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter[str]] = {}
        for (t, f, _), outcome in self.outcomes.items():
            out.setdefault(f"{t}: {f}", Counter())[outcome] += 1
        return {k: dict(v) for k, v in sorted(out.items())}
