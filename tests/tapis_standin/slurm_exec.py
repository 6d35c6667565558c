"""The execution system of the stand-in: SSH/SFTP to a real host, and Tapis' SLURM script text.

Why a module of its own: the Jobs and Files routes both act on the execution system the way
Tapis does (over SSH as the system's ``effectiveUserId``), and the text Tapis writes
(``tapisjob.sh``, ``tapisjob.env``) must be testable without a cluster.

Facts followed (tapis-jobs 1.7.1 sources, tapis-shared-java ``TapisUtils``):

* ``tapisjob.env`` holds one ``export KEY=VALUE`` line per variable; the value goes through
  ``TapisUtils.conditionalQuote``: it is DOUBLE-quoted (inner ``"`` escaped) only when it contains
  a space or one of ``& > < | ; ```; otherwise it is written bare.  So ``$``, backslashes and
  backticks inside a value ARE interpreted by bash when the file is sourced: a client must not
  put shell syntax into env values it means literally.
* ``tapisjob.sh`` (ZIP runtime, BATCH) = ``#!/bin/bash``, Tapis' comment block, ``# Slurm
  directives.`` with one ``#SBATCH --<long option> <value>`` line per directive in sorted
  (TreeMap) order, then ``. ./tapisjob.env`` and
  ``./'<executable>'<appArgs> > '<abs stdout file>' 2>&1``.  Each appArgs ``arg`` is appended
  after a single space exactly as given: Tapis does NOT quote application arguments.
* Directives Tapis always sets: ``--nodes`` (nodeCount), ``--ntasks`` (nodeCount x
  coresPerNode), ``--time`` (maxMinutes, bare minutes), ``--mem`` (memoryMB), ``--partition``
  (the logical queue's hpcQueueName), ``--job-name`` (``tapisjob.sh`` unless the user set -J),
  ``--output`` (absolute path of the stdout file in execSystemOutputDir) and ``--error`` only
  when stderr goes to another file.  User schedulerOptions are parsed with Tapis' pattern
  ``\\s*(--?[^=\\s]*)\\s*=?\\s*(\\S*)\\s*`` (one option, one token value), short forms mapped to
  long names; ``-N/--nodes -n/--ntasks -p/--partition -t/--time --mem`` are refused
  (JOBS_SCHEDULER_SUBSUMED_ARG) and unknown options too (JOBS_SCHEDULER_UNSUPPORTED_ARG).
* The job is submitted with ``cd '<execDir>';sbatch tapisjob.sh`` and the SLURM id is read from
  ``Submitted batch job N``.
* The ZIP executable is ``./tapisjob_app.sh`` if it exists, else ``tapisjob_executable=`` from
  ``./tapisjob.manifest`` (Tapis' own setexec script, run in the exec dir).

Choices of the stand-in:

* Host keys are verified against the given known_hosts file (paramiko ``RejectPolicy``), never
  auto-added.  One SSH transport per system, shared by all threads; every command runs in its
  own channel.
* ``jobWorkingDir`` may use ``HOST_EVAL($VAR)`` like Tapis; it is resolved once per system by
  ``echo $VAR`` over SSH.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import stat
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

JOB_WRAPPER_SCRIPT = "tapisjob.sh"
JOB_ENV_FILE = "tapisjob.env"
JOB_OUTPUT_REDIRECT_FILE = "tapisjob.out"
JOB_ZIP_APP_EXEC_DEFAULT = "tapisjob_app.sh"
JOB_ZIP_APP_MANIFEST = "tapisjob.manifest"
JOB_ZIP_SET_EXEC_SCRIPT = "tapisjob_setexec.sh"
DANGEROUS_CHARS = frozenset("&><|;`")
_SAFE_PATH = re.compile(r"[^ &><|;`]+")
_OPTION = re.compile(r"\s*(--?[^=\s]*)\s*=?\s*(\S*)\s*")
_SUBMITTED = re.compile(r"\s*Submitted batch job (\d+)\s*")
_HOST_EVAL = re.compile(r"^HOST_EVAL\(\$(\w+)(?:\s*,\s*([^)]*))?\)")

#: SlurmOptions.getTapisArg: options Tapis sets itself, and the job attribute to use instead.
SUBSUMED_OPTIONS = {
    "--mem": "memoryMB", "--nodes": "nodeCount", "-N": "nodeCount", "--ntasks": "coresPerNode",
    "-n": "coresPerNode", "--partition": "execSystemLogicalQueue",
    "-p": "execSystemLogicalQueue", "--time": "maxMinutes", "-t": "maxMinutes",
}
#: Short option -> long name, as in SlurmOptions.assignCmd.
SHORT_OPTIONS = {
    "-a": "--array", "-A": "--account", "-B": "--extra-node-info", "-b": "--begin",
    "-M": "--clusters", "-C": "--constraint", "-S": "--core-spec", "-d": "--dependency",
    "-m": "--distribution", "-e": "--error", "-X": "--exclude", "-G": "--gpus",
    "-H": "--hold", "-i": "--input", "-J": "--job-name", "-L": "--licenses",
    "-F": "--nodefile", "-W": "--nodelist", "-k": "--no-kill", "-O": "--overcommit",
    "-s": "--oversubscribe", "-o": "--output", "-q": "--qos", "-v": "--verbose",
}
#: Long options SlurmOptions accepts (flags take no value).
FLAG_OPTIONS = frozenset({
    "--contiguous", "--hold", "--ignore-pbs", "--no-requeue", "--overcommit",
    "--oversubscribe", "--reboot", "--requeue", "--use-min-nodes", "--verbose",
})
VALUE_OPTIONS = frozenset({
    "--array", "--account", "--acctg-freq", "--extra-node-info", "--batch", "--bb", "--bbf",
    "--begin", "--cluster-constraint", "--clusters", "--comment", "--constraint",
    "--core-spec", "--cores-per-socket", "--cpu-freq", "--cpus-per-gpu", "--cpus-per-task",
    "--deadline", "--delay-boot", "--dependency", "--distribution", "--error", "--exclude",
    "--exclusive", "--export", "--export-file", "--get-user-env", "--gid", "--gpus",
    "--gpu-bind", "--gpu-freq", "--gpus-per-node", "--gpus-per-socket", "--gpus-per-task",
    "--gres", "--gres-flags", "--hint", "--input", "--job-name", "--kill-on-invalid-dep",
    "--licenses", "--mail-type", "--mail-user", "--mcs-label", "--mem-per-cpu", "--mem-per-gpu",
    "--mem-bind", "--mincpus", "--network", "--nice", "--nodefile", "--nodelist", "--no-kill",
    "--ntasks-per-core", "--ntasks-per-gpu", "--ntasks-per-node", "--ntasks-per-socket",
    "--output", "--open-mode", "--power", "--priority", "--profile", "--propagate", "--qos",
    "--reservation", "--signal", "--sockets-per-node", "--spread-job", "--switches",
    "--thread-spec", "--threads-per-core", "--time-min", "--tmp", "--wait-all-nodes", "--wckey",
})


class SchedulerOptionError(ValueError):
    """A schedulerOptions entry Tapis' SlurmOptions would refuse."""


