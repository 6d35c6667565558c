"""The local target: engines run as child processes of this machine, one process group each.

Each replica runs under `local_runner` (which records the exit code) in its own process group
and session, so it outlives the manager and a stop signals the whole group. A restarted manager
recognises its processes by pid *and* start time, and never signals a pid that was reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import BadInput, LaunchError
from ..spec import HOST, JOBDIR, PORT, PYTHON, env_problem, nul_problem, render_argv, render_env
from ..weights.cache import cached_snapshot, hub_cache_dir
from . import gpus as gpu_inventory
from .base import LaunchRequest, Phase, SecretSetting, Target, TargetStatus, job_file_name

SESSION_MARK = "HPCSERVE_SESSION_ID"
LOG_TAIL_LINES = 40
HOST_RE = re.compile(r"[A-Za-z0-9.:_][A-Za-z0-9.:_-]*")


class LocalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    python: str | None = Field(None, description="interpreter for Python engines (default: "
                               "ours); engine programs beside it are found before PATH's")
    host: str = Field("127.0.0.1", description="address engines listen on")
    gpus: list[str | int] | None = Field(None, description="GPU ids; default: nvidia-smi's list")
    gpu_classes: dict[str, list[str | int]] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    stop_grace: float = Field(10.0, ge=0, le=600, description="seconds between SIGTERM and SIGKILL")
    offline: bool = Field(False, description="no internet here: launch hub models only from "
                          "the cache (hpcserve pull), refuse the others at once")

    @field_validator("python")
    @classmethod
    def _python(cls, v: str | None) -> str | None:
        if v is not None and (not v or "\0" in v):
            raise ValueError("must be the path of an interpreter (non-empty, no NUL byte)")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not HOST_RE.fullmatch(v):
            raise ValueError(f"{v[:80]!r} is not an IP address or host name (letters, digits "
                             "and . : _ -)")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if problem := env_problem(name, value):
                raise ValueError(problem)
        return v


def tail_lines(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file (reads at most 64 KiB)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def same_process(pid: int, create_time: float) -> psutil.Process | None:
    """The live process with this pid and start time, or None (gone, zombie, or pid reused)."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 0.05 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def group_members(pgid: int, create_time: float, session_id: str) -> list[psutil.Process]:
    """Processes left in a replica's group after its runner died (orphans to end).

    While any member lives, Linux does not hand the group's id out as a new pid, so with the
    leader gone every member is ours. If a live leader has another start time, the id was
    reused after our group ended: nothing there is ours. Engines that rename themselves
    (setproctitle) hide their environment, so the session mark is a hint, not a requirement.
    """
    leader = None
    with contextlib.suppress(psutil.Error):
        leader = psutil.Process(pgid)
    if leader is not None and abs(leader.create_time() - create_time) > 0.05:
        return []
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) != pgid or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.create_time() + 0.05 >= create_time or \
                    proc.environ().get(SESSION_MARK) == session_id:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


