"""The Tapis target's pure parts (ids, bodies, states, config, error mapping) and its client
plumbing (timeouts, tenant_id, credentials) against the stand-in through real tapipy."""

from __future__ import annotations

import datetime as dt
import socket
import time
from pathlib import Path

import pytest
import requests
from tapipy import errors as te

from hpcserve_jupyter.errors import BadInput, HpcserveError, RecipeError, TargetUnreachable
from hpcserve_jupyter.spec import API_KEY, HOST, PORT, PYTHON, ServeSpec
from hpcserve_jupyter.targets.base import LaunchRequest, Phase
from hpcserve_jupyter.targets.tapis import deploy, ids, states
from hpcserve_jupyter.targets.tapis.auth import (
    Credentials,
    TapisSession,
    TimeoutSession,
    resolve_credentials,
)
from hpcserve_jupyter.targets.tapis.config import TapisPodsConfig
from hpcserve_jupyter.targets.tapis.errors import TapisAuthError, TapisNotFound, map_error
from hpcserve_jupyter.targets.tapis.target import TapisPodsTarget
from tapis_standin.conftest import PASSWORD, USERNAME

KEY = "hps-0123456789abcdef0123"
BASE = {"base_url": "https://tacc.tapis.io", "username": "jdoe"}


def spec(argv=(PYTHON, "-m", "engine", "--host", HOST, "--port", PORT), **kw) -> ServeSpec:
    base = dict(recipe="r", backend="vllm", category="inference", model="Org/Model-7B",
                served_model_name="m", argv=tuple(argv), env=(("FROM_SPEC", "1"),),
                secret_env=(("VLLM_API_KEY", "api_key"),), health_path="/health",
                api_flavour="openai", nodes=1, gpus=1, gpu_class=None, cpus=4, memory_mb=16384,
                time_s=3600, replicas=1, gpus_per_replica=1, tensor_parallel=1, base_port=None,
                image="vllm/vllm-openai:v0.9", idle_timeout_s=None, max_lifetime_s=None)
    base.update(kw)
    return ServeSpec(**base)


def request(s: ServeSpec, name: str = "my-model-1", sid: str = "a1b2c3d4") -> LaunchRequest:
    return LaunchRequest(session_id=sid, name=name, spec=s, workdir=Path("/nonexistent"),
                         secrets={"api_key": KEY})


def cfg(**kw) -> TapisPodsConfig:
    return TapisPodsConfig.model_validate({**BASE, **kw})


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize(("value", "why"), [
    ("ab", "3-64"), ("a" * 65, "3-64"), ("9abc", "starting with a letter"),
    ("Abc", "lowercase"), ("ab-c", "lowercase"), ("volumes", "reserved"), ("admin", "reserved"),
    ("snapshots", "reserved"), ("templates", "reserved"),
])
def test_invalid_ids_are_bad_input(value, why):
    with pytest.raises(BadInput, match=why):
        ids.check_id(value)


def test_deployment_ids_are_unique_valid_and_short():
    a = ids.deployment_ids("hps", "Llama-3.1 70B Instruct (long name) " * 3, "a1b2c3d4")
    b = ids.deployment_ids("hps", "Llama-3.1 70B Instruct (long name) " * 3, "ffff0000")
    assert a.pod != b.pod and a.volume != b.volume
    assert a.pod == a.deployment and a.volume == a.deployment + "vol"
    assert len(a.deployment) <= ids.MAX_DEPLOYMENT and a.deployment.endswith("a1b2c3d4")
    assert a.deployment.startswith("hpsllama31")
    shared = ids.deployment_ids("hps", "x", "a1b2c3d4", shared_volume="models")
    assert shared.volume == "models"
    with pytest.raises(BadInput, match="reserved"):
        ids.deployment_ids("hps", "x", "a1b2c3d4", shared_volume="volumes")


# --------------------------------------------------------------------------- bodies