# --------------------------------------------------------------------------------------------
# quoting exactly as TapisUtils does


def conditional_quote(value: str) -> str:
    """``TapisUtils.conditionalQuote``: double-quote only when unsafe characters appear."""
    if not value.strip():
        return value
    if value.startswith('"') and value.endswith('"') and '"' not in value[1:-1]:
        return value
    if _SAFE_PATH.fullmatch(value):
        return value
    inner = value[1:-1] if len(value) > 1 and value[0] == value[-1] == '"' else value
    return '"' + inner.replace('"', '\\"') + '"'


def always_single_quote(value: str) -> str:
    """``TapisUtils.alwaysSingleQuote``."""
    if not value.strip():
        return value
    if value.startswith("'") and value.endswith("'") and "'" not in value[1:-1]:
        return value
    inner = value[1:-1] if len(value) > 1 and value[0] == value[-1] == "'" else value
    return "'" + inner.replace("'", "'\\''") + "'"


def has_dangerous_chars(value: str) -> bool:
    """``PathSanitizer.hasDangerousChars``: control characters or ``& > < | ; ```."""
    return any(c in DANGEROUS_CHARS or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)


def has_control_chars(value: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)


# --------------------------------------------------------------------------------------------
# the files Tapis writes


def parse_scheduler_options(args: Sequence[str]) -> dict[str, str]:
    """User schedulerOptions -> {long option: value}; raises SchedulerOptionError."""
    out: dict[str, str] = {}
    for arg in args:
        m = _OPTION.fullmatch(arg)
        if not m or not m.group(1) or m.group(1) in ("-", "--"):
            raise SchedulerOptionError(
                f"JOBS_SCHEDULER_ARG_PARSE_ERROR Unable to parse slurm argument: {arg}")
        option, value = m.group(1), m.group(2)
        if option == "--tapis-profile":
            continue  # scheduler profiles: accepted and ignored by the stand-in
        if option in SUBSUMED_OPTIONS:
            raise SchedulerOptionError(
                f'JOBS_SCHEDULER_SUBSUMED_ARG The slurm "{option}" option is not supported, use '
                f"the Jobs {SUBSUMED_OPTIONS[option]} argument in its place. ")
        option = SHORT_OPTIONS.get(option, option)
        if option in FLAG_OPTIONS:
            out[option] = ""
        elif option in VALUE_OPTIONS:
            out[option] = value.replace(":", "-") if option == "--job-name" else value
        else:
            raise SchedulerOptionError(
                f'JOBS_SCHEDULER_UNSUPPORTED_ARG The slurm argument "{option}" is not supported '
                "for execution under Tapis.")
    return out


