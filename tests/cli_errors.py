"""What a CLI failure must look like: the exit code, one `hpcserve:` line, no traceback."""

from __future__ import annotations

from typing import Any


def one_line_error(proc: Any, code: int) -> str:
    """The single `hpcserve: ...` line of a failed `hpcserve` run (asserted to be one)."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("hpcserve:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]