def test_pod_body_runs_the_argv_with_placeholders_filled_and_the_key_by_reference(monkeypatch):
    monkeypatch.setenv("MY_HF", "hf_secret_token_value")
    argv = (PYTHON, "-m", "sglang", "--port", PORT, "--host", HOST, "--api-key", API_KEY,
            "--note", "$(NOT_A_VAR)")
    plan = deploy.plan(request(spec(argv=argv)), cfg(hf_token_env="MY_HF", env={"A": "b"}))
    pod = plan.pod
    assert pod["command"] == ["python3"]
    assert pod["arguments"] == ["-m", "sglang", "--port", "8000", "--host", "0.0.0.0",
                                "--api-key", "$(HPCSERVE_API_KEY)", "--note", "$$(NOT_A_VAR)"]
    env = pod["environment_variables"]
    assert env["HPCSERVE_API_KEY"] == KEY and env["VLLM_API_KEY"] == KEY
    assert env["HF_TOKEN"] == env["HUGGING_FACE_HUB_TOKEN"] == "hf_secret_token_value"
    assert env["HPCSERVE_MODEL"] == "Org/Model-7B"
    assert env["HPCSERVE_MODEL_DIR"] == "/app/models/Org_Model-7B"  # FlexServ's layout
    assert env["HF_HOME"] == "/app/models/hf" and env["A"] == "b" and env["FROM_SPEC"] == "1"
    assert set(plan.secrets) == {KEY, "hf_secret_token_value"}
    assert KEY not in repr(plan) and "hf_secret" not in repr(plan)
    assert pod["image"] == "vllm/vllm-openai:v0.9"
    assert pod["networking"] == {"default": {"protocol": "http", "port": 8000}}
    assert pod["resources"] == {"cpu_request": 2000, "cpu_limit": 4000, "mem_request": 8192,
                                "mem_limit": 16384, "gpus": 1}
    assert pod["time_to_stop_default"] == 3600
    assert pod["volume_mounts"] == {"/app/models": {"type": "tapisvolume",
                                                    "source_id": plan.ids.volume, "sub_path": ""}}
    assert plan.volume == {"volume_id": plan.ids.volume, "size_limit": 20480,
                           "description": f"hpcserve model files of {plan.ids.deployment}"}
    assert plan.url == f"{plan.ids.pod}.pods.tacc.tapis.io"


def test_placeholders_in_env_values_are_filled_in_and_the_key_is_a_secret():
    s = spec(env=(("QDRANT__SERVICE__HTTP_PORT", PORT), ("WHERE", f"{HOST}:{PORT}"),
                  ("QDRANT__SERVICE__API_KEY", API_KEY)), argv=("qdrant",))
    plan = deploy.plan(request(s), cfg(port=6333, env={"PY": PYTHON}))
    env = plan.pod["environment_variables"]
    assert env["QDRANT__SERVICE__HTTP_PORT"] == "6333" and env["WHERE"] == "0.0.0.0:6333"
    assert env["PY"] == "python3"
    assert env["QDRANT__SERVICE__API_KEY"] == KEY and KEY in plan.secrets
    assert "HPCSERVE_API_KEY" not in env  # not on the command line: not passed twice


def test_pod_body_defaults_and_config_choices():
    s = spec(cpus=0, memory_mb=0, image=None, model="/abs/model.gguf", max_lifetime_s=60)
    plan = deploy.plan(request(s), cfg(port=5000, python="/opt/py/bin/python",
                                       volume_mounts_shape="spec", model_dir="/data",
                                       networking_key="api", compute_queue="gpuq",
                                       networking={"ip_allow_list": ["10.0.0.0/8"]}))
    pod = plan.pod
    assert pod["image"] == "tapis/flexserv:1.0"
    assert pod["command"] == ["/opt/py/bin/python"] and "5000" in pod["arguments"]
    # FlexServ's sizes when the recipe gives none; the service's minimum time_to_stop
    assert pod["resources"] == {"cpu_request": 1000, "cpu_limit": 2000, "mem_request": 4096,
                                "mem_limit": 8192, "gpus": 1}
    assert pod["time_to_stop_default"] == 300
    assert pod["volume_mounts"] == {plan.ids.volume: {"type": "tapisvolume",
                                                      "mount_path": "/data", "sub_path": ""}}
    assert pod["networking"] == {"api": {"ip_allow_list": ["10.0.0.0/8"], "protocol": "http",
                                         "port": 5000}}
    assert pod["compute_queue"] == "gpuq"
    assert "HPCSERVE_MODEL_DIR" not in pod["environment_variables"]  # a path, not a hub id
    assert plan.url == f"{plan.ids.pod}-api.pods.tacc.tapis.io"
    unlimited = deploy.plan(request(spec(time_s=0, max_lifetime_s=None)), cfg())
    assert unlimited.pod["time_to_stop_default"] == -1
    assert deploy.plan(request(spec()), cfg(time_to_stop=900)).pod["time_to_stop_default"] == 900
    assert deploy.plan(request(spec()), cfg(image="site/allowed:1")).pod["image"] == \
        "site/allowed:1"