def batch_directives(user_options: Mapping[str, str], *, nodes: int, cores_per_node: int,
                     max_minutes: int, memory_mb: int, partition: str, stdout_path: str,
                     stderr_path: str) -> dict[str, str]:
    """SlurmOptions: the user's directives plus the ones Tapis sets, sorted by name."""
    directives = dict(user_options)
    directives["--nodes"] = str(nodes)
    directives["--ntasks"] = str(nodes * cores_per_node)
    directives["--time"] = str(max_minutes)
    directives["--mem"] = str(memory_mb)
    directives["--partition"] = partition
    directives.setdefault("--job-name", JOB_WRAPPER_SCRIPT)
    if "--output" not in directives and "--array" not in directives:
        directives["--output"] = stdout_path
        if "--error" not in directives and stdout_path != stderr_path:
            directives["--error"] = stderr_path
    return dict(sorted(directives.items()))


def wrapper_script(directives: Mapping[str, str], *, executable: str, app_args: Sequence[str],
                   stdout_path: str, stderr_path: str, cmd_prefix: str = "") -> str:
    """``tapisjob.sh`` for a ZIP BATCH job, as ZipStager + ZipRunCmd write it."""
    lines = [
        "#!/bin/bash", "",
        "# This script was auto-generated by the Tapis Jobs Service for the purpose",
        "# of running a Tapis application.  The order of execution is as follows:",
        "#",
        "#   1. The batch scheduler options are passed to the scheduler, including any",
        "#      user-specified, scheduler-managed environment variables.",
        "#   2. The application container is run with container options, environment",
        "#      variables and application parameters as supplied in the Tapis job,",
        "#      application and system definitions.", "",
        "# Slurm directives.",
    ]
    for key, value in directives.items():
        lines.append(f"#SBATCH {key} {value}" if value else f"#SBATCH {key}")
    lines += [
        "",
        "# Issue launch command for application executable.",
        "# Format: nohup ./tapisjob_app.sh > tapisjob.out 2>&1 &", "",
        "# Export Tapis and user defined environment variables.",
        f". ./{JOB_ENV_FILE}", "",
        "# Launch app executable.",
    ]
    cmd = cmd_prefix + "./" + always_single_quote(executable)
    cmd += "".join(" " + a for a in app_args)  # appended as given: Tapis never quotes them
    if stdout_path == stderr_path:
        cmd += f" > {always_single_quote(stdout_path)} 2>&1"
    else:
        cmd += (f" 2> {always_single_quote(stderr_path)} 1> "
                f"{always_single_quote(stdout_path)}")
    return "\n".join([*lines, cmd]) + "\n"