class LocalTarget(Target):
    kind = "local"
    settings_model = LocalConfig
    can_adopt = True
    runs_jobs = True
    settings: LocalConfig

    def __init__(self, name: str, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, config)
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._allocator: gpu_inventory.GpuAllocator | None = None

    # ------------------------------------------------------------------ launch

    def allocator(self) -> gpu_inventory.GpuAllocator:
        if self._allocator is None:
            inventory = self.settings.gpus
            found = ([str(g) for g in inventory] if inventory is not None
                     else gpu_inventory.discover())
            self._allocator = gpu_inventory.GpuAllocator(found, self.settings.gpu_classes,
                                                         self.name)
        return self._allocator

    def _ports(self, count: int, base: int | None) -> list[int]:
        host = self.settings.host
        if base is None:
            return [free_port(host) for _ in range(count)]
        ports = list(range(base, base + count))
        busy = [p for p in ports if p > 65535 or not port_is_free(host, p)]
        if busy:
            raise LaunchError(f"port {busy[0]} on {host} is already in use",
                              hint="choose another port (port=N), or leave it out to pick "
                              "a free one")
        return ports

    def _program(self, argv: list[str]) -> list[str]:
        """argv with its program found. A bare program name (a console script) is looked up
        beside the target's interpreter first, where its environment keeps its console
        scripts (so `python:` selects an engine's venv even when that venv is not on PATH),
        then on PATH; a missing program is a LaunchError."""
        exe = argv[0]
        if os.sep not in exe:
            beside = Path(self.settings.python or sys.executable).parent / exe
            if beside.is_file() and os.access(beside, os.X_OK):
                return [str(beside), *argv[1:]]
        ok = os.access(exe, os.X_OK) if os.sep in exe else shutil.which(exe) is not None
        if not ok:
            shown = repr(exe) if len(exe) <= 200 else f"{exe[:200]!r}... ({len(exe)} chars)"
            raise LaunchError(f"the engine program {shown} was not found on this machine",
                              hint="install the engine, or set `python:` in the target's config "
                              "to an environment that has it")
        return argv

    async def launch(self, req: LaunchRequest) -> dict[str, Any]:
        spec = req.spec
        if spec.nodes > 1:
            raise BadInput(f"the local target runs on one node; this launch asks for {spec.nodes}",
                           hint="launch on a cluster target, or with nodes=1")
        busy = [g for h in req.siblings for r in h.get("replicas", []) for g in r.get("gpus", [])]
        gpus = self.allocator().allocate(spec.gpus, busy, spec.gpu_class) if spec.gpus else []
        ports = self._ports(spec.replicas, spec.base_port)
        python = self.settings.python or sys.executable
        req.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await asyncio.to_thread(stage_files, req.files, req.workdir)
        replicas: list[dict[str, Any]] = []
        try:
            for i, port in enumerate(ports):
                mine = gpus[i * spec.gpus_per_replica:(i + 1) * spec.gpus_per_replica]
                values = {PORT: str(port), HOST: self.settings.host, PYTHON: python,
                          JOBDIR: str(req.workdir), **req.placeholder_values()}
                argv = render_argv(spec, values)
                env = render_env({**self.settings.env, **spec.env_dict()}, values)
                problem = nul_problem(argv, env)
                if problem:
                    raise BadInput(f"target {self.name!r}: {problem}",
                                   hint="fix the value in the recipe, overrides or targets.yaml")
                argv = self._program(argv)
                replicas.append(self._spawn(req, i, argv, env, port, mine))
        except BaseException:
            await self.stop({"replicas": replicas, "session_id": req.session_id})
            raise
        return {"session_id": req.session_id, "host": self.settings.host, "replicas": replicas,
                "jobdir": str(req.workdir)}

    def _spawn(self, req: LaunchRequest, index: int, argv: list[str], engine_env: dict[str, str],
               port: int, gpus: list[str]) -> dict[str, Any]:
        suffix = "" if index == 0 else f"-{index}"
        log_path = req.workdir / f"engine{suffix}.log"
        exit_file = req.workdir / f"exit{suffix}"
        exit_file.unlink(missing_ok=True)
        env = {**os.environ, **engine_env, **req.secret_env(), SESSION_MARK: req.session_id,
               "PYTHONUNBUFFERED": "1"}
        if gpus or req.spec.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        runner = [sys.executable, "-m", "hpcserve_jupyter.targets.local_runner",
                  str(exit_file), "--", *argv]
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = subprocess.Popen(runner, stdin=subprocess.DEVNULL, stdout=fd,
                                    stderr=subprocess.STDOUT, cwd=req.workdir, env=env,
                                    start_new_session=True)
        finally:
            os.close(fd)
        self._children[proc.pid] = proc
        return {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(),
                "port": port, "gpus": gpus, "log": str(log_path), "exit_file": str(exit_file)}

    # ------------------------------------------------------------------ status

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

    def _replica_status(self, rep: Mapping[str, Any]) -> TargetStatus | None:
        """None while the replica runs; otherwise how it ended."""
        if same_process(rep["pid"], rep["create_time"]):
            return None
        code: int | None = None
        with contextlib.suppress(OSError, ValueError):
            code = int(Path(rep["exit_file"]).read_text().strip())
        if code is None:
            reason = "the engine process disappeared (killed)"
        elif code < 0:
            reason = f"the engine was killed by signal {signal.Signals(-code).name}"
        else:
            reason = f"the engine exited with code {code}"
        return TargetStatus(Phase.EXITED, reason=reason, exit_code=code,
                            log_tail=tail_lines(Path(rep["log"])))

    async def poll(self, handles: Mapping[str, Mapping[str, Any]]) -> dict[str, TargetStatus]:
        self._reap()
        out: dict[str, TargetStatus] = {}
        for sid, handle in handles.items():
            ended = [s for s in map(self._replica_status, handle.get("replicas", [])) if s]
            if ended:
                out[sid] = ended[0]
            else:
                out[sid] = TargetStatus(Phase.RUNNING, endpoints=self._urls(handle))
        return out

    def _urls(self, handle: Mapping[str, Any]) -> list[str]:
        host = handle.get("host", "127.0.0.1")
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return [f"http://{host}:{r['port']}" for r in handle.get("replicas", [])]

    async def endpoints(self, handle: Mapping[str, Any]) -> list[str]:
        return self._urls(handle)

    # ------------------------------------------------------------------ stop and logs

    async def stop(self, handle: Mapping[str, Any]) -> None:
        replicas = list(handle.get("replicas", []))
        sid = str(handle.get("session_id", ""))
        for rep in replicas:
            if same_process(rep["pid"], rep["create_time"]):
                _signal_group(rep["pid"], signal.SIGTERM)
        deadline = time.monotonic() + self.settings.stop_grace
        while time.monotonic() < deadline:
            self._reap()
            if not any(same_process(r["pid"], r["create_time"]) for r in replicas):
                break
            await asyncio.sleep(0.1)
        for rep in replicas:
            if same_process(rep["pid"], rep["create_time"]):
                _signal_group(rep["pid"], signal.SIGKILL)
            # Engine children left behind by a killed runner: same group, same session mark.
            for orphan in await asyncio.to_thread(group_members, rep["pid"],
                                                  rep["create_time"], sid):
                with contextlib.suppress(psutil.Error):
                    orphan.kill()
        await asyncio.sleep(0)
        self._reap()

    def secret_settings(self) -> list[SecretSetting]:
        """Local engines inherit this process's environment, so HF_TOKEN reaches them."""
        return [SecretSetting("Hugging Face token", "HF_TOKEN")]

    async def gpu_report(self, handle: Mapping[str, Any]) -> Any:
        """nvidia-smi here, narrowed to the GPUs the session's replicas were given."""
        from ..metrics import NVIDIA_SMI, gpu_report, select_gpus

        try:
            proc = await asyncio.create_subprocess_exec(
                *NVIDIA_SMI, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 20)
            report = gpu_report(proc.returncode or 0, out.decode(errors="replace"),
                                err.decode(errors="replace"))
        except FileNotFoundError:
            report = gpu_report(127, "", "nvidia-smi: not found")
        except TimeoutError:
            from ..metrics import GpuReport

            return GpuReport(reason="nvidia-smi did not answer within 20 s")
        mine = [g for r in handle.get("replicas", []) for g in r.get("gpus", [])]
        return select_gpus(report, mine if report.gpus else None)

    async def cached_model(self, repo_id: str, filename: str | None = None,
                           revision: str = "main") -> str | None:
        """In the Hugging Face cache the engines read: this process's environment with the
        target's `env:` over it (HF_HUB_CACHE, HF_HOME...), as `hpcserve pull` fills it."""
        cache = hub_cache_dir({**os.environ, **self.settings.env})
        snapshot = await asyncio.to_thread(cached_snapshot, cache, repo_id, filename, revision)
        if snapshot is None:
            return None
        return str(snapshot / filename if filename else snapshot)

    async def adopt(self, session_id: str, name: str) -> dict[str, Any] | None:
        """After a launch whose handle was never recorded: stop every process group that
        carries the session's mark (a half-started launch is not worth adopting) and return
        None, as nothing runs for the session any more."""
        groups = await asyncio.to_thread(_marked_groups, session_id)
        if groups:
            await self.stop({"session_id": session_id,
                             "replicas": [{"pid": g, "create_time": t} for g, t in groups]})
        return None

    async def read_logs(self, handle: Mapping[str, Any], offset: int = 0) -> tuple[str, int]:
        replicas = handle.get("replicas") or []
        if not replicas:
            return "", offset
        path = Path(replicas[0]["log"])
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(1 << 20)
        except FileNotFoundError:
            return "", offset
        return data.decode("utf-8", "replace"), offset + len(data)

    # ------------------------------------------------------------------ job files

    async def read_file(self, handle: Mapping[str, Any], name: str,
                        offset: int = 0) -> tuple[bytes, int]:
        path = Path(handle["jobdir"]) / job_file_name(name)
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(8 << 20)
        except FileNotFoundError:
            return b"", offset
        return data, offset + len(data)

    async def fetch(self, handle: Mapping[str, Any], name: str, dest: Path) -> bool:
        source = Path(handle["jobdir"]) / job_file_name(name)
        if not source.exists():
            return False
        await asyncio.to_thread(copy_private, source, dest)
        return True

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        try:
            info["gpus"] = self.allocator().inventory
        except LaunchError:
            info["gpus"] = []
        info["gpu_classes"] = self.allocator().classes if info["gpus"] else {}
        return info


