"""What the Hub knows about a repo, computed from local folders: files with their git blob ids,
LFS pointers and sha256, revisions (branch `main` and others) with a commit sha each.

The rules follow the Hub's: a file is stored in LFS when its name matches one of the
`.gitattributes` patterns every new Hub repo gets (safetensors, bin, gguf, ...) or it is 10 MB
or more; an LFS file's git blob is its pointer file, so its `oid` is the pointer's sha1 and the
content is named by its sha256. The repo gets that `.gitattributes` file too, as on the Hub.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

LFS_PATTERNS = ("*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gguf", "*.gz", "*.h5",
                "*.joblib", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx",
                "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar",
                "*.safetensors", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip",
                "*.zst", "*tfevents*")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a blob: sha1 of a 'blob <size>\\0' header and the content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\n"
            f"size {size}\n").encode()


@dataclass(frozen=True)
class RepoFile:
    """One file of one revision. `source` holds its bytes (read when served)."""

    path: str
    source: Path | None
    data: bytes | None
    size: int
    blob_id: str
    sha256: str | None  # set for LFS files only
    pointer_size: int | None

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None

    def open(self) -> BinaryIO:
        """The content as a seekable stream (large files are never read whole)."""
        if self.data is not None:
            return io.BytesIO(self.data)
        return self.source.open("rb")  # type: ignore[union-attr]

    def tree_entry(self) -> dict:
        entry: dict = {"type": "file", "oid": self.blob_id, "size": self.size, "path": self.path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size,
                            "pointerSize": self.pointer_size}
        return entry

    def sibling(self, blobs: bool) -> dict:
        out: dict = {"rfilename": self.path}
        if blobs:
            out.update(size=self.size, blobId=self.blob_id)
            if self.lfs:
                out["lfs"] = {"sha256": self.sha256, "size": self.size,
                              "pointerSize": self.pointer_size}
        return out


def file_from_bytes(path: str, data: bytes, source: Path | None = None) -> RepoFile:
    keep = None if source is not None else data
    if any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], p) for p in LFS_PATTERNS) \
            or len(data) >= LFS_MIN_SIZE:
        sha = hashlib.sha256(data).hexdigest()
        pointer = lfs_pointer(sha, len(data))
        return RepoFile(path, source, keep, len(data), git_blob_sha1(pointer), sha, len(pointer))
    return RepoFile(path, source, keep, len(data), git_blob_sha1(data), None, None)


@dataclass
class Revision:
    name: str
    commit: str
    files: dict[str, RepoFile]

    def folders(self) -> list[str]:
        found = set()
        for path in self.files:
            parts = path.split("/")[:-1]
            found.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        return sorted(found)

    def tree_id(self, folder: str) -> str:
        inside = sorted(f"{p}:{f.blob_id}" for p, f in self.files.items()
                        if p.startswith(folder + "/"))
        return hashlib.sha1("\n".join(inside).encode()).hexdigest()


@dataclass
class Repo:
    """A model repo: revisions by name (and by commit sha), gating, who may read it."""

    repo_id: str
    revisions: dict[str, Revision] = field(default_factory=dict)
    gated: bool = False
    granted: frozenset[str] = frozenset()  # user names whose token may read a gated repo

    def add_revision(self, name: str, folder: Path) -> Revision:
        files = {".gitattributes": file_from_bytes(".gitattributes", GITATTRIBUTES.encode())}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()
                           and not p.relative_to(folder).as_posix().startswith(".")):
            rel = path.relative_to(folder).as_posix()
            files[rel] = file_from_bytes(rel, path.read_bytes(), source=path)
        digest = hashlib.sha1(f"{self.repo_id}\n{name}\n".encode())
        for rel, f in sorted(files.items()):
            digest.update(f"{rel}:{f.blob_id}\n".encode())
        rev = Revision(name, digest.hexdigest(), files)
        self.revisions[name] = rev
        return rev

    def revision(self, ref: str) -> Revision | None:
        """A branch/tag name or a full commit sha."""
        if ref in self.revisions:
            return self.revisions[ref]
        return next((r for r in self.revisions.values() if r.commit == ref), None)