def env_file(env: Sequence[tuple[str, str]]) -> str:
    """``tapisjob.env`` (JobUtils.generateEnvVarFileContentForZip)."""
    out = []
    for key, value in env:
        out.append(f"export {key}=" + (conditional_quote(value) if value else ""))
    return "".join(line + "\n" for line in out)


#: Tapis' ZipStager.generateSetAppExecutableScript, verbatim in behaviour.
SET_EXEC_SCRIPT = """#!/bin/bash
APP_EXEC="tapisjob_app.sh"
if [ ! -f "./tapisjob_app.sh" ] && [ -f "./tapisjob.manifest" ]; then
  APP_EXEC=$(grep -v "^#" tapisjob.manifest | grep "^tapisjob_executable=" | sed -E 's/(.*)=//')
fi
if [ -z "${APP_EXEC}" ]; then
  echo "ERROR: Unable to determine application executable."
  echo "ERROR: Please provide tapisjob_app.sh or a manifest specifying tapisjob_executable."
  exit 1
elif [ ! -f "./${APP_EXEC}" ]; then
  echo "ERROR: Looking for application executable = $APP_EXEC but file does not exist."
  exit 2
else
  chmod +x "./${APP_EXEC}"
fi
echo
echo "${APP_EXEC}"
exit 0
"""


def parse_sbatch_output(output: str) -> str | None:
    for line in reversed(output.strip().splitlines()):
        m = _SUBMITTED.fullmatch(line)
        if m:
            return m.group(1)
    return None


# --------------------------------------------------------------------------------------------
# systems


@dataclass(frozen=True)
class LogicalQueue:
    """A Systems ``LogicalQueue``; limits of None are not enforced."""

    name: str
    hpc_queue_name: str
    max_node_count: int | None = None
    max_cores_per_node: int | None = None
    max_memory_mb: int | None = None
    max_minutes: int | None = None
    min_node_count: int | None = 1
    min_cores_per_node: int | None = 1
    min_memory_mb: int | None = 1
    min_minutes: int | None = 1

    def display(self) -> dict[str, Any]:
        return {"name": self.name, "description": None, "hpcQueueName": self.hpc_queue_name,
                "maxJobs": 2147483647, "maxJobsPerUser": 2147483647,
                "minNodeCount": self.min_node_count, "maxNodeCount": self.max_node_count,
                "minCoresPerNode": self.min_cores_per_node,
                "maxCoresPerNode": self.max_cores_per_node,
                "minMemoryMB": self.min_memory_mb, "maxMemoryMB": self.max_memory_mb,
                "minMinutes": self.min_minutes, "maxMinutes": self.max_minutes}


