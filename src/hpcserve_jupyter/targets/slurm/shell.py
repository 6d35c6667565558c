"""The Shell contract: what the SLURM target needs from a login node, and `LocalShell`.

Why one `run()`: every remote command is built from an argv list by `build_command`, which
quotes each argument with `shlex.join`, so a model name or path can never inject shell code.
Secrets (key passphrases) are held in `Secret` and never reach messages, logs or reprs; pass
other secrets to remote commands on stdin, not in argv.

`LocalShell` runs commands on this machine (`host: local`, SLURM commands on the cluster
itself); `connection.SSHConnection` is the same contract over SSH. The errors and results here
are shared by both, so callers never tell the two apart.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import stat as stat_module
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hpcserve_jupyter.errors import BadInput, HpcserveError, TargetUnreachable

DEFAULT_TIMEOUT = 120.0

# --- secrets and errors ---------------------------------------------------------------------


class Secret:
    """A string that never shows itself: repr and str are masked, so it cannot leak by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The real value; call only where it is handed to the library that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))


class SSHUnreachable(TargetUnreachable):
    """The SSH host did not answer or the connection broke; the remote state is unknown."""


class HostKeyError(BadInput):
    """The host's key is not trusted; the user has to check and record it."""


class UnknownHostKey(HostKeyError):
    """The host key is in no known_hosts file (and trust_on_first_use is off)."""


class HostKeyMismatch(HostKeyError):
    """The host key differs from the recorded one: possibly an attack, possibly a reinstall."""


class AuthenticationFailed(BadInput):
    """The server refused every key we had; says which user, host and keys were tried."""


class RemoteCommandError(HpcserveError):
    """A remote command exited non-zero; carries everything needed to explain why."""

    def __init__(self, *, command: str, exit_code: int, stdout: str, stderr: str,
                 where: str) -> None:
        self.command = command
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.where = where
        detail = (stderr.strip() or stdout.strip())[-2000:]
        message = f"command failed on {where} with exit code {exit_code}: {shorten(command)}"
        super().__init__(f"{message}\n{detail}" if detail else message)


class CommandTimeout(TargetUnreachable):
    """A remote command did not finish in time; it may still be running there."""

    def __init__(self, *, command: str, timeout: float, stdout: str, stderr: str,
                 where: str) -> None:
        self.command = command
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"command on {where} did not finish in {timeout:g} s: "
                         f"{shorten(command)}")


