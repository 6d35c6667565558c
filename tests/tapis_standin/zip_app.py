"""A tiny ZIP-runtime Tapis app for tests: a tar.gz whose ``tapisjob_app.sh`` records its
arguments and environment into ``$_tapisExecSystemOutputDir/result.txt``, prints to stdout,
sleeps ``$APP_SLEEP`` seconds and exits with ``$APP_EXIT`` (both from envVariables).

Why: the Jobs tests need an app whose behaviour the test controls, and whose record of what it
received (each argument bracketed on its own line) shows exactly what Tapis passed.
"""

from __future__ import annotations

import io
import tarfile
import time
from typing import Any

APP_SCRIPT = """#!/bin/bash
out="$_tapisExecSystemOutputDir/result.txt"
{
  echo "argc=$#"
  for a in "$@"; do printf 'arg=[%s]\\n' "$a"; done
  printf 'GREETING=[%s]\\n' "$GREETING"
  printf 'JOBUUID=[%s]\\n' "$_tapisJobUUID"
  printf 'NODES=[%s]\\n' "$_tapisNodes"
  printf 'PWD=[%s]\\n' "$PWD"
} > "$out"
echo "app started"
echo "app stderr line" >&2
sleep "${APP_SLEEP:-0}"
echo "app ends with ${APP_EXIT:-0}"
exit "${APP_EXIT:-0}"
"""


def app_archive(script: str = APP_SCRIPT) -> bytes:
    """The app bundle: a gzip'ed tar holding an executable tapisjob_app.sh."""
    buf = io.BytesIO()
    data = script.encode()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("tapisjob_app.sh")
        info.size, info.mode, info.mtime = len(data), 0o755, int(time.time())
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def result_lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


def wait_status(tapis: Any, job_uuid: str, targets: set[str], timeout: float = 120.0
                ) -> list[str]:
    """Poll getJobStatus through tapipy until the status is in ``targets``; the statuses seen.

    The timeout only guards against a hang; no assertion is made on how long anything took.
    """
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = tapis.jobs.getJobStatus(jobUuid=job_uuid).status
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in targets:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"job {job_uuid} did not reach {targets}; saw {seen}")