@pytest.mark.parametrize(("s", "c", "message"), [
    (spec(nodes=2), {}, "one node"),
    (spec(replicas=2), {}, "one replica"),
    (spec(), {"resources": {"cpu_request": 9000}}, "cpu_request 9000m is above cpu_limit 4000m"),
    (spec(), {"resources": {"mem_limit": 100, "mem_request": 200}}, "mem_request 200 MB is above"),
    (spec(gpus=2), {"max_gpus": 1}, "2 GPUs; the target allows 1"),
    (spec(), {"hf_token_env": "HPCSERVE_SURELY_UNSET"}, "HPCSERVE_SURELY_UNSET, which is not"),
])
def test_bad_resources_are_refused_by_the_plan(s, c, message):
    with pytest.raises(BadInput, match=message):
        deploy.plan(request(s), cfg(**c))


# --------------------------------------------------------------------------- states


def iso(seconds_from_now: float) -> str:
    when = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(seconds=seconds_from_now)
    return when.isoformat()


@pytest.mark.parametrize(("pod", "phase"), [
    ({"status": "REQUESTED"}, Phase.PENDING),
    ({"status": "SPAWNER SETUP"}, Phase.PENDING),
    ({"status": "CREATING"}, Phase.RUNNING),
    ({"status": "AVAILABLE"}, Phase.RUNNING),
    ({"status": "DELETING"}, Phase.STOPPING),
    ({"status": "STOPPED", "time_to_stop_ts": None}, Phase.STOPPED),
    ({"status": "STOPPED", "time_to_stop_ts": iso(3600)}, Phase.STOPPED),
    ({"status": "STOPPED", "time_to_stop_ts": iso(-5)}, Phase.TIMEOUT),
    ({"status": "ERROR", "status_container": {"exit_code": 3, "message": "boom"}}, Phase.EXITED),
    ({"status": "COMPLETE"}, Phase.EXITED),
    ({"status": "SOMETHING NEW"}, Phase.PENDING),
])
def test_pod_states(pod, phase):
    st = states.phase_of({"pod_id": "p1", **pod})
    assert st.phase == phase
    if pod["status"] == "ERROR":
        assert st.exit_code == 3 and "boom" not in st.reason  # container text: log tail only
    if pod["status"] == "COMPLETE":
        assert st.exit_code == 0


# --------------------------------------------------------------------------- config


def test_config_derives_tenant_and_refuses_secrets_and_bad_values():
    c = cfg()
    assert c.tenant_id == "tacc" and c.tenant_host == "tacc.tapis.io"
    assert c.volume_mounts_shape == "live" and c.port == 8000 and c.volume_size_mb == 20480
    with pytest.raises(RecipeError, match=r"targets.yaml:7: .*does not belong") as err:
        TapisPodsTarget("t", {**BASE, "password": "s3cr3t-value", "_source": ("targets.yaml", 7)})
    assert "s3cr3t" not in str(err.value)
    for bad, message in [
        ({"base_url": "http://127.0.0.1:5000"}, "set tenant_id"),
        ({"endpoint_template": "http://x/{pod}"}, "unknown field {pod}"),
        ({"time_to_stop": 100}, "at least 300"),
        ({"id_prefix": "9x"}, "id_prefix"),
        ({"networking": {"port": 1}}, "networking.port is set by hpcserve"),
        ({"volume_mounts_shape": "other"}, "volume_mounts_shape"),
    ]:
        with pytest.raises(RecipeError, match=message):
            TapisPodsTarget("t", {**BASE, **bad})


def test_endpoint_template_fields():
    t = TapisPodsTarget("t", {**BASE, "endpoint_template": "http://gw:8080/{pod_id}/{key}"})
    handle = {"pod_id": "hpsx1234", "networking_key": "default",
              "url": "hpsx1234.pods.tacc.tapis.io"}
    assert t._urls(handle) == ["http://gw:8080/hpsx1234/default"]
    plain = TapisPodsTarget("t", BASE)
    assert plain._urls(handle) == ["https://hpsx1234.pods.tacc.tapis.io"]
    assert plain._urls({"pod_id": "hpsx1234", "networking_key": "api"}) == \
        ["https://hpsx1234-api.pods.tacc.tapis.io"]


# --------------------------------------------------------------------------- errors