@dataclass
class ExecSystem:
    """A Tapis LINUX system reached over SSH with a key; ``canExec`` with SLURM queues."""

    id: str
    host: str
    port: int
    effective_user: str
    key_file: str
    known_hosts: str
    root_dir: str = "/"
    job_working_dir: str = "HOST_EVAL($HOME)/tapis-standin"
    queues: tuple[LogicalQueue, ...] = ()
    default_queue: str | None = None
    can_exec: bool = True
    job_runtimes: tuple[str, ...] = ("ZIP", "SINGULARITY")
    batch_scheduler: str | None = "SLURM"
    connect_timeout: float = 10.0
    _resolved_working_dir: str | None = field(default=None, repr=False)

    @classmethod
    def from_testcluster(cls, env: Mapping[str, str], *, system_id: str = "testcluster",
                         queue: str = "normal", max_minutes: int = 60,
                         max_node_count: int = 1, max_cores_per_node: int = 4,
                         max_memory_mb: int = 4096, **kw: Any) -> ExecSystem:
        """The system for ``scripts/testcluster.sh env`` exports (HPCSERVE_TEST_*)."""
        q = LogicalQueue(name=queue, hpc_queue_name=env["HPCSERVE_TEST_SLURM_PARTITION"],
                         max_node_count=max_node_count, max_cores_per_node=max_cores_per_node,
                         max_memory_mb=max_memory_mb, max_minutes=max_minutes)
        return cls(id=system_id, host=env["HPCSERVE_TEST_SSH_HOST"],
                   port=int(env["HPCSERVE_TEST_SSH_PORT"]),
                   effective_user=env["HPCSERVE_TEST_SSH_USER"],
                   key_file=env["HPCSERVE_TEST_SSH_KEY"],
                   known_hosts=env["HPCSERVE_TEST_SSH_KNOWN_HOSTS"], queues=(q,),
                   default_queue=queue, **kw)

    def queue(self, name: str) -> LogicalQueue | None:
        return next((q for q in self.queues if q.name == name), None)

    def abs_path(self, path: str) -> str:
        """A Tapis path (relative to rootDir) -> absolute path; ``..`` is refused."""
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise ValueError(f"path may not contain '..': {path}")
        return posixpath.normpath(posixpath.join(self.root_dir, *parts)) if parts else \
            posixpath.normpath(self.root_dir)

    def rel_path(self, abs_path: str) -> str:
        """An absolute path -> the path relative to rootDir, as Files shows it."""
        root = posixpath.normpath(self.root_dir)
        rel = posixpath.relpath(abs_path, root)
        return "" if rel == "." else rel

    def display(self, tenant: str, owner: str) -> dict[str, Any]:
        """The TapisSystem as getSystem answers (no credentials)."""
        return {
            "tenant": tenant, "id": self.id, "description": "stand-in execution system",
            "systemType": "LINUX", "owner": owner, "host": self.host, "enabled": True,
            "effectiveUserId": self.effective_user, "defaultAuthnMethod": "PKI_KEYS",
            "authnCredential": None, "bucketName": None, "rootDir": self.root_dir,
            "port": self.port, "useProxy": False, "proxyHost": None, "proxyPort": -1,
            "dtnSystemId": None, "canExec": self.can_exec,
            "canRunBatch": self.batch_scheduler is not None, "enableCmdPrefix": False,
            "allowChildren": False, "parentId": None, "mpiCmd": None,
            "jobRuntimes": [{"runtimeType": r, "version": None} for r in self.job_runtimes],
            "jobWorkingDir": self.job_working_dir, "jobEnvVariables": [],
            "jobMaxJobs": 2147483647, "jobMaxJobsPerUser": 2147483647,
            "batchScheduler": self.batch_scheduler,
            "batchLogicalQueues": [q.display() for q in self.queues],
            "batchDefaultLogicalQueue": self.default_queue, "batchSchedulerProfile": None,
            "jobCapabilities": [], "tags": [], "notes": {}, "uuid": None, "deleted": False,
            "created": None, "updated": None, "hasCredentials": True, "isPublic": False,
            "isDynamicEffectiveUser": False, "sharedWithUsers": [],
        }


class RemoteError(RuntimeError):
    """An SSH/SFTP operation failed (connection, authentication, command)."""


