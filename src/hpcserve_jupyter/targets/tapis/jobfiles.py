"""A one-off job's files on Tapis Pods: staged into, read from and fetched out of a volume.

The pod sees the job's directory as `<mount>/job` (deploy.job_layout); through the Pods API
the same files are `job/<name>` in the job's volume. A job's handle names that volume
(`job_volume_id`), which is also how the target tells a job's pod from a session's: a job's
volume outlives its pod until the job's output was fetched (`release`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import BadInput, LaunchError
from ..base import job_file_name
from .client import PodsApi
from .deploy import JOB_SUBDIR


def is_job(handle: Mapping[str, Any]) -> bool:
    return bool(handle.get("job_volume_id"))


def volume_path(name: str) -> str:
    """`job/<name>`: a file of the job's directory, as the Pods API names it in the volume."""
    return f"{JOB_SUBDIR}/{job_file_name(name)}"


def stage(api: PodsApi, volume_id: str, files: Mapping[str, Path]) -> int:
    """Upload every file (a directory: each file under it) into the job's directory in the
    volume; returns the number of files. Links out of a directory are refused."""
    count = 0
    for name, source in files.items():
        source = Path(source)
        for local, rel in walk_files(source, volume_path(name)):
            try:
                data = local.read_bytes()
            except OSError as exc:
                raise LaunchError(f"cannot read the job file {local}: {exc.strerror}") from None
            api.upload(volume_id, rel, data)
            count += 1
    return count


def walk_files(source: Path, rel: str) -> list[tuple[Path, str]]:
    if not source.is_dir():
        return [(source, rel)]
    root = source.resolve()
    found = []
    for path in sorted(source.rglob("*")):
        real = path.resolve()
        if real != root and root not in real.parents:
            raise BadInput(f"{path} links outside {source}", hint="copy the file itself into "
                           "the directory instead of linking to it")
        if real.is_file():
            found.append((real, f"{rel}/{path.relative_to(source).as_posix()}"))
    return found
