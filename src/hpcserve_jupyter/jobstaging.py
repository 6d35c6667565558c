"""What a one-off job stages and brings back on the caller's side: a task's input (a folder
zipped here, a zip checked member by member, a file as it is) before anything runs, a task's
output.zip unpacked into its output folder, and the image allow-list check."""

from __future__ import annotations

import fnmatch
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import jobrun
from .errors import BadInput, HpcserveError

if TYPE_CHECKING:
    from .jobmanager import JobLimits


def check_image(image: str | None, allowed: Sequence[str], target: str) -> None:
    """A job's image must match the allow-list (shell-style patterns) when one is set."""
    if not image or not allowed:
        return
    if not any(fnmatch.fnmatchcase(image, pattern) for pattern in allowed):
        raise BadInput(f"image {image!r} is not allowed for jobs on {target!r}",
                       hint="allowed: " + ", ".join(allowed) + " (allowed_images in "
                       "targets.yaml, c.HpcserveApp.allowed_images for the server)")


def stage_task_input(source: Path, jobdir: Path, limits: JobLimits) -> tuple[Path, int, str]:
    """(the file to stage, how many input files, the input's own name)."""
    try:
        if source.is_dir():
            archive = jobdir / "input.zip"
            count = zip_directory(source, archive, limits)
            return archive, count, source.name
        if not source.is_file():
            raise BadInput(f"input {source} does not exist (or is no file or directory)",
                           hint="give a file, a directory or a .zip of the task's inputs")
    except OSError as exc:
        raise BadInput(f"input {str(source)[:200]!r} cannot be used: {exc.strerror}") from None
    if source.suffix.lower() == ".zip":
        try:
            count = jobrun.check_archive(source, limits.max_input_bytes, limits.max_input_files)
        except (jobrun.UnsafeArchive, zipfile.BadZipFile) as exc:
            raise BadInput(f"input archive {source} refused: {exc}",
                           hint="a zip of plain files and folders, with relative paths "
                           "inside it") from None
        return source, count, source.name
    if source.stat().st_size > limits.max_input_bytes:
        raise BadInput(f"input {source} is over the limit of {limits.max_input_bytes} bytes")
    return source, 1, source.name


def zip_directory(folder: Path, archive: Path, limits: JobLimits) -> int:
    """A task's input directory as a zip (0600); links out of it are refused, not followed."""
    root = folder.resolve()
    files = []
    for path in sorted(folder.rglob("*")):
        real = path.resolve()
        if real != root and root not in real.parents:
            raise BadInput(f"{path} links outside the input directory {folder}",
                           hint="copy the file itself into the directory")
        if real.is_file():
            files.append(path)
    if len(files) > limits.max_input_files:
        raise BadInput(f"input directory {folder} holds {len(files)} files, over the limit of "
                       f"{limits.max_input_files}")
    if sum(p.stat().st_size for p in files) > limits.max_input_bytes:
        raise BadInput(f"input directory {folder} is over the limit of "
                       f"{limits.max_input_bytes} bytes")
    fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as z:
        for path in files:
            z.write(path, path.relative_to(folder).as_posix())
    return len(files)


def unpack_output(archive: Path, dest: Path, limits: JobLimits) -> None:
    """A task's output.zip into its output directory (the same checks as any input zip)."""
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        jobrun.safe_extract(archive, dest, limits.max_input_bytes * 4, limits.max_input_files)
    except jobrun.Stop as exc:
        raise HpcserveError(f"the task's output was not unpacked: {exc.reason}") from None


def check_output_dir(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BadInput(f"output {path} exists and is not an empty directory",
                       hint="a task's output is a directory: name a new or empty one")
    if not path.parent.is_dir():
        raise BadInput(f"output {path}: its parent directory does not exist")
