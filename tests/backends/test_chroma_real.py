"""Real Chroma (`chroma run` of PyPI's chromadb) launched from the `chroma` recipe by a real
Jupyter server on a local target, used with chromadb.HttpClient through the session's endpoint
and through the server's proxy, then stopped.

Chroma runs from its own environment, <repo>/.venv-chroma, made by scripts/setup-engine-envs.sh
(`make engine-envs`); the client runs there too, as the project's environment has no chromadb.
Without it these tests skip, except on CI (CI=true), where a missing environment is a failure.
Every vector is given (no embedding function: Chroma's default one downloads a model), so the
nearest neighbours and their distances are known in advance.

    scripts/setup-engine-envs.sh chroma
    .venv/bin/python -m pytest tests/backends/test_chroma_real.py
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from real_engines import (
    TOKEN,
    JupyterServer,
    engine_of,
    engine_python,
    jupyter_with_target,
    runner_of,
    session_processes,
    survivors,
)

from hpcserve_jupyter.remote import RemoteHpcserve
from hpcserve_jupyter.sessions import Session, State

pytestmark = pytest.mark.timeout(300)

TARGET = "local-chroma"
SETUP = "scripts/setup-engine-envs.sh chroma"

# Four points whose squared L2 distances (Chroma's default space) are known exactly.
VECTORS = {"north": [1.0, 0.0, 0.0], "north-east": [0.8, 0.6, 0.0], "east": [0.0, 1.0, 0.0],
           "up": [0.0, 0.0, 1.0]}
QUERIES = [[1.0, 0.0, 0.0], [0.0, 0.1, 1.0]]
# Per query: the two nearest ids and their squared distances, nearest first.
NEAREST = [(["north", "north-east"], [0.0, 0.4]), (["up", "east"], [0.01, 1.81])]

# Runs in .venv-chroma: argv = base URL, collection name, Jupyter token ("" for none). Prints
# what the server answered, as JSON.
CLIENT = """
import json, sys
import chromadb
from chromadb.config import Settings

url, name, token = sys.argv[1:4]
vectors, queries = json.loads(sys.argv[4]), json.loads(sys.argv[5])
headers = {"Authorization": f"token {token}"} if token else None
client = chromadb.HttpClient(host=url, headers=headers,
                             settings=Settings(anonymized_telemetry=False))
beat = client.heartbeat()
collection = client.create_collection(name, embedding_function=None)
collection.add(ids=list(vectors), embeddings=list(vectors.values()),
               documents=[f"the {k} point" for k in vectors],
               metadatas=[{"key": k} for k in vectors])
found = collection.query(query_embeddings=queries, n_results=2,
                         include=["distances", "documents", "metadatas"])
print(json.dumps({"heartbeat": beat, "count": collection.count(), "ids": found["ids"],
                  "distances": found["distances"], "documents": found["documents"],
                  "metadatas": found["metadatas"],
                  "collections": sorted(c.name for c in client.list_collections())}))
"""


class Served:
    def __init__(self, server: JupyterServer, hp: RemoteHpcserve, session: Session,
                 python: Path) -> None:
        self.server, self.hp, self.session, self.python = server, hp, session, python

    def describe(self) -> str:
        current = self.hp.status(self.session.id)
        return (f"session {current.name} is {current.state}: {current.reason}\n"
                f"--- engine log ---\n{self.hp.logs(current.id, tail=40)}")

    def client(self, url: str, collection: str, token: str = "") -> dict[str, Any]:
        """Run the chromadb client against `url`; what it read back."""
        done = subprocess.run([str(self.python), "-c", CLIENT, url, collection, token,
                               json.dumps(VECTORS), json.dumps(QUERIES)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{done.stderr[-3000:]}\n{self.describe()}"
        return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    python = engine_python(".venv-chroma", SETUP)
    with jupyter_with_target(tmp_path_factory.mktemp("chroma"), TARGET, python) as (server, hp):
        session = hp.launch("chroma", on=TARGET, wait=True, timeout=120)
        served = Served(server, hp, session, python)
        if session.state != State.READY:
            pytest.fail(f"Chroma did not get ready\n{served.describe()}", pytrace=False)
        yield served


def check_answers(found: dict[str, Any]) -> None:
    assert found["count"] == len(VECTORS)
    assert found["heartbeat"] > 0
    assert found["ids"] == [ids for ids, _ in NEAREST]
    for got, (_, want) in zip(found["distances"], NEAREST, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    assert found["documents"] == [[f"the {k} point" for k in ids] for ids, _ in NEAREST]
    assert found["metadatas"] == [[{"key": k} for k in ids] for ids, _ in NEAREST]


def test_chroma_runs_from_its_environment_in_the_session_directory(served: Served) -> None:
    session = served.session
    assert (session.backend, session.api_flavour) == ("chroma", "chroma")
    engine = engine_of(session.id)
    port = int(session.endpoints[0].rsplit(":", 1)[1])
    chroma = served.python.parent / "chroma"  # found beside the target's `python:`
    # `chroma` is a console script: its interpreter runs it with the backend's arguments.
    assert engine.cmdline() == [str(served.python), str(chroma), "run", "--host", "127.0.0.1",
                                "--port", str(port)]
    assert session.endpoints == [f"http://127.0.0.1:{port}"]
    assert Path(engine.cwd()).name == session.id  # the session directory


def test_vectors_through_the_sessions_endpoint(served: Served) -> None:
    found = served.client(served.session.endpoints[0], "direct-vectors")
    check_answers(found)
    assert found["collections"] == ["direct-vectors"]
    # Stored where the recipe says: ./chroma in the session directory (chroma run's default).
    workdir = Path(engine_of(served.session.id).cwd())
    assert (workdir / "chroma" / "chroma.sqlite3").is_file()


def test_vectors_through_the_jupyter_proxy(served: Served) -> None:
    url = f"{served.server.url}hpcserve/proxy/{served.session.id}"
    found = served.client(url, "proxied-vectors", TOKEN)
    check_answers(found)
    # The same server behind both: the collection made directly is there too.
    assert found["collections"] == ["direct-vectors", "proxied-vectors"]
    # The proxy asks for the Jupyter token like every other route.
    beat = httpx.get(f"{url}/api/v2/heartbeat", timeout=10, trust_env=False)
    assert beat.status_code == 403, beat.status_code
    with_token = httpx.get(f"{url}/api/v2/heartbeat", timeout=10, trust_env=False,
                           headers={"Authorization": f"token {TOKEN}"})
    assert with_token.status_code == 200 and "nanosecond heartbeat" in with_token.json()


def test_stop_leaves_no_chroma_process(served: Served) -> None:
    runner = runner_of(served.session.id)
    tree = [runner, *runner.children(recursive=True)]
    mine = (runner.pid, runner.create_time())
    assert {p.pid for p in tree} == {p.pid for p in session_processes(mine, served.session.id)}

    stopped = served.hp.stop(served.session.id)
    assert stopped.state == State.STOPPED, stopped.reason
    assert not survivors(tree), "still running after stop"
    assert not session_processes(mine, served.session.id)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{served.session.endpoints[0]}/api/v2/heartbeat", timeout=5, trust_env=False)
