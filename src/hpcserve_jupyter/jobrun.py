"""The job driver: runs ONE one-off job where the target runs it, then exits.

    python3 hpcserve_jobrun.py --job DIR/job.json [--host H --port P] -- ENGINE OR TASK ARGV...

Every target runs this file the same way it runs an engine (a local process, the body of an
sbatch script, a pod's command), so no target knows what a job is. It is copied into the job's
directory beside `job.json`, which is why it uses the standard library only and runs on the
plain `python3` of a compute node (3.8 or later).

Batch jobs: start the engine, wait for its health check, send the input file's requests with
bounded concurrency, append each answer to the output file as it comes (one flush per line),
then stop the engine. Task jobs: run the command with $HPCSERVE_INPUT, $HPCSERVE_OUTPUT and
$HPCSERVE_MODEL set. Both write `progress.json` (phase, total, done, failed) atomically so the
manager reads one small file per tick. Exit codes: 0 done, 3 the engine or task failed,
124 the job's time limit, 143 cancelled (SIGTERM).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

EXIT_DONE, EXIT_FAILED, EXIT_TIMEOUT, EXIT_CANCELLED = 0, 3, 124, 143
PROGRESS_EVERY_S = 0.5


class Stop(Exception):
    """The job ends early: `phase` (failed, cancelled, timeout) and why."""

    def __init__(self, phase: str, reason: str, code: int) -> None:
        super().__init__(reason)
        self.phase, self.reason, self.code = phase, reason, code


def say(message: str) -> None:
    print(f"[hpcserve-job] {message}", file=sys.stderr, flush=True)


class Progress:
    """progress.json: written atomically, at most every PROGRESS_EVERY_S unless forced."""

    def __init__(self, path: Path, total: int) -> None:
        self.path = path
        self.data: dict[str, Any] = {"phase": "starting", "total": total, "done": 0,
                                     "failed": 0, "resumed": 0, "reason": "",
                                     "started_at": time.time(), "running_at": None,
                                     "updated_at": time.time()}
        self._written = 0.0
        self.write(force=True)

    def update(self, force: bool = False, **changes: Any) -> None:
        self.data.update(changes)
        self.write(force)

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._written < PROGRESS_EVERY_S:
            return
        self._written = now
        self.data["updated_at"] = time.time()
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.data, fh)
        os.replace(str(tmp), str(self.path))


class Clock:
    """The job's deadline and the stop request (SIGTERM), checked between steps."""

    def __init__(self, limit_s: float | None) -> None:
        self.deadline = time.monotonic() + limit_s if limit_s else None
        self.limit_s = limit_s
        self.cancelled = threading.Event()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Stop("cancelled", "cancelled", EXIT_CANCELLED)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise Stop("timeout", f"the job's time limit of {self.limit_s:.0f} s was reached",
                       EXIT_TIMEOUT)

    def sleep(self, seconds: float) -> None:
        self.cancelled.wait(seconds)
        self.check()


def program(argv: list[str]) -> list[str]:
    """argv with a bare program name found beside this interpreter first (an engine's venv
    keeps its console scripts there), then on PATH, as the local target does for sessions."""
    exe = argv[0]
    if os.sep not in exe:
        beside = Path(sys.executable).parent / exe
        if beside.is_file() and os.access(str(beside), os.X_OK):
            return [str(beside), *argv[1:]]
        found = shutil.which(exe)
        if found:
            return [found, *argv[1:]]
    return argv


def start(argv: list[str], env: dict[str, str] | None = None,
          cwd: str | None = None) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(program(argv), stdin=subprocess.DEVNULL, env=env, cwd=cwd)
    except OSError as exc:
        raise Stop("failed", f"cannot start {argv[0]!r}: {exc.strerror}", EXIT_FAILED) from None


