"""One-off jobs over the REST API on a real jupyter_server: submit a batch job (the real
llama.cpp server on the shipped SmolLM2 model), follow it by GET and on /events, read its
results and logs, cancel one mid-way; bad bodies and input files refused with 400 naming the
field or the lines, with nothing recorded; unknown ids 404. Then RemoteHpcserve's job calls
against the same server.

Assertions are on what the code controls (ids, counts, states, files, headers), never on an
answer's wording."""

from __future__ import annotations

import asyncio
import getpass
import json
import stat
from pathlib import Path

import httpx
import pytest
from tornado.httpclient import HTTPClientError

from hpcserve_jupyter.errors import NotFound, NotReady
from hpcserve_jupyter.jobs import JobState
from hpcserve_jupyter.remote import RemoteHpcserve
from job_inputs import chat_lines, write

pytestmark = pytest.mark.timeout(60)
API = ("hpcserve", "api")


async def call(jp_fetch, *parts, **kwargs):
    """(status, body as JSON or text) without raising on an error status."""
    r = await jp_fetch(*API, *parts, raise_error=False, **kwargs)
    text = r.body.decode()
    assert "Traceback" not in text
    ctype = r.headers.get("Content-Type", "")
    return r.code, (json.loads(text) if ctype.startswith("application/json") else text)


async def submit(jp_fetch, body: dict) -> tuple[int, dict]:
    return await call(jp_fetch, "jobs", method="POST", body=json.dumps(body))


