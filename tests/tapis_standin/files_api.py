"""Files routes of the stand-in, acting on the execution system over SSH/SFTP.

What a client of Jobs needs: upload an app bundle or an input (insert), read a file
(getContents), list (listFiles), mkdir, delete, stat (getStatInfo) and chmod
(runLinuxNativeOp).  Every path is relative to the system's ``rootDir``; ``..`` is refused.
Operations run as the system's ``effectiveUserId`` through the real sshd.

Facts followed (tapipy's bundled openapi_v3-files.yml):

* routes ``/v3/files/ops/{systemId}/{path}`` (GET listFiles, POST insert with a multipart
  ``file`` part, DELETE delete), ``POST /v3/files/ops/{systemId}`` (mkdir, body ``{"path"}``),
  ``/v3/files/content/{systemId}/{path}`` (getContents: raw bytes, ``zip=true`` for a
  directory), ``/v3/files/utils/linux/{systemId}/{path}`` (GET getStatInfo, POST
  runLinuxNativeOp with ``{"operation", "argument"}``, operation CHMOD/CHOWN/CHGRP);
* FileInfo fields mimeType/type/owner/group/nativePermissions/url/lastModified/name/path/size;
  FileStatInfo absolutePath/uid/gid/size/perms/accessTime/modifyTime/dir/link;
  NativeLinuxOpResult command/exitCode/stdOut/stdErr.

Choices of the stand-in:

* insert creates missing parent directories and replaces an existing file.
* getContents of a directory without ``zip=true`` answers 400; the ``range`` header takes
  ``min,max`` (inclusive byte offsets); a missing path answers 404.
* listFiles of a file lists that one file; ``recurse=true`` walks the tree.
* insert, mkdir and delete answer ``result: null`` with ``FAPI_OP_COMPLETE Operation completed.
  ...`` (OperationsApiResource); listings are sorted by name, case-insensitively, and a
  FileInfo ``path`` is relative to rootDir without a leading slash (SSHDataClient.ls).
* Other messages ("FAPI_..." codes) are the stand-in's wording.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import shlex
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import ApiError, FileReply, Request, StreamReply, java_envelope
from .slurm_exec import ExecSystem, RemoteError, SSHHost, file_info

if TYPE_CHECKING:
    from .server import StandIn

LINUX_OPS = {"CHMOD": "chmod", "CHOWN": "chown", "CHGRP": "chgrp"}
CHUNK = 1 << 16


class FilesService:
    """Files operations on the stand-in's systems."""

    def __init__(self, standin: StandIn) -> None:
        self.standin = standin

    # ------------------------------------------------------------------ helpers

    def _resolve(self, req: Request, path_param: str | None = "path") -> tuple[
            ExecSystem, SSHHost, str]:
        apps = self.standin.apps
        system = apps.system(req.params["systemId"])
        raw = req.params.get(path_param, "") if path_param else ""
        try:
            return system, apps.hosts[system.id], system.abs_path(raw)
        except ValueError as e:
            raise ApiError(400, f"FAPI_INVALID_PATH {e}") from None

    @staticmethod
    def _stat(sftp: Any, path: str) -> Any:
        try:
            return sftp.stat(path)
        except FileNotFoundError:
            raise ApiError(404, f"FAPI_NOT_FOUND Path not found: {path}") from None
        except PermissionError:
            raise ApiError(403, f"FAPI_NOT_PERMITTED Permission denied: {path}") from None

    @staticmethod
    def _remote(e: RemoteError) -> ApiError:
        return ApiError(500, f"FAPI_SSH_ERROR {e}")

    def listing(self, system: ExecSystem, host: SSHHost, path: str, recurse: bool = False
                ) -> list[dict[str, Any]]:
        """FileInfo list of a path (a file lists itself)."""
        with host.sftp() as sftp:
            attr = self._stat(sftp, path)
            if not stat.S_ISDIR(attr.st_mode or 0):
                return [file_info(system, path, attr)]
            out: list[dict[str, Any]] = []
            todo = [path]
            while todo:
                current = todo.pop(0)
                for entry in sorted(sftp.listdir_attr(current),
                                    key=lambda a: a.filename.lower()):
                    full = posixpath.join(current, entry.filename)
                    out.append(file_info(system, full, entry))
                    if recurse and stat.S_ISDIR(entry.st_mode or 0):
                        todo.append(full)
            return out

    def stream(self, host: SSHHost, path: str, start: int = 0, end: int | None = None,
               ) -> StreamReply:
        """A remote file's bytes, read over SFTP in 64 KiB chunks while being sent."""
        cm = host.sftp()
        sftp = cm.__enter__()
        try:
            attr = self._stat(sftp, path)
            if stat.S_ISDIR(attr.st_mode or 0):
                raise ApiError(400, f"FAPI_IS_DIR {path} is a directory: request it with "
                                    "zip=true")
            size = attr.st_size or 0
            last = size - 1 if end is None else min(end, size - 1)
            length = max(0, last - start + 1)
            fh = sftp.open(path, "rb")
        except BaseException:
            cm.__exit__(None, None, None)
            raise

        def chunks() -> Iterator[bytes]:
            try:
                fh.seek(start)
                remaining = length
                while remaining > 0:
                    data = fh.read(min(CHUNK, remaining))
                    if not data:
                        break
                    remaining -= len(data)
                    yield data
            finally:
                fh.close()
                cm.__exit__(None, None, None)

        return StreamReply(chunks(), "application/octet-stream", posixpath.basename(path),
                           length)

    def zip_dir(self, host: SSHHost, path: str) -> FileReply:
        """A remote directory as a local temporary zip file."""
        assert self.standin.workdir is not None
        fd, tmp = tempfile.mkstemp(suffix=".zip", dir=self.standin.workdir)
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w") as zf, host.sftp() as sftp:
            todo = [path]
            while todo:
                current = todo.pop(0)
                for entry in sorted(sftp.listdir_attr(current), key=lambda a: a.filename):
                    full = posixpath.join(current, entry.filename)
                    if stat.S_ISDIR(entry.st_mode or 0):
                        todo.append(full)
                    elif stat.S_ISREG(entry.st_mode or 0):
                        buf = io.BytesIO()
                        sftp.getfo(full, buf)
                        zf.writestr(posixpath.relpath(full, path), buf.getvalue())
        return FileReply(Path(tmp), "application/zip",
                         f"{posixpath.basename(path.rstrip('/')) or 'root'}.zip",
                         remove_after=True)

    # ------------------------------------------------------------------ routes

    def _op_listFiles(self, req: Request):
        system, host, path = self._resolve(req)
        try:
            files = self.listing(system, host, path, recurse=req.q_bool("recurse"))
        except RemoteError as e:
            raise self._remote(e) from None
        offset, limit = req.q_int("offset", 0) or 0, req.q_int("limit", 1000) or 1000
        files = files[offset:offset + limit]
        return None, java_envelope(files, "FAPI_LISTING_OK ok", "files")

    def _op_insert(self, req: Request):
        system, host, path = self._resolve(req)
        parts = req.body if isinstance(req.body, dict) else {}
        if "file" not in parts:
            raise ApiError(400, "FAPI_INSERT_NO_FILE The multipart body has no 'file' part")
        _, data = parts["file"]
        try:
            host.mkdirs(posixpath.dirname(path) or "/")
            with host.sftp() as sftp:
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISDIR(sftp.stat(path).st_mode or 0):
                        raise ApiError(400, f"FAPI_IS_DIR {path} is a directory")
                tmp = posixpath.join(posixpath.dirname(path),
                                     f".{posixpath.basename(path)}.standin-upload")
                with sftp.open(tmp, "wb") as fh:
                    fh.write(data)
                sftp.posix_rename(tmp, path)
        except RemoteError as e:
            raise self._remote(e) from None
        return None, java_envelope(None, _op_complete(req, "insert", system, path), "files")

    def _op_mkdir(self, req: Request):
        body = req.body if isinstance(req.body, dict) else {}
        if not isinstance(body.get("path"), str) or not body["path"]:
            raise ApiError(400, "FAPI_MKDIR_NO_PATH The body needs a 'path'")
        system, host, _ = self._resolve(req, None)
        try:
            path = system.abs_path(body["path"])
        except ValueError as e:
            raise ApiError(400, f"FAPI_INVALID_PATH {e}") from None
        try:
            host.mkdirs(path)
        except RemoteError as e:
            raise self._remote(e) from None
        return None, java_envelope(None, _op_complete(req, "mkdir", system, path), "files")

    def _op_delete(self, req: Request):
        system, host, path = self._resolve(req)
        if path == system.abs_path(""):
            raise ApiError(400, "FAPI_DELETE_ROOT Deleting the root directory is not allowed")
        try:
            with host.sftp() as sftp:
                self._stat(sftp, path)
            host.check("rm -rf -- " + shlex.quote(path))
        except RemoteError as e:
            raise self._remote(e) from None
        return None, java_envelope(None, _op_complete(req, "delete", system, path), "files")

    def _op_getContents(self, req: Request):
        _, host, path = self._resolve(req)
        try:
            with host.sftp() as sftp:
                attr = self._stat(sftp, path)
            if stat.S_ISDIR(attr.st_mode or 0):
                if not req.q_bool("zip"):
                    raise ApiError(400, f"FAPI_IS_DIR {path} is a directory: request it with "
                                        "zip=true")
                return 200, self.zip_dir(host, path)
            start, end = 0, None
            rng = req.headers.get("range") or req.headers.get("Range")
            if rng:
                try:
                    lo, _, hi = rng.partition(",")
                    start, end = int(lo), int(hi)
                except ValueError:
                    raise ApiError(400, f"FAPI_INVALID_RANGE range must be 'min,max': {rng}"
                                   ) from None
            return 200, self.stream(host, path, start, end)
        except RemoteError as e:
            raise self._remote(e) from None

    def _op_getStatInfo(self, req: Request):
        _system, host, path = self._resolve(req)
        try:
            with host.sftp() as sftp:
                attr = sftp.lstat(path) if not req.q_bool("followLinks") else None
                attr = attr or self._stat(sftp, path)
        except FileNotFoundError:
            raise ApiError(404, f"FAPI_NOT_FOUND Path not found: {path}") from None
        except RemoteError as e:
            raise self._remote(e) from None
        mode = attr.st_mode or 0
        return None, java_envelope({
            "absolutePath": path, "uid": attr.st_uid, "gid": attr.st_gid, "size": attr.st_size,
            "perms": stat.filemode(mode)[1:], "accessTime": attr.st_atime,
            "modifyTime": attr.st_mtime, "dir": stat.S_ISDIR(mode),
            "link": stat.S_ISLNK(mode)}, "FAPI_STAT_OK ok", "files")

    def _op_runLinuxNativeOp(self, req: Request):
        _system, host, path = self._resolve(req)
        body = req.body if isinstance(req.body, dict) else {}
        op, arg = body.get("operation"), body.get("argument")
        if op not in LINUX_OPS or not isinstance(arg, str) or not arg:
            raise ApiError(400, f"FAPI_LINUXOP_INVALID operation must be one of "
                                f"{sorted(LINUX_OPS)} with a non-empty argument")
        recursive = " -R" if req.q_bool("recursive") else ""
        cmd = f"{LINUX_OPS[op]}{recursive} {shlex.quote(arg)} {shlex.quote(path)}"
        try:
            with host.sftp() as sftp:
                self._stat(sftp, path)
            rc, out, err = host.run(cmd)
        except RemoteError as e:
            raise self._remote(e) from None
        return None, java_envelope({"command": cmd, "exitCode": rc, "stdOut": out,
                                    "stdErr": err}, "FAPI_LINUXOP_OK ok", "files")


def _op_complete(req: Request, op: str, system: ExecSystem, path: str) -> str:
    return (f"FAPI_OP_COMPLETE Operation completed. jwtTenant: {req.tenant} jwtUser: "
            f"{req.user} OboTenant: {req.tenant} OboUser: {req.user} Operation: {op} System: "
            f"{system.id} Path: {system.rel_path(path)}")
