"""REST API for one-off jobs under /hpcserve/api/jobs: list, submit, status, cancel, results,
logs. As for sessions the handlers only parse and route; every decision is the SessionService's
(its JobManager), the same one the embedded facade and the CLI run. Job changes reach clients
on /hpcserve/api/events beside session changes (the manager broadcasts both)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.iostream import StreamClosedError

from .base import ApiError, ClientGone, HpcserveHandler
from .bodies import PATH_MAX, JobBody

NDJSON = "application/x-ndjson"
TEXT = "text/plain; charset=utf-8"
CHUNK = 256 * 1024  # bytes read and sent at a time: memory stays flat for any output size


class JobsHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        svc = await self.service()
        live = self.bool_arg("live")
        self.write_json({"jobs": [j.public() for j in svc.jobs(live_only=live)]})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body(JobBody)
        svc = await self.service()
        job = await svc.submit_job(
            body.recipe, self._server_path(body.input, "input"), target=body.target,
            backend=body.backend, name=body.name,
            output=self._server_path(body.output, "output") if body.output else None,
            concurrency=body.concurrency, resume=body.resume, overrides=body.overrides,
            runner=body.runner,
            owner=self.owner() or None)
        self.activity()
        self.set_header("Location", url_path_join(self.base_url, "hpcserve/api/jobs", job.id))
        self.write_json(job.public(), 201)

    def _server_path(self, value: str, field: str) -> Path:
        """A path from the body on this machine: `~` is the server user's home, and a relative
        path starts at the server's root directory (where JupyterLab's file browser starts),
        not at whatever directory the server process was started in."""
        path = Path(value).expanduser()
        if not path.is_absolute():
            root = self.settings.get("server_root_dir") or os.getcwd()
            path = Path(root).expanduser() / path
        if len(os.fsencode(path)) >= PATH_MAX:
            raise ApiError(400, f"field {field!r}: the path is longer than {PATH_MAX - 1} bytes "
                           "once made absolute", detail="give a shorter (absolute) path")
        return path


class JobHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self, id: str) -> None:
        svc = await self.service()
        self.write_json(svc.get_job(id).public())

    @web.authenticated
    @authorized
    async def delete(self, id: str) -> None:
        """Cancel: the output so far is kept (resume finishes it); an ended job: no-op."""
        svc = await self.service()
        job = await svc.cancel_job(id)
        self.write_json(job.public())


class JobResultsHandler(HpcserveHandler):
    """The output JSONL as it is now, streamed in chunks: complete lines only (a line the job
    is still writing, or one a killed run left half-written, is not sent)."""

    @web.authenticated
    @authorized
    async def get(self, id: str) -> None:
        svc = await self.service()
        job = svc.get_job(id)
        path = await svc.job_results(job.id)
        try:
            fh = open(path, "rb")  # noqa: SIM115 (closed below, after streaming)
        except OSError as exc:
            raise ApiError(409, f"the output of job {job.name} cannot be read: "
                           f"{exc.strerror or exc}", detail=str(path)) from None
        with fh:
            self.set_header("Content-Type", NDJSON)
            self.set_header("Cache-Control", "no-cache")
            self.set_header("Content-Disposition", f'attachment; filename="{job.name}.jsonl"')
            try:
                async for data in _complete_lines(fh):
                    self.write(data)
                    await self.flush()
            except StreamClosedError:
                return
            self.finish(set_content_type=NDJSON)


async def _complete_lines(fh: BinaryIO) -> AsyncIterator[bytes]:
    """The file's complete lines up to its size now, CHUNK bytes at a time (a line longer than
    a chunk is held until its end arrives)."""
    left = os.fstat(fh.fileno()).st_size
    carry = b""
    while left > 0:
        chunk = await asyncio.to_thread(fh.read, min(CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        data = carry + chunk
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if cut:
            yield data[:cut]


class JobLogsHandler(HpcserveHandler):
    """The job's log (the driver's and the engine's), as the sessions' logs handler serves it:
    text/plain, the last `tail` lines, or streamed with follow=1 until the job ends."""

    @web.authenticated
    @authorized
    async def get(self, id: str) -> None:
        svc = await self.service()
        tail = self.int_arg("tail", 100)
        follow = self.bool_arg("follow")
        job = svc.get_job(id)
        self.set_header("Content-Type", TEXT)
        if not follow:
            self.finish(await svc.job_logs(job.id, tail or None), set_content_type=TEXT)
            return
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        self.set_status(200)
        await self.flush()
        agen = svc.follow_job_logs(job.id)
        try:
            while True:
                try:
                    text = await self.until_gone(agen.__anext__())
                except StopAsyncIteration:
                    break
                self.write(text)
                await self.flush()
        except (ClientGone, StreamClosedError):
            return
        finally:
            with contextlib.suppress(Exception):
                await agen.aclose()
        self.finish(set_content_type=TEXT)
