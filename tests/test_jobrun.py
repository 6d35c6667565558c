"""The job driver's own rules, without an engine: zip inputs unpacked only inside their
directory (zip-slip, links and sizes refused), output packed, answered ids of a killed run."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hpcserve_jupyter import jobrun


def make_zip(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize("member, words", [
    ("../escape.txt", "climbs out"), ("a/../../escape.txt", "climbs out"),
    ("/etc/cron.d/x", "absolute path"), ("C:/windows/x", "absolute path"),
])
def test_zip_slip_members_are_refused(tmp_path, member, words):
    archive = make_zip(tmp_path / "in.zip", {"ok.txt": b"fine", member: b"evil"})
    with pytest.raises(jobrun.UnsafeArchive, match=words):
        jobrun.check_archive(archive, 1 << 20, 100)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(jobrun.Stop, match="refused"):
        jobrun.safe_extract(archive, dest, 1 << 20, 100)
    assert list(dest.iterdir()) == []  # nothing unpacked, not even the good member
    assert not (tmp_path / "escape.txt").exists()


def test_links_and_oversized_archives_are_refused(tmp_path):
    with pytest.raises(jobrun.UnsafeArchive, match="symbolic link"):
        jobrun.check_archive(make_zip(tmp_path / "l.zip", {"a": b"x"}, link="pw"), 1 << 20, 9)
    big = make_zip(tmp_path / "b.zip", {"a": b"x" * 5000, "b": b"y" * 5000})
    with pytest.raises(jobrun.UnsafeArchive, match="over the limit of 9000"):
        jobrun.check_archive(big, 9000, 9)
    with pytest.raises(jobrun.UnsafeArchive, match="2 files, over the limit of 1"):
        jobrun.check_archive(big, 1 << 20, 1)


def test_safe_extract_and_pack_round_trip_private(tmp_path):
    archive = make_zip(tmp_path / "in.zip", {"a.txt": b"A", "sub/b.txt": b"B", "sub/": b""})
    dest = tmp_path / "dest"
    dest.mkdir()
    assert jobrun.safe_extract(archive, dest, 1 << 20, 10) == 2
    assert (dest / "sub" / "b.txt").read_bytes() == b"B"
    assert stat.S_IMODE((dest / "a.txt").stat().st_mode) == 0o600
    (dest / "link").symlink_to("/etc/passwd")  # never packed: links are not followed
    jobrun.pack(dest, tmp_path / "out.zip")
    assert stat.S_IMODE((tmp_path / "out.zip").stat().st_mode) == 0o600
    with zipfile.ZipFile(tmp_path / "out.zip") as z:
        assert sorted(z.namelist()) == ["a.txt", "sub/", "sub/b.txt"]


def test_answered_drops_the_partial_line_of_a_killed_run(tmp_path):
    out = tmp_path / "output.jsonl"
    out.write_bytes(b'{"custom_id": "a"}\n{"custom_id": "b"}\n{"custom_id": "c", "resp')
    assert jobrun.answered(out) == {"a", "b"}
    assert out.read_bytes() == b'{"custom_id": "a"}\n{"custom_id": "b"}\n'  # appends cleanly


def test_driver_runs_a_task_and_reports_its_failure(tmp_path):
    (tmp_path / "job.json").write_text(json.dumps(
        {"kind": "task", "input": "data.txt", "input_name": "data.txt", "total": 1}))
    (tmp_path / "data.txt").write_text("x")
    script = ("import os, pathlib, sys; i = pathlib.Path(os.environ['HPCSERVE_INPUT']); "
              "o = pathlib.Path(os.environ['HPCSERVE_OUTPUT']); "
              "(o / 'seen.txt').write_text(','.join(p.name for p in i.iterdir())); sys.exit(5)")
    r = subprocess.run([sys.executable, jobrun.__file__, "--job", str(tmp_path / "job.json"),
                        "--", sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == jobrun.EXIT_FAILED, r.stderr
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["phase"] == "failed" and "code 5" in progress["reason"]
    assert (tmp_path / "output" / "seen.txt").read_text() == "data.txt"
    with zipfile.ZipFile(tmp_path / "output.zip") as z:  # packed even though it failed
        assert z.read("seen.txt") == b"data.txt"
    assert os.environ.get("HPCSERVE_INPUT") is None


def test_lines_the_driver_cannot_send_are_error_lines_and_a_broken_file_fails(tmp_path):
    """A file changed after it was checked: a line without url becomes its own error line
    (no worker dies, no line is lost), an unreadable line fails the job with its number. The
    engine is Python's own http.server (GET / answers 200, POST is 501)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "job.json").write_text(json.dumps(
        {"kind": "batch", "input": "input.jsonl", "output": "output.jsonl", "total": 3,
         "concurrency": 2, "health_path": "/", "model": "m"}))
    (tmp_path / "input.jsonl").write_text(
        json.dumps({"custom_id": "a", "url": "/v1/chat/completions", "body": {}}) + "\n"
        + json.dumps({"custom_id": "b", "body": {}}) + "\n" + "not json\n")
    r = subprocess.run([sys.executable, jobrun.__file__, "--job", str(tmp_path / "job.json"),
                        "--port", str(port), "--", sys.executable, "-m", "http.server",
                        "--bind", "127.0.0.1", str(port)], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == jobrun.EXIT_FAILED, r.stderr
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["phase"] == "failed" and "line 3" in progress["reason"]
    out = {x["custom_id"]: x for x in map(json.loads,
                                          (tmp_path / "output.jsonl").read_text().splitlines())}
    assert sorted(out) == ["a", "b"]
    assert out["a"]["response"]["status_code"] == 501 and out["a"]["error"]
    assert out["b"]["response"] is None and "could not be sent" in out["b"]["error"]["message"]
    assert progress["done"] == 2 and progress["failed"] == 2
