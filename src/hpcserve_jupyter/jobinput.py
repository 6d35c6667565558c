"""Job input and output files on the caller's side: a batch file written from prompts (for
`batch_job`) and a private copy of a job's output where the user asked for it."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import batchfile, jobrun


def write_prompts(home: Path, prompts: Any, *, url: str = "/v1/chat/completions",
                  system: str | None = None, params: Mapping[str, Any] | None = None) -> Path:
    """An OpenAI Batch file (0600) in the state directory's `job-inputs/`, one request per
    prompt; the job copies it, so it may be deleted once submitted."""
    folder = home / "job-inputs"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"prompts-{secrets.token_hex(4)}.jsonl"
    batchfile.write_jsonl(batchfile.build_lines(prompts, url=url, system=system,
                                                params=params), path)
    return path


def copy_out(source: Path, dest: str | Path) -> Path:
    """Copy a job's output to `dest` (0600, written under a temporary name, then renamed);
    a task's output directory is copied as a directory, or packed when `dest` ends in .zip."""
    target = Path(dest).expanduser().absolute()
    if source.is_dir():
        if target.suffix.lower() == ".zip":
            jobrun.pack(source, target)
        else:
            shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
        return target
    if target.is_dir():
        target = target / source.name
    tmp = target.with_name(f".{target.name}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)
    os.replace(tmp, target)
    return target