async def until(jp_fetch, job_id: str, done, limit: float = 240) -> dict:
    """GET the job every 0.2 s until done(job) holds (the test's timeout bounds the wait)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while True:
        code, job = await call(jp_fetch, "jobs", job_id)
        assert code == 200, job
        if done(job) or job["state"] in ("failed", "timeout") or loop.time() > end:
            return job
        await asyncio.sleep(0.2)


async def cancel_live(ext) -> None:
    """Leave no engine running, whatever the test did."""
    for job in ext.service.jobs(live_only=True):
        await ext.service.cancel_job(job.id)


class EventReader:
    """/hpcserve/api/events read in the background until `stop(event)` holds."""

    def __init__(self, base: str, headers: dict[str, str], stop) -> None:
        self.events: list[dict] = []
        self.task = asyncio.ensure_future(self._read(base, headers, stop))

    async def _read(self, base: str, headers: dict[str, str], stop) -> None:
        async with httpx.AsyncClient(timeout=None) as client, client.stream(
                "GET", base + "hpcserve/api/events", headers=headers) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    self.events.append(json.loads(line[6:]))
                    if stop(self.events[-1]):
                        return

    async def started(self) -> None:
        while not self.events:
            await asyncio.sleep(0.05)


# ---------------------------------------------------------------------- end to end


@pytest.mark.model
@pytest.mark.timeout(300)
async def test_batch_job_over_rest(jp_fetch, ext, base, jp_auth_header, jp_root_dir):
    ids = [f"q{i}" for i in range(5)]
    write(jp_root_dir / "prompts.jsonl", chat_lines(5))
    ended = {"done", "failed", "cancelled", "timeout"}
    reader = EventReader(base, jp_auth_header, lambda e: e.get("job", {}).get("state") in ended)
    await reader.started()
    assert reader.events[0]["type"] == "snapshot" and reader.events[0]["jobs"] == []
    try:
        r = await jp_fetch(*API, "jobs", method="POST", body=json.dumps(
            {"recipe": "smollm2-135m", "input": "prompts.jsonl", "concurrency": 2,
             "name": "rest-e2e", "overrides": {"time": "10m"}}))
        job = json.loads(r.body)
        assert r.code == 201 and r.headers["Location"].endswith(f"/hpcserve/api/jobs/{job['id']}")
        # A relative input starts at the server's root directory.
        assert job["input"] == str(jp_root_dir / "prompts.jsonl")
        assert (job["name"], job["state"], job["total"], job["concurrency"]) == (
            "rest-e2e", "pending", 5, 2)
        assert "spec" not in job and "handle" not in job
        assert job["owner"] == getpass.getuser()  # a shared-token login: the server's account
        assert set(job) >= {"elapsed_s", "eta_s", "resources", "owner", "output"}
        assert job["resources"]["time_s"] == 600
        code, listed = await call(jp_fetch, "jobs")
        assert [j["id"] for j in listed["jobs"]] == [job["id"]]

        final = await until(jp_fetch, "rest-e2e", lambda j: j["state"] == "done")
        assert final["state"] == "done", (final["reason"], final["log_tail"])
        assert (final["done"], final["failed"], final["eta_s"]) == (5, 0, 0.0)
        await asyncio.wait_for(reader.task, 30)

        r = await jp_fetch(*API, "jobs", job["id"], "results")
        assert r.headers["Content-Type"] == "application/x-ndjson"
        assert r.headers["Content-Disposition"] == 'attachment; filename="rest-e2e.jsonl"'
        lines = [json.loads(x) for x in r.body.decode().splitlines()]
        assert sorted(x["custom_id"] for x in lines) == ids  # one line per input line
        assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in lines)
        output = Path(final["output"])
        assert r.body == output.read_bytes()
        # Complete lines only: a line longer than a read chunk whole, a half-written one not.
        long = json.dumps({"custom_id": "long", "pad": "x" * 300_000}).encode() + b"\n"
        with output.open("ab") as fh:
            fh.write(long + b'{"custom_id": "half')
        r = await jp_fetch(*API, "jobs", job["id"], "results")
        assert r.body.endswith(b"\n" + long) and b'"half' not in r.body

        code, full = await call(jp_fetch, "jobs", job["id"], "logs", params={"tail": "0"})
        assert code == 200 and full.strip()
        r = await jp_fetch(*API, "jobs", job["id"], "logs", params={"tail": "2"})
        assert r.headers["Content-Type"].startswith("text/plain")
        assert r.body.decode().splitlines() == full.splitlines()[-2:]
        r = await jp_fetch(*API, "jobs", job["id"], "logs", params={"follow": "1"})
        assert r.body.decode() == full  # an ended job's log, whole, then the stream ends
        code, live = await call(jp_fetch, "jobs", params={"live": "1"})
        assert live == {"jobs": []}
    finally:
        reader.task.cancel()
        await cancel_live(ext)

    mine = [e for e in reader.events[1:] if e.get("job", {}).get("id") == job["id"]]
    kinds = [e["type"] for e in mine]
    assert kinds[0] == "created" and kinds[-1] == "done" and "running" in kinds, kinds
    assert all("session" not in e for e in mine)
    states = [e["job"]["state"] for e in mine]
    assert states[0] == "pending" and states[-1] == "done"
    done_counts = [e["job"]["done"] for e in mine]
    assert done_counts == sorted(done_counts) and done_counts[-1] == 5


@pytest.mark.model
@pytest.mark.timeout(300)
async def test_cancel_a_running_job_keeps_its_output(jp_fetch, ext, tmp_path):
    lines = chat_lines(200, max_tokens=64)
    try:
        code, job = await submit(jp_fetch, {"recipe": "smollm2-135m", "concurrency": 1,
                                            "input": str(write(tmp_path / "in.jsonl", lines))})
        assert code == 201, job
        running = await until(jp_fetch, job["id"], lambda j: j["done"] >= 1)
        assert running["state"] == "running", running
        code, cancelled = await call(jp_fetch, "jobs", job["id"], method="DELETE")
        assert code == 200 and cancelled["state"] == "cancelled", cancelled
        assert 1 <= cancelled["done"] < 200
        code, again = await call(jp_fetch, "jobs", job["id"], method="DELETE")  # no-op
        assert code == 200 and again["state"] == "cancelled"
        assert again["ended_at"] == cancelled["ended_at"]
        code, text = await call(jp_fetch, "jobs", job["id"], "results")
        kept = [json.loads(x)["custom_id"] for x in text.splitlines()]
        assert 1 <= len(kept) < 200 and len(set(kept)) == len(kept)
        assert set(kept) <= {x["custom_id"] for x in lines}
    finally:
        await cancel_live(ext)


# ---------------------------------------------------------------------- refusals


MALFORMED = "\n".join([
    json.dumps(chat_lines(1)[0]),
    '{"custom_id": "a", "method": "POST", ',
    json.dumps(chat_lines(1)[0]),
    json.dumps({**chat_lines(1, prefix="s")[0], "url": "/v1/chat"}),
]) + "\n"


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"recipe": "smollm2-135m", "input": "IN", "bogus": 1}, 400, "unknown field 'bogus'"),
    ({"input": "IN"}, 400, "missing field 'recipe'"),
    ({"recipe": "smollm2-135m"}, 400, "missing field 'input'"),
    ({"recipe": "smollm2-135m", "input": "IN", "concurrency": 0}, 400, "field 'concurrency'"),
    ({"recipe": "smollm2-135m", "input": "IN", "runner": "fast"}, 400, "field 'runner'"),
    ({"recipe": "smollm2-135m", "input": "IN", "concurrency": "4"}, 400, "field 'concurrency'"),
    ({"recipe": "smollm2-135m", "input": "IN", "concurrency": True}, 400, "field 'concurrency'"),
    ({"recipe": "smollm2-135m", "input": "IN", "concurrency": 100000}, 400,
     "concurrency must be 1 to 256"),
    ({"recipe": "smollm2-135m", "input": "IN", "overrides": "gpus=1"}, 400, "field 'overrides'"),
    ({"recipe": "smollm2-135m", "input": "IN", "overrides": {"gpu": 1}}, 400,
     "unknown override 'gpu'"),
    ({"recipe": "smollm2-135m", "input": "IN", "name": "bad name!"}, 400, "invalid job name"),
    ({"recipe": "smollm2-135m", "input": "a\x00b"}, 400, "field 'input'"),
    ({"recipe": "smollm2-135m", "input": "x" * 300}, 400, "field 'input'"),
    ({"recipe": "smollm2-135m", "input": "IN", "output": "\ud800"}, 400, "field 'output'"),
    ({"recipe": "smollm2-135m", "input": "nosuch.jsonl"}, 400, "does not exist"),
    ({"recipe": "smollm2-135m", "input": "BAD"}, 400, "has 3 problem(s), nothing was run"),
    ({"recipe": "nope", "input": "IN"}, 404, "unknown recipe 'nope'"),
    ({"recipe": "qdrant", "input": "IN"}, 400, "need an inference or embedding recipe"),
    ({"recipe": "smollm2-135m", "input": "IN", "target": "mars"}, 404, "mars"),
    ({"recipe": "smollm2-135m", "input": "IN", "resume": "nosuch"}, 404, "no job 'nosuch'"),
])
async def test_submit_refuses_bad_input_and_records_nothing(jp_fetch, ext, tmp_path, body,
                                                            status, words):
    good = write(tmp_path / "in.jsonl", chat_lines(2))
    (tmp_path / "bad.jsonl").write_text(MALFORMED)
    paths = {"IN": str(good), "BAD": str(tmp_path / "bad.jsonl")}
    body = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    code, err = await submit(jp_fetch, body)
    assert code == status, err
    assert words in err["error"], err
    assert set(err) >= {"error", "detail"}
    if "unknown field" in words:
        assert err["detail"] == ("allowed fields: recipe, input, output, target, backend, name, "
                                 "concurrency, resume, overrides, runner")
    if body.get("input") == paths["BAD"]:  # every bad line named, the good ones not
        assert "line 2: not valid JSON" in err["error"] and "line 3: " in err["error"]
        assert "line 4: " in err["error"] and "line 1:" not in err["error"]
    code, listed = await call(jp_fetch, "jobs")
    assert listed == {"jobs": []}  # nothing recorded, nothing started
    assert ext.service.jobs() == []


async def test_bodies_that_are_not_objects_are_400(jp_fetch, ext):
    for raw, words in [("", "the request body is empty"), ("[1]", "not list"),
                       ('{"recipe": ', "not valid JSON"), ("[" * 100000, "nested too deeply")]:
        code, err = await call(jp_fetch, "jobs", method="POST", body=raw,
                               allow_nonstandard_methods=True)
        assert code == 400 and words in err["error"], (raw[:20], err)
    assert ext.service.jobs() == []


async def test_unknown_job_is_404_everywhere(jp_fetch):
    for method, parts in [("GET", ()), ("DELETE", ()), ("GET", ("results",)),
                          ("GET", ("logs",))]:
        code, err = await call(jp_fetch, "jobs", "nosuch", *parts, method=method)
        assert code == 404 and err["error"] == "no job 'nosuch'", (method, parts, err)
        assert err["type"] == "NotFound"


async def test_bad_query_parameters_are_400(jp_fetch):
    code, err = await call(jp_fetch, "jobs", params={"live": "maybe"})
    assert code == 400 and "'live'" in err["error"]
    code, err = await call(jp_fetch, "jobs", "nosuch", "logs", params={"tail": "-1"})
    assert code == 400 and "'tail' must be at least 0" in err["error"]


async def test_405_lists_the_job_methods(jp_fetch):
    for parts, allowed in [(("jobs",), "GET, POST"), (("jobs", "x"), "GET, DELETE"),
                           (("jobs", "x", "results"), "GET")]:
        with pytest.raises(HTTPClientError) as exc:
            await jp_fetch(*API, *parts, method="PUT", body="{}")
        assert exc.value.code == 405 and exc.value.response.headers["Allow"] == allowed


async def test_the_document_describes_the_job_api(jp_fetch):
    _code, doc = await call(jp_fetch, "openapi.json")
    paths, schemas = doc["paths"], doc["components"]["schemas"]
    assert set(paths["/hpcserve/api/jobs"]) == {"get", "post"}
    assert set(paths["/hpcserve/api/jobs/{id}"]) == {"get", "delete"}
    results = paths["/hpcserve/api/jobs/{id}/results"]["get"]["responses"]["200"]
    assert list(results["content"]) == ["application/x-ndjson"]
    request = schemas["JobRequest"]
    assert request["required"] == ["recipe", "input"]
    assert request["additionalProperties"] is False
    from dataclasses import fields

    from hpcserve_jupyter.jobs import Job

    shown = {f.name for f in fields(Job)} - {"spec", "handle"} | {"elapsed_s", "eta_s",
                                                                  "resources"}
    assert set(schemas["Job"]["properties"]) == shown
    assert schemas["Event"]["properties"]["job"] == {"$ref": "#/components/schemas/Job"}


# ---------------------------------------------------------------------- the remote facade


@pytest.mark.model
@pytest.mark.timeout(300)
async def test_remote_facade_runs_jobs(base, jp_serverapp, ext, tmp_path, monkeypatch):
    token = jp_serverapp.identity_provider.token
    source = write(tmp_path / "in.jsonl", chat_lines(4))
    monkeypatch.chdir(tmp_path)  # the kernel's directory: relative paths start here

    def run() -> dict:
        out: dict = {}
        with RemoteHpcserve(base, token) as hp:
            handle = hp.submit_job("smollm2-135m", "in.jsonl", concurrency=2, name="remote-1")
            out["submitted"] = handle.job
            try:
                hp.wait_job(handle.id, timeout=0)
            except NotReady as exc:
                out["not_ready"] = exc.message
            seen: list = []
            out["final"] = handle.wait(progress=seen.append)
            out["seen"] = seen
            out["rows"] = handle.results(frame=False)
            out["frame"] = handle.results()
            out["copy"] = hp.job_results("remote-1", output=tmp_path / "copy.jsonl")
            out["into_dir"] = hp.job_results(handle.id, output=tmp_path)
            out["default"] = hp.job_results(handle.id)
            out["jobs"] = hp.jobs()
            out["live"] = hp.jobs(live_only=True)
            out["logs"] = hp.job_logs(handle.id, tail=3)
            out["cancel_ended"] = hp.cancel_job(handle.id)
            batch = hp.batch_job("smollm2-135m", ["a", "b", "c"], params={"max_tokens": 4})
            out["batch"] = batch.wait(timeout=240)
            out["batch_rows"] = batch.results(frame=False)
            try:
                hp.job_status("nosuch")
            except NotFound as exc:
                out["missing"] = exc.message
        return out

    try:
        out = await asyncio.to_thread(run)
    finally:
        await cancel_live(ext)
    submitted, final = out["submitted"], out["final"]
    assert submitted.state == JobState.PENDING and submitted.total == 4
    assert submitted.input == str(source)
    assert out["not_ready"].startswith("job remote-1 is still ")
    assert out["not_ready"].endswith(" after 0 s")
    assert final.state == JobState.DONE, (final.reason, final.log_tail)
    assert (final.done, final.failed) == (4, 0)
    assert out["seen"][-1].state == JobState.DONE and out["seen"][0].state != JobState.DONE
    assert [j.done for j in out["seen"]] == sorted(j.done for j in out["seen"])
    ids = [f"q{i}" for i in range(4)]
    assert sorted(r["custom_id"] for r in out["rows"]) == ids
    assert sorted(out["frame"]["custom_id"]) == ids
    served = Path(final.output).read_bytes()
    for key in ("copy", "into_dir", "default"):
        path = out[key]
        assert path.read_bytes() == served, key
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, key
    assert out["copy"] == tmp_path / "copy.jsonl"
    assert out["into_dir"] == tmp_path / Path(final.output).name
    assert out["default"].name == f"{final.id}.jsonl" and out["default"].parent != tmp_path
    assert [j.id for j in out["jobs"]] == [final.id] and out["live"] == []
    assert len(out["logs"].splitlines()) <= 3
    assert out["cancel_ended"].state == JobState.DONE
    assert out["batch"].state == JobState.DONE and out["batch"].total == 3
    assert sorted(r["custom_id"] for r in out["batch_rows"]) == [f"request-{i}" for i in range(3)]
    assert out["missing"] == "no job 'nosuch'"
