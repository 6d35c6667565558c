"""JobHandle: what `submit_job` and `batch_job` return, so a notebook can write

    job = api.submit_job("smollm2-135m", "prompts.jsonl")
    job.wait(progress=True)
    df = job.results()          # a DataFrame when pandas is there, else a list of dicts

It holds a facade and the job's id; every call asks the facade, so the same handle works
embedded and against a Jupyter server. No Jupyter imports here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import batchfile

if TYPE_CHECKING:
    from .facade import Facade
    from .jobs import Job


class JobHandle:
    def __init__(self, facade: Facade, job: Job) -> None:
        self._facade = facade
        self.job = job

    @property
    def id(self) -> str:
        return self.job.id

    def __getattr__(self, name: str) -> Any:
        """The record's fields as of the last refresh (state, done, total, failed...)."""
        if name.startswith("_") or name == "job":
            raise AttributeError(name)
        return getattr(self.job, name)

    def refresh(self) -> Job:
        self.job = self._facade.job_status(self.job.id)
        return self.job

    def wait(self, *, timeout: float | None = None,
             progress: bool | Callable[[Job], None] = False) -> Job:
        """Until the job ends. progress=True shows a bar (tqdm when installed)."""
        callback = ProgressBar(self.job) if progress is True else progress or None
        try:
            self.job = self._facade.wait_job(self.job.id, timeout=timeout, progress=callback)
        finally:
            if callback is not None and hasattr(callback, "close"):
                callback.close()
        return self.job

    def cancel(self) -> Job:
        self.job = self._facade.cancel_job(self.job.id)
        return self.job

    def logs(self, tail: int | None = 100) -> str:
        return self._facade.job_logs(self.job.id, tail)

    def output(self, path: str | Path | None = None) -> Path:
        """The output JSONL here (a copy at `path` when given)."""
        return self._facade.job_results(self.job.id, output=path)

    def results(self, *, frame: bool | None = None) -> Any:
        """The answers in the input's order: a pandas DataFrame (custom_id, status_code,
        text, embedding, error, usage) when pandas is installed (or frame=True), else dicts.
        A task job's results are its output directory (a Path)."""
        path = self.output()
        if path.is_dir():
            return path
        if frame is None:
            try:
                import pandas  # noqa: F401
            except ImportError:
                frame = False
            else:
                frame = True
        order = Path(self.job.input)  # the input file, where this process can read it
        return (batchfile.results_frame(path, order) if frame
                else batchfile.read_results(path, order))

    def __repr__(self) -> str:
        j = self.job
        return (f"<JobHandle {j.id} {j.name!r} {j.state} {j.done}/{j.total}"
                f"{f' ({j.failed} failed)' if j.failed else ''}>")


class ProgressBar:
    """A progress callback drawing done/total: tqdm.auto when installed, else nothing."""

    def __init__(self, job: Job) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.bar = None
            return
        self.bar = tqdm(total=job.total or None, desc=job.name, unit="req")

    def __call__(self, job: Job) -> None:
        if self.bar is None:
            return
        if job.total and self.bar.total != job.total:
            self.bar.total = job.total
        self.bar.n = job.done
        self.bar.set_postfix_str(f"{job.state}" + (f", {job.failed} failed" if job.failed
                                                   else ""), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