def test_tapipy_errors_map_to_ours_with_the_service_message():
    where = "https://tacc.tapis.io"
    bad = map_error(te.BadRequestError(msg=["image: nope", "port: bad"]), "create pod x",
                    where=where)
    assert type(bad) is BadInput and "create pod x: image: nope; port: bad" in bad.message
    assert isinstance(map_error(te.UnauthorizedError(msg="expired"), "x", where=where),
                      TapisAuthError)
    forbidden = map_error(te.ForbiddenError(msg="no"), "x", where=where)
    assert isinstance(forbidden, TapisAuthError) and forbidden.hint
    assert isinstance(map_error(te.NotFoundError(msg="gone"), "x", where=where), TapisNotFound)
    for exc in (te.InternalServerError(msg="oops"), te.ServiceUnavailableError(msg="later"),
                te.BaseTapyException(msg="Unable to make request to Tapis server. Exception: "
                                     "Read timed out.")):
        assert isinstance(map_error(exc, "x", where=where), TargetUnreachable)
    other = map_error(te.InvalidInputError(msg="pod_id is a required argument."), "x",
                      where=where)
    assert type(other) is HpcserveError
    hidden = map_error(te.BadRequestError(msg=f"bad value {KEY}"), "x", where=where,
                       secrets=[KEY])
    assert KEY not in hidden.message and "***" in hidden.message


# --------------------------------------------------------------------------- client plumbing


def test_timeout_session_puts_a_timeout_on_every_request():
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        session = TimeoutSession(0.3)
        started = time.monotonic()
        with pytest.raises(requests.exceptions.ReadTimeout):
            session.get(f"http://127.0.0.1:{silent.getsockname()[1]}/")
        assert time.monotonic() - started < 5


def test_client_always_sends_tenant_id_and_has_the_timeout(standin, monkeypatch):
    monkeypatch.setenv("T_PW", PASSWORD)
    settings = cfg(base_url=standin.base_url, tenant_id="tacc", username=USERNAME,
                   password_env="T_PW", token_env="T_TOKEN_UNSET", request_timeout=7)
    session = TapisSession(settings)
    client = session.client()
    assert isinstance(client.requests_session, TimeoutSession)
    assert client.requests_session.default_timeout == 7
    assert [c.operation_id for c in standin.calls] == ["create_token"]  # no sites/tenants
    assert PASSWORD not in repr(session) and session.current_jwt() not in repr(session)
    assert session.current_jwt() in session.secrets()


def test_credentials_sources_and_their_reprs(monkeypatch):
    monkeypatch.setenv("T_PW", "pw-value-123")
    monkeypatch.setenv("T_TOKEN", "tok-value-456")
    c = cfg(password_env="T_PW", token_env="T_TOKEN", keyring_service=None, prompt=False)
    creds = resolve_credentials(c)
    assert creds.kind == "token_env" and creds.password == "pw-value-123"
    assert "value" not in repr(creds) and creds.source == "$T_TOKEN"
    monkeypatch.delenv("T_TOKEN")
    assert resolve_credentials(c).kind == "password_env"
    monkeypatch.delenv("T_PW")
    with pytest.raises(BadInput, match="no Tapis credentials"):
        resolve_credentials(c)
    monkeypatch.setenv("T_PW", "pw")
    with pytest.raises(BadInput, match="no Tapis username"):
        resolve_credentials(cfg(username=None, username_env="T_USER_UNSET", password_env="T_PW"))
    assert isinstance(Credentials("u", "prompt", "the prompt", password="x"), Credentials)


def test_a_token_that_is_not_a_jwt_is_refused_without_quoting_it(monkeypatch):
    monkeypatch.setenv("T_TOKEN", "not-a-jwt-secret-ish")
    session = TapisSession(cfg(token_env="T_TOKEN"))
    with pytest.raises(BadInput, match=r"\$T_TOKEN is not a Tapis token") as err:
        session.client()
    assert "not-a-jwt" not in str(err.value)


def test_pod_time_left_from_time_to_stop_ts():
    from hpcserve_jupyter.targets.tapis import states as pstates

    pod = {"time_to_stop_default": 3600, "time_to_stop_instance": None,
           "time_to_stop_ts": "1970-01-01T01:16:40"}  # naive = UTC: t=4600
    assert pstates.time_limit(pod) == 3600
    assert pstates.time_left(pod, now=1000.0) == 3600.0
    assert pstates.time_limit({**pod, "time_to_stop_instance": 600}) == 600
    assert pstates.time_limit({"time_to_stop_default": -1}) is None
    assert pstates.time_left({"time_to_stop_ts": None}, now=1.0) is None
