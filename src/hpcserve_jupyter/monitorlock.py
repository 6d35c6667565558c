"""One monitor per state directory: an advisory lock that only the monitoring manager holds.

Several managers may share a state directory (a Jupyter server, a second server of the same
user, a CLI command). All of them may launch and stop on request, and the store's
compare-and-set keeps their writes consistent; but only the holder of this lock runs monitor
passes, so autostop, give-up and scheduler polling happen once, not once per manager. The
kernel releases the lock when its holder dies, and another manager takes over on its next try.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: every manager monitors; the store's CAS still holds
    fcntl = None  # type: ignore[assignment]


class MonitorLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; cheap enough to call on every tick."""
        if self._fd is not None or fcntl is None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def holder_pid(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None