def end(child: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


# ---------------------------------------------------------------------------- batch jobs

class Engine:
    """The engine's HTTP address, key and one keep-alive connection per worker thread."""

    def __init__(self, host: str, port: int, key: str, timeout: float) -> None:
        self.host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self.port, self.timeout = port, timeout
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port,
                                                                 timeout=self.timeout)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One request; a kept-alive connection the engine closed meanwhile is retried once
        on a new one (nothing was answered, so the engine did not process it)."""
        for attempt in (0, 1):
            conn = self._conn()
            try:
                conn.request(method, path, body=body, headers=self.headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self._drop()
                return resp.status, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._drop()
                if attempt:
                    raise
            except BaseException:
                self._drop()
                raise
        raise AssertionError("unreachable")

    def healthy(self, path: str) -> bool:
        try:
            status, _ = self.request("GET", path)
        except (OSError, http.client.HTTPException):
            return False
        return status == 200


def wait_healthy(engine: Engine, child: subprocess.Popen[bytes], path: str,
                 clock: Clock, start_timeout: float) -> None:
    started = time.monotonic()
    while not engine.healthy(path):
        code = child.poll()
        if code is not None:
            raise Stop("failed", f"the engine exited with code {code} before it answered its "
                       "health check", EXIT_FAILED)
        if time.monotonic() - started > start_timeout:
            raise Stop("failed", f"the engine did not answer its health check within "
                       f"{start_timeout:.0f} s", EXIT_FAILED)
        clock.sleep(0.5)


def answered(path: Path) -> set[str]:
    """custom_ids already in the output (a resumed job skips them); drops a partial last line
    (a run killed mid-write), so appending continues on a line boundary."""
    ids: set[str] = set()
    if not path.exists():
        return ids
    with open(path, "rb+") as fh:
        data_end = 0
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            data_end += len(raw)
            try:
                ids.add(str(json.loads(raw)["custom_id"]))
            except (ValueError, KeyError, TypeError):
                continue
        fh.truncate(data_end)
    return ids


def answer(engine: Engine, line: dict[str, Any], model: str) -> dict[str, Any]:
    """The output line for one request, in the shape `vllm run-batch` writes."""
    body = dict(line.get("body") or {})
    if model and not body.get("model"):
        body["model"] = model
    request_id = f"batch-req-{uuid.uuid4().hex}"
    out: dict[str, Any] = {"id": request_id, "custom_id": line["custom_id"], "response": None,
                           "error": None}
    try:
        status, data = engine.request("POST", line["url"], json.dumps(body).encode())
    except (OSError, http.client.HTTPException) as exc:
        out["error"] = {"message": f"no answer from the engine: {exc}", "transport": True}
        return out
    try:
        parsed: Any = json.loads(data) if data else None
    except ValueError:
        parsed = data.decode("utf-8", "replace")
    out["response"] = {"status_code": status, "request_id": request_id, "body": parsed}
    if not 200 <= status < 300:
        message = parsed
        if isinstance(parsed, dict):
            err = parsed.get("error", parsed)
            message = err.get("message", err) if isinstance(err, dict) else err
        out["error"] = {"message": str(message)[:2000]}
    return out


def run_batch(job: dict[str, Any], jobdir: Path, argv: list[str], args: argparse.Namespace,
              clock: Clock, progress: Progress) -> None:
    output = jobdir / job.get("output", "output.jsonl")
    skip = answered(output)
    key = os.environ.get("HPCSERVE_JOB_KEY", "")
    engine = Engine(args.host, args.port, key, float(job.get("request_timeout_s", 600)))
    say(f"starting the engine: {argv[0]}")
    child = start(argv)
    try:
        wait_healthy(engine, child, job.get("health_path", "/health"), clock,
                     float(job.get("start_timeout_s", 1800)))
        progress.update(force=True, phase="running", running_at=time.time())
        say("the engine answers; sending requests")
        send_all(job, jobdir / job.get("input", "input.jsonl"), output, skip, engine, child,
                 clock, progress)
    finally:
        say("stopping the engine")
        end(child)


def send_all(job: dict[str, Any], input_path: Path, output: Path, skip: set[str],
             engine: Engine, child: subprocess.Popen[bytes], clock: Clock,
             progress: Progress) -> None:
    """Feed lines to `concurrency` worker threads through a bounded queue (memory stays flat
    whatever the input's size) and write each answer as it arrives."""
    concurrency = max(1, int(job.get("concurrency", 8)))
    model = str(job.get("model") or "")
    todo: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=concurrency * 2)
    done: queue.Queue[dict[str, Any]] = queue.Queue()
    abort = threading.Event()

    broken: list[str] = []  # why the reader stopped early (the file changed after it was checked)

    def feed() -> None:
        number = 0
        try:
            with open(input_path, "rb") as fh:
                for number, raw in enumerate(fh, 1):  # noqa: B007 - read in the except
                    if abort.is_set():
                        break
                    if not raw.strip():
                        continue
                    line = json.loads(raw)
                    if str(line["custom_id"]) in skip:
                        continue
                    while not abort.is_set():
                        try:
                            todo.put(line, timeout=0.2)
                            break
                        except queue.Full:
                            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            broken.append(f"the input file cannot be read at line {max(number, 1)}: {exc!r}")
        finally:
            for _ in range(concurrency):  # the workers end whatever happened
                todo.put(None)

    def work() -> None:
        while not abort.is_set():
            line = todo.get()
            if line is None:
                return
            try:
                result = answer(engine, line, model)
            except Exception as exc:  # one odd line never stops a worker (nor loses the line)
                result = {"id": f"batch-req-{uuid.uuid4().hex}",
                          "custom_id": str(line.get("custom_id")), "response": None,
                          "error": {"message": f"the request could not be sent: {exc!r}"}}
            done.put(result)

    threads = [threading.Thread(target=feed, daemon=True)]
    threads += [threading.Thread(target=work, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    resumed = len(skip)
    counts = {"done": resumed, "failed": 0}
    progress.update(force=True, done=resumed, resumed=resumed)
    fd = os.open(str(output), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with os.fdopen(fd, "a", encoding="utf-8") as out:
            while any(t.is_alive() for t in threads[1:]) or not done.empty():
                try:
                    result = done.get(timeout=0.2)
                except queue.Empty:
                    check_engine(child, clock)
                    continue
                if result["error"] and result["error"].get("transport"):
                    check_engine(child, clock)  # an engine that died: not the line's fault
                    result["error"].pop("transport")
                out.write(json.dumps(result, ensure_ascii=False) + "\n")
                out.flush()
                counts["done"] += 1
                counts["failed"] += result["error"] is not None
                progress.update(**counts)
                clock.check()
        if broken:
            raise Stop("failed", broken[0] + "; the answers so far are kept", EXIT_FAILED)
    finally:
        abort.set()
        progress.update(force=True, **counts)


def check_engine(child: subprocess.Popen[bytes], clock: Clock) -> None:
    clock.check()
    code = child.poll()
    if code is not None:
        raise Stop("failed", f"the engine ended with code {code} while the job ran; "
                   "the answers so far are kept (resume to finish)", EXIT_FAILED)


def run_engine_batch(job: dict[str, Any], jobdir: Path, argv: list[str], clock: Clock,
                     progress: Progress) -> None:
    """The engine's own batch runner (`vllm run-batch`) over the lines not answered yet; its
    answers are appended to the output when it ends (it writes them all at the end, so
    progress jumps there, and a cancel keeps only what earlier runs answered)."""
    output = jobdir / job.get("output", "output.jsonl")
    skip = answered(output)
    pending, part = jobdir / "pending.jsonl", jobdir / "engine-output.jsonl"
    left = 0
    fd = os.open(str(pending), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, open(jobdir / job.get("input", "input.jsonl"), "rb") as src:
        for raw in src:
            if raw.strip() and str(json.loads(raw)["custom_id"]) not in skip:
                out.write(raw if raw.endswith(b"\n") else raw + b"\n")
                left += 1
    progress.update(force=True, done=len(skip), resumed=len(skip))
    if not left:
        return
    command = [a.replace("{HPCSERVE_BATCH_INPUT}", str(pending))
               .replace("{HPCSERVE_BATCH_OUTPUT}", str(part)) for a in argv]
    say(f"running the engine's batch runner over {left} requests: {command[0]}")
    child = start(command)
    progress.update(force=True, phase="running", running_at=time.time())
    try:
        while child.poll() is None:
            try:
                clock.sleep(0.5)
            except Stop:
                end(child)
                raise
    finally:
        end(child)
    if child.returncode != 0:
        raise Stop("failed", f"the engine's batch runner exited with code {child.returncode}",
                   EXIT_FAILED)
    done, failed = len(skip), 0
    fd = os.open(str(output), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out, open(part, encoding="utf-8") as src:
        for line in src:
            if not line.strip():
                continue
            result = json.loads(line)
            response = result.get("response") or {}
            failed += bool(result.get("error")) or not 200 <= int(
                response.get("status_code") or 0) < 300
            done += 1
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
    progress.update(force=True, done=done, failed=failed)


# ---------------------------------------------------------------------------- task jobs

def run_task(job: dict[str, Any], jobdir: Path, argv: list[str], clock: Clock,
             progress: Progress) -> None:
    """Stage the input into input/ (a zip unpacked with path checks), run the command once,
    then pack output/ into output.zip, the one file every target fetches back."""
    inp, out = jobdir / "input", jobdir / "output"
    inp.mkdir(mode=0o700, exist_ok=True)
    out.mkdir(mode=0o700, exist_ok=True)
    staged = jobdir / job["input"]
    if job.get("input_is_zip"):
        count = safe_extract(staged, inp, int(job.get("max_unpacked_bytes", 8 << 30)),
                             int(job.get("max_files", 1_000_000)))
        say(f"unpacked {count} input files")
    elif staged.exists():
        os.replace(str(staged), str(inp / job.get("input_name", job["input"])))
    env = dict(os.environ, HPCSERVE_INPUT=str(inp), HPCSERVE_OUTPUT=str(out),
               HPCSERVE_PROGRESS=str(jobdir / "task-progress"))
    if job.get("model"):
        env["HPCSERVE_MODEL"] = str(job["model"])
    say(f"running the task: {argv[0]}")
    child = start(argv, env=env, cwd=str(jobdir))
    progress.update(force=True, phase="running", running_at=time.time())
    try:
        while child.poll() is None:
            try:
                clock.sleep(0.2)
            except Stop:
                end(child)
                raise
            progress.update(**task_counts(jobdir / "task-progress", out))
    finally:
        end(child)
        pack(out, jobdir / "output.zip")  # what the task wrote, also when it failed
    progress.update(force=True, **task_counts(jobdir / "task-progress", out))
    if child.returncode != 0:
        raise Stop("failed", f"the task exited with code {child.returncode}", EXIT_FAILED)


class UnsafeArchive(Exception):
    """A zip member that would land outside the directory, a link, or too much data."""


def member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member may not be unpacked (zip-slip and links), or None."""
    name = info.filename
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return f"{name!r} is an absolute path"
    if ".." in parts:
        return f"{name!r} climbs out of the directory (..)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return f"{name!r} is a symbolic link"
    if "\0" in name:
        return f"{name!r} contains a NUL byte"
    return None


def check_archive(path: Path, max_bytes: int, max_files: int) -> int:
    """The number of files in a zip after checking every member; UnsafeArchive otherwise."""
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        for info in infos:
            problem = member_problem(info)
            if problem:
                raise UnsafeArchive(problem)
        files = [i for i in infos if not i.is_dir()]
        if len(files) > max_files:
            raise UnsafeArchive(f"{len(files)} files, over the limit of {max_files}")
        size = sum(i.file_size for i in files)
        if size > max_bytes:
            raise UnsafeArchive(f"{size} bytes unpacked, over the limit of {max_bytes}")
        return len(files)


def safe_extract(path: Path, dest: Path, max_bytes: int, max_files: int) -> int:
    """Unpack a zip into `dest` after check_archive; files 0600, directories 0700, and the
    sizes counted while writing (a header may lie about them)."""
    try:
        count = check_archive(path, max_bytes, max_files)
    except (UnsafeArchive, zipfile.BadZipFile) as exc:
        raise Stop("failed", f"the input archive was refused: {exc}", EXIT_FAILED) from None
    written = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            target = dest.joinpath(*[p for p in info.filename.split("/") if p not in ("", ".")])
            if info.is_dir():
                target.mkdir(mode=0o700, parents=True, exist_ok=True)
                continue
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(str(target), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out, archive.open(info) as src:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:
                        raise Stop("failed", "the input archive unpacks to more than "
                                   f"{max_bytes} bytes", EXIT_FAILED)
                    out.write(chunk)
    return count


def pack(folder: Path, archive: Path) -> None:
    """A directory as a zip (0600), written under a temporary name; links are not followed."""
    tmp = archive.with_name(archive.name + ".tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            z.write(str(path), path.relative_to(folder).as_posix())
    os.replace(str(tmp), str(archive))


def task_counts(progress_file: Path, output: Path) -> dict[str, int]:
    """A task's progress: what it wrote to $HPCSERVE_PROGRESS ("done total" on the last line),
    else the number of files it wrote so far."""
    try:
        lines = [ln for ln in progress_file.read_text().splitlines() if ln.strip()]
        done_s, total_s = lines[-1].split()[:2]
        return {"done": int(done_s), "total": int(total_s)}
    except (OSError, ValueError, IndexError):
        return {"done": sum(1 for p in output.rglob("*") if p.is_file())}


# ---------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpcserve_jobrun.py")
    parser.add_argument("--job", required=True, help="the job's job.json")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    job_file = Path(args.job)
    jobdir = job_file.parent
    job = json.loads(job_file.read_text())
    progress = Progress(jobdir / "progress.json", int(job.get("total", 0)))
    clock = Clock(job.get("time_limit_s"))

    def cancel(_signum: int, _frame: object) -> None:
        clock.cancelled.set()

    signal.signal(signal.SIGTERM, cancel)
    signal.signal(signal.SIGINT, cancel)
    try:
        if not command:
            raise Stop("failed", "no command to run", EXIT_FAILED)
        if job.get("kind") == "task":
            run_task(job, jobdir, command, clock, progress)
        elif job.get("runner") == "engine":
            run_engine_batch(job, jobdir, command, clock, progress)
        else:
            run_batch(job, jobdir, command, args, clock, progress)
        clock.check()
    except Stop as stop:
        say(stop.reason)
        progress.update(force=True, phase=stop.phase, reason=stop.reason)
        return stop.code
    progress.update(force=True, phase="done")
    say("done")
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