class SSHHost:
    """One paramiko transport to a system, shared by threads; host keys verified."""

    def __init__(self, system: ExecSystem) -> None:
        self.system = system
        self._client: Any = None
        self._lock = threading.Lock()
        self.commands: list[str] = []  # every command run, for tests

    def _connect(self) -> Any:
        import paramiko

        with self._lock:
            client = self._client
            if client is not None and client.get_transport() is not None and \
                    client.get_transport().is_active():
                return client
            client = paramiko.SSHClient()
            client.load_host_keys(self.system.known_hosts)
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                client.connect(self.system.host, port=self.system.port,
                               username=self.system.effective_user,
                               key_filename=self.system.key_file, look_for_keys=False,
                               allow_agent=False, timeout=self.system.connect_timeout)
            except Exception as e:
                raise RemoteError(f"cannot connect to {self.system.effective_user}@"
                                  f"{self.system.host}:{self.system.port}: {e}") from e
            self._client = client
            return client

    def run(self, cmd: str, timeout: float = 60.0) -> tuple[int, str, str]:
        """Run a command with the login shell's environment; (exit code, stdout, stderr)."""
        with self._lock:
            self.commands.append(cmd)
        chan = self._open(lambda t: t.open_session(timeout=timeout), "a session")
        try:
            chan.settimeout(timeout)
            chan.exec_command(cmd)
            out, err = chan.makefile("rb"), chan.makefile_stderr("rb")
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
            rc = chan.recv_exit_status()
        except Exception as e:
            raise RemoteError(f"command failed on {self.system.host}: {e}") from e
        finally:
            chan.close()
        return rc, stdout, stderr

    def _open(self, opener: Any, what: str) -> Any:
        """A new channel on the shared transport, tried a second time when opening fails:
        nothing has run yet, so that is safe. A transport that died (sshd dropped it) is
        replaced by a fresh connection; a live one that refused or lost the answer among
        concurrent opens (paramiko hands the failure to one waiting thread only) is kept, as
        other threads' channels run on it. Real Tapis pools its SSH connections likewise."""
        for attempt in (1, 2):
            client = self._connect()
            transport = client.get_transport()
            try:
                return opener(transport)
            except Exception as e:
                if attempt == 2:
                    raise RemoteError(f"cannot open {what} on {self.system.host}: "
                                      f"{e or type(e).__name__}") from e
                if transport is None or not transport.is_active():
                    with self._lock:
                        if self._client is client:
                            client.close()
                            self._client = None
                else:
                    time.sleep(0.2)
        raise AssertionError("unreachable")

    def check(self, cmd: str, timeout: float = 60.0) -> str:
        rc, out, err = self.run(cmd, timeout)
        if rc != 0:
            raise RemoteError(f"command {cmd!r} exited {rc}: {(err or out).strip()}")
        return out

    @contextmanager
    def sftp(self) -> Iterator[Any]:
        import paramiko

        sftp = self._open(paramiko.SFTPClient.from_transport, "SFTP")
        try:
            yield sftp
        finally:
            sftp.close()

    def write_file(self, path: str, data: bytes, mode: int) -> None:
        with self.sftp() as sftp:
            with sftp.open(path, "wb") as fh:
                fh.write(data)
            sftp.chmod(path, mode)

    def mkdirs(self, *paths: str) -> None:
        if paths:
            self.check("mkdir -p -- " + " ".join(shlex.quote(p) for p in paths))

    def working_dir(self) -> str:
        """jobWorkingDir with HOST_EVAL($VAR[, default]) resolved on the host (cached)."""
        if self.system._resolved_working_dir is None:
            wd = self.system.job_working_dir
            m = _HOST_EVAL.match(wd)
            if m:
                value = self.check(f'echo "${m.group(1)}"').strip() or (m.group(2) or "")
                if not value:
                    raise RemoteError(f"HOST_EVAL: ${m.group(1)} is not set on "
                                      f"{self.system.host}")
                wd = value + wd[m.end():]
            self.system._resolved_working_dir = wd
        return self.system._resolved_working_dir

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def file_info(system: ExecSystem, abs_path: str, attr: Any) -> dict[str, Any]:
    """A Files ``FileInfo`` from an SFTP attribute object."""
    import datetime as dt

    mode = attr.st_mode or 0
    kind = ("dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode)
            else "symbolic_link" if stat.S_ISLNK(mode) else "other")
    rel = system.rel_path(abs_path)
    mtime = dt.datetime.fromtimestamp(attr.st_mtime or 0, dt.UTC)
    return {
        "mimeType": None, "type": kind, "owner": str(attr.st_uid), "group": str(attr.st_gid),
        "nativePermissions": stat.filemode(mode)[1:], "url": f"tapis://{system.id}/{rel}",
        "lastModified": mtime.strftime("%Y-%m-%dT%H:%M:%SZ"), "name": posixpath.basename(
            abs_path.rstrip("/")) or "/", "path": rel, "size": attr.st_size or 0,
    }