def copy_private(source: Path, dest: Path) -> None:
    """Copy a file or a directory tree, files 0600 and directories 0700 (a job's inputs and
    outputs are as private as a session's files). Links are copied as the files they name
    only when these lie inside `source`; any other link is refused."""
    if source.resolve() == dest.resolve():
        return
    if source.is_dir():
        root = source.resolve()
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path in sorted(source.rglob("*")):
            real = path.resolve()
            if real != root and root not in real.parents:
                raise BadInput(f"{path} links outside {source}", hint="copy the file itself "
                               "into the directory instead of linking to it")
            target = dest / path.relative_to(source)
            if real.is_dir():
                target.mkdir(mode=0o700, exist_ok=True)
            else:
                _copy_file(real, target)
        return
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _copy_file(source, dest)


def _copy_file(source: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)
    os.replace(tmp, dest)


def stage_files(files: Mapping[str, Path], jobdir: Path) -> None:
    for name, source in files.items():
        copy_private(Path(source), jobdir / job_file_name(name))


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _marked_groups(session_id: str) -> list[tuple[int, float]]:
    """(process group, its earliest start time) of the processes marked with this session."""
    groups: dict[int, float] = {}
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(SESSION_MARK) != session_id:
                continue
            pgid = os.getpgid(proc.pid)
            started = proc.create_time()
        except (psutil.Error, OSError):
            continue
        groups[pgid] = min(started, groups.get(pgid, started))
    return sorted(groups.items())
