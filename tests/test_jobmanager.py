"""One-off batch jobs on the local target, end to end with the real llama.cpp server on the
shipped SmolLM2 model: submit, progress, done, results; engine rejections, an engine that does
not start, cancel and resume, the time limit, and input refused before anything runs.

Assertions are on what the code controls (ids, counts, states, files, requests the engine
logged), never on an answer's wording."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from facade_fixtures import facade_fixture
from hpcserve_jupyter import batchfile
from hpcserve_jupyter.errors import BadInput
from hpcserve_jupyter.jobs import JobState
from job_inputs import chat_lines, write

pytestmark = pytest.mark.model

hp = facade_fixture(scope="module")


def output_lines(path: str | Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def posts_in_log(job) -> int:
    text = (Path(job.handle["jobdir"]) / "engine.log").read_text(errors="replace")
    return text.count('"POST /v1/')


def test_batch_job_end_to_end(hp, tmp_path):
    lines = chat_lines(10, max_tokens=6)
    lines[3]["body"] = {"messages": 5}  # well formed for the file, rejected by the engine
    job = hp.submit_job("smollm2-135m", write(tmp_path / "in.jsonl", lines), concurrency=3,
                        name="e2e")
    assert job.state == JobState.PENDING and job.total == 10
    seen: list[tuple[str, int]] = []
    final = job.wait(timeout=300, progress=lambda j: seen.append((str(j.state), j.done)))
    assert final.state == JobState.DONE, (final.reason, final.log_tail)
    assert (final.done, final.failed) == (10, 1)
    states = [s for s, _ in seen]
    assert states[-1] == "done" and "running" in states
    assert [d for _, d in seen] == sorted(d for _, d in seen)  # progress only moves forward
    out = output_lines(final.output)
    assert sorted(x["custom_id"] for x in out) == sorted(x["custom_id"] for x in lines)
    by_id = {x["custom_id"]: x for x in out}
    assert by_id["q3"]["error"] and by_id["q3"]["response"]["status_code"] >= 400
    for cid, x in by_id.items():
        if cid != "q3":
            assert x["error"] is None and x["response"]["status_code"] == 200
            assert x["response"]["body"]["usage"]["completion_tokens"] <= 6
            assert x["response"]["body"]["model"] == "smollm2-135m"  # filled in by the job
    assert posts_in_log(final) == 10
    assert stat.S_IMODE(os.stat(final.output).st_mode) == 0o600
    frame = job.results()
    assert list(frame.columns[:2]) == ["custom_id", "status_code"]
    assert len(frame) == 10 and frame.set_index("custom_id").loc["q3", "error"]
    assert frame.set_index("custom_id").loc["q0", "text"]
    records = job.results(frame=False)  # in the input's order, whatever order they arrived in
    assert [r["custom_id"] for r in records] == [x["custom_id"] for x in lines]
    assert list(frame["custom_id"]) == [x["custom_id"] for x in lines]
    # The engine ended with the job: nothing listens on the job's port any more.
    assert hp.job_status("e2e").state == JobState.DONE
    assert hp.jobs(live_only=True) == []


def test_embedding_batch(hp, tmp_path):
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"input": f"sentence number {i}"}} for i in range(4)]
    job = hp.submit_job("smollm2-135m-embeddings", write(tmp_path / "emb.jsonl", lines))
    final = job.wait(timeout=300)
    assert final.state == JobState.DONE, (final.reason, final.log_tail)
    records = job.results(frame=False)
    assert [r["custom_id"] for r in sorted(records, key=lambda r: r["custom_id"])] == \
        ["e0", "e1", "e2", "e3"]
    # llama-cpp-python serves this model's embeddings per token (no pooling): a list of
    # vectors per line, every vector the model's width (576 for SmolLM2-135M)
    widths = {len(vector) for r in records for vector in r["embedding"]}
    assert widths == {576}


def test_batch_job_from_prompts(hp):
    job = hp.batch_job("smollm2-135m", ["a", "b", "c"], params={"max_tokens": 4})
    final = job.wait(timeout=300)
    assert final.state == JobState.DONE, final.reason
    assert [r["custom_id"] for r in job.results(frame=False)] != []
    assert sorted(r["custom_id"] for r in job.results(frame=False)) == \
        ["request-0", "request-1", "request-2"]


def test_malformed_input_refused_before_anything_runs(hp, tmp_path):
    before = len(hp.jobs())
    bad = tmp_path / "bad.jsonl"
    good = json.dumps(chat_lines(1)[0])
    bad.write_text("\n".join([good, "{not json", good,
                              json.dumps({"custom_id": "x", "url": "/v1/nope", "body": {}}),
                              json.dumps({"custom_id": "y", "url": "/v1/completions",
                                          "body": {"prompt": "p", "stream": True}})]) + "\n")
    with pytest.raises(BadInput) as err:
        hp.submit_job("smollm2-135m", bad)
    text = str(err.value)
    for line in ("line 2:", "line 3:", "line 4:", "line 5:"):
        assert line in text
    assert "line 1:" not in text
    assert len(hp.jobs()) == before
    assert not list((hp.service.home / "jobs").glob("*/job.json")) or \
        len(list((hp.service.home / "jobs").glob("*/job.json"))) == before


def test_model_mismatch_and_bad_options_refused(hp, tmp_path):
    path = write(tmp_path / "m.jsonl", [{**chat_lines(1)[0], "body": {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}}])
    with pytest.raises(BadInput, match="serves 'smollm2-135m'"):
        hp.submit_job("smollm2-135m", path)
    ok = write(tmp_path / "ok.jsonl", chat_lines(1))
    with pytest.raises(BadInput, match="concurrency"):
        hp.submit_job("smollm2-135m", ok, concurrency=0)
    with pytest.raises(BadInput, match="vector-db"):
        hp.submit_job("qdrant", ok)
    with pytest.raises(BadInput, match="does not exist"):
        hp.submit_job("smollm2-135m", tmp_path / "missing.jsonl")


def test_engine_that_does_not_start_fails_the_job_with_its_log(hp, tmp_path):
    job = hp.submit_job("smollm2-135m", write(tmp_path / "in.jsonl", chat_lines(2)),
                        **{"engine_args.no_such_flag": "1"})
    final = job.wait(timeout=120)
    assert final.state == JobState.FAILED
    assert "before it answered its health check" in final.reason
    assert "no_such_flag" in final.log_tail  # the engine's own complaint, from its log


def test_cancel_keeps_partial_output_and_resume_completes_it(hp, tmp_path):
    lines = chat_lines(40, max_tokens=48)
    job = hp.submit_job("smollm2-135m", write(tmp_path / "long.jsonl", lines), concurrency=1)
    deadline = time.monotonic() + 300
    while hp.job_status(job.id).done < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    cancelled = hp.cancel_job(job.id)
    assert cancelled.state == JobState.CANCELLED
    partial = output_lines(cancelled.output)
    assert 3 <= len(partial) < 40
    assert cancelled.done == len(partial)
    answered = {x["custom_id"] for x in partial}

    again = hp.submit_job("smollm2-135m", tmp_path / "long.jsonl", resume=job.id,
                          concurrency=4, **{"engine_args.n_ctx": "512"})
    assert again.resumed == len(partial)
    final = again.wait(timeout=600)
    assert final.state == JobState.DONE, (final.reason, final.log_tail)
    out = output_lines(final.output)
    ids = [x["custom_id"] for x in out]
    assert sorted(ids) == sorted(x["custom_id"] for x in lines)  # each id once
    assert out[:len(partial)] == partial  # the earlier answers kept as they were
    assert posts_in_log(final) == 40 - len(partial)  # none of them asked again
    assert answered.isdisjoint(ids[len(partial):])


def test_time_limit_ends_the_job_as_timeout(hp, tmp_path):
    job = hp.submit_job("smollm2-135m", write(tmp_path / "t.jsonl", chat_lines(200, 64)),
                        concurrency=1, time="12s")
    final = job.wait(timeout=120)
    assert final.state == JobState.TIMEOUT, final.reason
    assert "time limit" in final.reason
    assert 0 < len(output_lines(final.output)) < 200  # what it answered in time is kept


def test_answered_ids_of_a_killed_run_ignore_its_partial_line(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text('{"custom_id": "a"}\n{"custom_id": "b"}\n{"custom_id": "c"')
    assert batchfile.answered_ids(out) == {"a", "b"}


def test_cli_job_commands(run_cli, tmp_path):
    path = write(tmp_path / "c.jsonl", chat_lines(3, max_tokens=4))
    r = run_cli("job", "submit", "smollm2-135m", "--input", str(path), "--wait",
                "--output", str(tmp_path / "res.jsonl"), "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["state"] == "done" and (job["total"], job["done"], job["failed"]) == (3, 3, 0)
    for key in ("id", "name", "state", "total", "done", "failed", "elapsed_s", "eta_s", "output"):
        assert key in job
    assert job["output"] == str(tmp_path / "res.jsonl")
    assert len(output_lines(tmp_path / "res.jsonl")) == 3
    r = run_cli("job", "status", "--all")
    assert job["id"] in r.stdout and "done" in r.stdout
    r = run_cli("job", "results", job["id"])
    assert sorted(json.loads(x)["custom_id"] for x in r.stdout.splitlines()) == ["q0", "q1", "q2"]
    r = run_cli("job", "logs", job["id"], "--tail", "0")
    assert "[hpcserve-job] done" in r.stdout
    r = run_cli("job", "cancel", job["id"])
    assert r.returncode == 0 and "done" in r.stderr  # an ended job stays as it ended


def test_cli_bad_input_is_a_usage_error_without_traceback(run_cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "a", "url": "/v1/chat/completions", "body": {}}\nnope\n')
    r = run_cli("job", "submit", "smollm2-135m", "--input", str(bad))
    assert r.returncode == 2 and "line 2:" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("job", "submit", "smollm2-135m", "--input", str(bad), "--concurrency", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run_cli("job", "status", "nosuchjob")
    assert r.returncode == 2 and "no job 'nosuchjob'" in r.stderr
    r = run_cli("job", "submit", "smollm2-135m")
    assert r.returncode == 2 and "--input" in r.stderr
    good = write(tmp_path / "good.jsonl", chat_lines(1))
    r = run_cli("job", "submit", "smollm2-135m", "--input", str(good), "--set", "concurrency=3")
    assert r.returncode == 2 and "use --concurrency" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("job", "status", "--all", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == []  # nothing was recorded


def test_task_recipe_over_a_directory(hp, tmp_path):
    source = tmp_path / "docs"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("alpha beta gamma")
    (source / "sub" / "b.md").write_text("# title\nsome text")
    job = hp.submit_job("embed-files", source, output=tmp_path / "vectors")
    assert job.kind == "task" and job.total == 2
    final = job.wait(timeout=300)
    assert final.state == JobState.DONE, (final.reason, final.log_tail)
    assert (final.done, final.total) == (2, 2)
    out = job.results()
    assert out == tmp_path / "vectors"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["a.txt.json", "sub/b.md.json"]
    vectors = [json.loads((out / f).read_text())["embedding"] for f in files]
    assert {len(v) for v in vectors} == {576}  # one pooled vector per file
    zipped = hp.job_results(job.id, output=tmp_path / "vectors.zip")
    import zipfile

    with zipfile.ZipFile(zipped) as z:
        assert sorted(n for n in z.namelist() if not n.endswith("/")) == files


def test_task_input_zip_slip_refused_before_anything_runs(hp, tmp_path):
    import zipfile

    before = len(hp.jobs())
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ok.txt", "fine")
        z.writestr("../../outside.txt", "evil")
    with pytest.raises(BadInput, match="climbs out"):
        hp.submit_job("embed-files", archive)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "pw").symlink_to("/etc/passwd")
    with pytest.raises(BadInput, match="links outside"):
        hp.submit_job("embed-files", linked)
    assert len(hp.jobs()) == before
    assert not [d for d in (hp.service.home / "jobs").iterdir()
                if not (d / "job.json").exists()]  # no half-made job directory


def test_task_image_must_be_on_the_allow_list(tmp_path, monkeypatch):
    from facade_fixtures import make_facade

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "t.yaml").write_text(
        "name: imaged\ncategory: task\ncommand: [echo, hi]\nimages: {task: docker://evil/x:1}\n")
    monkeypatch.setenv("HPCSERVE_RECIPES", str(tmp_path / "r"))
    configs = {"local": {"kind": "local", "allowed_images": ["docker://ours/*"]}}
    (tmp_path / "in.txt").write_text("x")
    with make_facade(tmp_path / "home", target_configs=configs) as h:
        with pytest.raises(BadInput) as err:
            h.submit_job("imaged", tmp_path / "in.txt")
        assert "docker://evil/x:1" in str(err.value) and "docker://ours/*" in str(err.value)
        assert h.jobs() == []
