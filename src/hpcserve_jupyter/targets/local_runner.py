"""Runs one engine as a child and records its exit code in a file, for the local target.

The local target starts this module as the leader of a new process group. It forwards stop
signals to the engine and writes the engine's exit status atomically once it ends, so a manager
restarted later can still tell a crash (exit 1) from a clean stop, which a non-parent process
cannot learn from the kernel. Imports stay minimal: it starts once per session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m hpcserve_jupyter.targets.local_runner EXIT_FILE -- CMD...",
              file=sys.stderr)
        return 2
    exit_file, cmd = argv[0], argv[2:]
    try:
        child = subprocess.Popen(cmd)
    except OSError as exc:
        print(f"hpcserve: cannot start {cmd[0]!r}: {exc.strerror}", file=sys.stderr, flush=True)
        _record(exit_file, 127)
        return 127

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = child.wait()
    _record(exit_file, code)
    return code if code >= 0 else 128 - code


def _record(path: str, code: int) -> None:
    tmp = f"{path}.tmp"
    # 0600 like everything else in the state directory, whatever the engine's umask
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(str(code))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