def shorten(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a low-level error (some paramiko errors have empty messages)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    """What a command printed and how it exited."""

    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class FileStat:
    """The few file facts log following and job files need."""

    size: int
    mode: int
    mtime: float

    @property
    def is_dir(self) -> bool:
        return stat_module.S_ISDIR(self.mode)


def build_command(argv: Sequence[str | os.PathLike[str]], *, login_shell: bool = False) -> str:
    """The one place an argv becomes a shell string: every argument is quoted, none interpreted.

    With `login_shell` the command runs under `bash -lc` so /etc/profile (and `module`) is set up.
    """
    args = [os.fspath(arg) for arg in argv]
    if not args:
        raise BadInput("empty command: run() needs at least the program name")
    if not all(isinstance(arg, str) for arg in args):
        raise TypeError("command arguments must be str or str paths")
    for i, arg in enumerate(args):
        if "\0" in arg:  # the remote shell gets a C string: it would end there
            raise BadInput(f"argument {i} of {args[0][:40]!r} contains a NUL byte, which no "
                           "command line can carry")
    command = shlex.join(args)
    return shlex.join(["bash", "-lc", command]) if login_shell else command


# --- the Shell contract -----------------------------------------------------------------------


class Shell(Protocol):
    """What the SLURM target needs from a login node, over SSH or on this machine."""

    @property
    def label(self) -> str: ...

    def connect(self) -> None: ...

    def run(self, argv: Sequence[str | os.PathLike[str]], *, check: bool = True,
            timeout: float | None = DEFAULT_TIMEOUT, stdin: str | bytes | None = None,
            login_shell: bool = False) -> CommandResult: ...

    def read_file(self, path: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def write_file(self, path: str, data: str | bytes, mode: int = 0o644) -> None: ...

    def upload(self, local: Path, path: str, mode: int = 0o600) -> None: ...

    def download(self, path: str, local: Path) -> None: ...

    def stat(self, path: str) -> FileStat: ...

    def home(self) -> str: ...

    def open_tunnel(self, remote_host: str, remote_port: int) -> tuple[str, int]: ...

    def close_tunnel(self, remote_host: str, remote_port: int) -> None: ...

    def close(self) -> None: ...


# --- the local shell --------------------------------------------------------------------------


class LocalShell:
    """`host: local`: the same interface as SSHConnection, run on this machine with subprocess.

    Relative paths and commands start in `cwd` (the home directory by default), like over SSH.
    """

    label = "local"

    def __init__(self, cwd: str | Path | None = None) -> None:
        self.cwd = Path(cwd).expanduser() if cwd else Path.home()

    def __repr__(self) -> str:
        return f"<LocalShell {self.cwd}>"

    def __enter__(self) -> LocalShell:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def connect(self) -> None:
        """Nothing to connect; here so callers need not tell the two shells apart."""

    def run(self, argv: Sequence[str | os.PathLike[str]], *, check: bool = True,
            timeout: float | None = DEFAULT_TIMEOUT, stdin: str | bytes | None = None,
            login_shell: bool = False) -> CommandResult:
        """Run a command without any shell (argv as is), or under `bash -lc` when asked."""
        command = build_command(argv, login_shell=login_shell)
        args = ["bash", "-lc", build_command(argv)] if login_shell else [os.fspath(a) for a in argv]
        data = stdin.encode() if isinstance(stdin, str) else stdin
        try:
            done = subprocess.run(args, input=data if data is not None else b"",
                                  capture_output=True, timeout=timeout, cwd=self.cwd, check=False)
        except FileNotFoundError:
            # what a remote shell would say, so both shells report a missing program alike
            done = subprocess.CompletedProcess(args, 127, b"",
                                               f"{args[0]}: command not found\n".encode())
        except subprocess.TimeoutExpired as exc:
            raise CommandTimeout(command=command, timeout=timeout or 0,
                                 stdout=_text(exc.stdout), stderr=_text(exc.stderr),
                                 where=self.label) from None
        result = CommandResult(command, done.returncode, _text(done.stdout), _text(done.stderr))
        if check and done.returncode != 0:
            raise RemoteCommandError(command=command, exit_code=done.returncode,
                                     stdout=result.stdout, stderr=result.stderr, where=self.label)
        return result

    def _path(self, path: str) -> Path:
        return self.cwd / path

    def read_file(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._path(path).open("rb") as file:
            file.seek(offset)
            return file.read(length) if length is not None else file.read()

    def write_file(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        target = self._path(path)
        temp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        content = data.encode() if isinstance(data, str) else data
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)  # the umask must not widen or narrow what was asked for
            with os.fdopen(fd, "wb") as file:
                file.write(content)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise

    def upload(self, local: Path, path: str, mode: int = 0o600) -> None:
        _copy(Path(local), self._path(path), mode)

    def download(self, path: str, local: Path) -> None:
        _copy(self._path(path), Path(local), 0o600)

    def stat(self, path: str) -> FileStat:
        info = self._path(path).stat()
        return FileStat(size=info.st_size, mode=info.st_mode, mtime=info.st_mtime)

    def home(self) -> str:
        return str(self.cwd)

    def open_tunnel(self, remote_host: str, remote_port: int) -> tuple[str, int]:
        """Nothing to forward: the service is already reachable from here."""
        return remote_host, int(remote_port)

    def close_tunnel(self, remote_host: str, remote_port: int) -> None:
        """Nothing to close (see open_tunnel)."""

    def close(self) -> None:
        """Nothing to close; kept for interface parity with SSHConnection."""


def _copy(source: Path, target: Path, mode: int) -> None:
    """A file copied under a temporary name with `mode` from the start, then renamed."""
    temp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", errors="replace")
