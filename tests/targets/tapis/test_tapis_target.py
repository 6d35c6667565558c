"""The Tapis Pods target end to end: SessionManager -> TapisPodsTarget -> real tapipy -> the
stand-in, which runs the pod's command (real llama.cpp on SmolLM2) as a local process."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest
from tapis_helpers import PASSWORD_ENV, TARGET, TOKEN_ENV, wait_for

from hpcserve_jupyter.errors import BadInput, LaunchError, RecipeError
from hpcserve_jupyter.sessions import State
from hpcserve_jupyter.targets.tapis.errors import TapisAuthError
from hpcserve_jupyter.targets.tapis.ids import deployment_ids
from tapis_standin.conftest import PASSWORD, USERNAME

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]
RECIPE = "smollm2-135m"


def ops(standin, exclude: tuple[str, ...] = ("list_pods",)) -> list[tuple[str, int]]:
    return [(c.operation_id, c.status) for c in standin.calls if c.operation_id not in exclude]


def unreachable_reason(hp, sid: str) -> str:
    found = [e["message"] for e in hp.events(sid) if e["kind"] == "unreachable"]
    return found[-1] if found else ""


def ended(hp, sid: str):
    return wait_for(lambda: (s := hp.status(sid)).state.terminal and s, what="the session end")


def ready(hp, **kw):
    s = hp.launch(RECIPE, on=TARGET, timeout=120, **kw)
    assert s.state == State.READY, (s.state, s.reason, s.log_tail)
    return s


# --------------------------------------------------------------------------- lifecycle


def test_launch_ready_stream_stop(make_hp, standin):
    hp = make_hp()
    seen: list[str] = []
    s = hp.launch(RECIPE, on=TARGET, timeout=120, progress=lambda x: seen.append(str(x.state)))
    assert s.state == State.READY, (s.reason, s.log_tail)
    states = [x for i, x in enumerate(seen) if i == 0 or seen[i - 1] != x]
    assert states[0] == "pending" and states[-1] == "ready", states
    pod_id, vol_id = s.handle["pod_id"], s.handle["volume_id"]
    pod = standin.pods[pod_id]
    # every pod status of the way up was seen by the stand-in
    assert pod.statuses[:4] == ["REQUESTED", "SPAWNER SETUP", "CREATING", "AVAILABLE"]
    events = [e["kind"] for e in hp.events(s.id)]
    assert "starting" in events and "ready" in events
    assert s.endpoints == [f"{hp.manager.target(TARGET).settings.endpoint_template}"
                           .format(pod_id=pod_id)]

    # what was deployed
    body = pod.raw_body
    assert body["command"] == [sys.executable]
    assert body["arguments"][:2] == ["-m", "llama_cpp.server"]
    args = body["arguments"]
    assert args[args.index("--port") + 1] == "8000" and args[args.index("--host") + 1] == "0.0.0.0"
    key = hp.manager.api_key(s)
    assert key not in " ".join(body["command"] + args)  # never inline
    assert body["environment_variables"]["API_KEY"] == key  # the pod env: the one place
    assert body["volume_mounts"] == {"/app/models": {"type": "tapisvolume", "source_id": vol_id,
                                                     "sub_path": ""}}
    assert pod.volume_mounts_shape == "live"
    assert body["networking"] == {"default": {"protocol": "http", "port": 8000}}
    assert body["resources"] == {"cpu_request": 1000, "cpu_limit": 2000, "mem_request": 1024,
                                 "mem_limit": 2048, "gpus": 0}
    assert body["time_to_stop_default"] == 7200  # the recipe's 2h time limit
    vol = standin.volumes[vol_id]
    assert vol.size_limit == 20480
    # the handle: ids only
    assert set(s.handle) == {"deployment_id", "pod_id", "volume_id", "volume_owned",
                             "session_id", "networking_key", "port", "url"}
    assert s.handle["url"] == f"{pod_id}.pods.{standin.tenant_host}"

    deltas = list(hp.stream(s.id, "Name one planet.", temperature=0, max_tokens=16))
    assert len(deltas) > 2 and "".join(deltas).strip()
    assert "/v1/chat/completions" in hp.logs(s.id, tail=200)

    stopped = hp.stop(s.id)
    assert stopped.state == State.STOPPED
    assert pod_id not in standin.pods and vol_id not in standin.volumes  # stop ends it all
    done = ops(standin)
    assert ("stop_pod", 200) in done and ("delete_pod", 200) in done
    assert ("delete_volume", 200) in done
    assert hp.stop(s.id).version == stopped.version  # idempotent
    assert "Uvicorn running" in hp.logs(s.id, tail=500)  # logs read before the delete


def test_one_list_pods_per_tick_for_all_sessions(make_hp, standin):
    hp = make_hp(monitor=False)
    a = hp.launch(RECIPE, on=TARGET, wait=False)
    b = hp.launch(RECIPE, on=TARGET, wait=False)
    assert a.handle["pod_id"] != b.handle["pod_id"]  # one model, several pods
    assert a.handle["volume_id"] != b.handle["volume_id"]
    for s in (a, b):
        assert hp.wait(s.id, timeout=120).state == State.READY
    before = len(standin.calls)
    for _ in range(3):
        hp.refresh()
    polled = [c.operation_id for c in standin.calls[before:]]
    assert polled == ["list_pods"] * 3


def test_restarted_manager_reattaches_by_pod_id(make_hp, standin):
    first = make_hp()
    s = ready(first)
    first.close()  # sessions keep running
    second = make_hp()
    again = second.status(s.id)
    assert again.state == State.READY and again.handle == s.handle
    assert second.prompt(s.id, "Say yes.", max_tokens=4)
    assert second.stop(s.id).state == State.STOPPED
    assert not standin.pods and not standin.volumes


def test_adopt_finds_the_pod_of_an_interrupted_launch_by_its_derived_id(make_hp, standin):
    hp = make_hp()
    s = ready(hp)
    tgt = hp.manager.target(TARGET)
    assert asyncio.run(tgt.adopt(s.id, s.name)) == s.handle
    assert asyncio.run(tgt.adopt("0123abcd", s.name)) is None  # no pod of that session
    assert hp.stop(s.id).state == State.STOPPED


def test_adopt_deletes_a_volume_made_without_a_pod(make_hp, standin):
    hp = make_hp(monitor=False)
    tgt = hp.manager.target(TARGET)
    ids = deployment_ids(tgt.settings.id_prefix, "half", "5eed0001")
    tgt.api.create_volume({"volume_id": ids.volume, "size_limit": 64, "description": "x"})
    assert ids.volume in standin.volumes
    assert asyncio.run(tgt.adopt("5eed0001", "half")) is None
    assert ids.volume not in standin.volumes and not standin.pods
    assert asyncio.run(tgt.adopt("not a session id!", "half")) is None


def test_keep_volume_and_spec_shape(make_hp, standin):
    hp = make_hp(keep_volume=True, volume_mounts_shape="spec", volume_size_mb=512)
    s = ready(hp)
    vol_id = s.handle["volume_id"]
    pod = standin.pods[s.handle["pod_id"]]
    assert pod.volume_mounts_shape == "spec"
    assert pod.raw_body["volume_mounts"] == {
        vol_id: {"type": "tapisvolume", "mount_path": "/app/models", "sub_path": ""}}
    assert standin.volumes[vol_id].size_limit == 512
    hp.stop(s.id)
    assert not standin.pods and vol_id in standin.volumes


# --------------------------------------------------------------------------- launch faults


def test_500_on_create_pod_deletes_the_volume_again(make_hp, standin):
    hp = make_hp()
    standin.fail_next("create_pod", 500)
    with pytest.raises(LaunchError, match="injected by the stand-in") as err:
        hp.launch(RECIPE, on=TARGET, wait=False)
    assert "was deleted again" in str(err.value)
    assert standin.volumes == {} and standin.pods == {}
    assert [o for o, _ in ops(standin)] == ["create_token", "create_volume", "create_pod",
                                           "delete_pod", "delete_volume"]
    (s,) = hp.sessions()
    assert s.state == State.FAILED and "injected" in s.reason


def test_400_from_create_pod_is_bad_input_with_the_service_messages(make_hp, standin):
    hp = make_hp()
    standin.fail_next("create_pod", 400, message=["image: not allowed", "resources: too big"])
    with pytest.raises(BadInput, match="image: not allowed; resources: too big"):
        hp.launch(RECIPE, on=TARGET, wait=False)
    assert standin.volumes == {} and standin.pods == {}
    assert [o for o, _ in ops(standin)][-2:] == ["create_pod", "delete_volume"]


def test_create_volume_that_times_out_is_cleaned_up_if_it_was_made(make_hp, standin):
    hp = make_hp(request_timeout=1.0)
    standin.fail_next("create_volume", 503)
    with pytest.raises(LaunchError, match="HTTP 503") as err:
        hp.launch(RECIPE, on=TARGET, wait=False)
    assert "volume " in str(err.value) and standin.volumes == {}
    assert [o for o, _ in ops(standin)][-2:] == ["create_volume", "delete_volume"]


def test_401_at_launch_refreshes_tokens_once(make_hp, standin):
    hp = make_hp()
    standin.fail_next("create_volume", 401)
    s = hp.launch(RECIPE, on=TARGET, wait=False)
    assert [o for o, _ in ops(standin)][:4] == ["create_token", "create_volume", "create_token",
                                               "create_volume"]
    assert s.handle["pod_id"] in standin.pods


def test_wrong_password_is_an_auth_error_with_a_hint(make_hp, standin, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password-xyz")
    hp = make_hp()
    with pytest.raises(TapisAuthError) as err:
        hp.launch(RECIPE, on=TARGET, wait=False)
    text = str(err.value)
    assert "Invalid username/password" in text and "hint:" in text and PASSWORD_ENV in text
    assert "not-the-password-xyz" not in text
    assert standin.volumes == {}


def test_missing_credentials_say_where_to_put_them(make_hp, standin, monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV)
    hp = make_hp()
    with pytest.raises(BadInput, match="no Tapis credentials") as err:
        hp.launch(RECIPE, on=TARGET, wait=False)
    assert TOKEN_ENV in str(err.value) and PASSWORD_ENV in str(err.value)
    assert standin.calls == []


# --------------------------------------------------------------------------- bad input first


def test_invalid_id_prefix_fails_before_any_call(make_hp, standin):
    hp = make_hp(id_prefix="Bad-Prefix")
    with pytest.raises(RecipeError, match="id_prefix"):
        hp.launch(RECIPE, on=TARGET, wait=False)
    assert standin.calls == []
    assert hp.sessions() == []


@pytest.mark.parametrize(("config", "overrides", "message"), [
    ({"resources": {"cpu_request": 4000}}, {}, "cpu_request 4000m is above cpu_limit 2000m"),
    ({"resources": {"mem_limit": 512, "mem_request": 1024}}, {}, "mem_request 1024 MB"),
    ({}, {"nodes": 2}, "a pod runs on one node"),
    ({"max_gpus": 0}, {"gpus": 1}, "asks for 1 GPUs; the target allows 0"),
    ({"hf_token_env": "HPCSERVE_TEST_UNSET_HF"}, {}, "HPCSERVE_TEST_UNSET_HF, which is not set"),
])
def test_invalid_resources_fail_before_any_call(make_hp, standin, config, overrides, message):
    hp = make_hp(**config)
    with pytest.raises(BadInput, match=message):
        hp.launch(RECIPE, on=TARGET, wait=False, **overrides)
    assert standin.calls == []


def test_a_password_in_the_config_is_refused_without_echoing_it(make_hp, standin):
    hp = make_hp(password="hunter2-in-the-file")
    with pytest.raises(RecipeError) as err:
        hp.launch(RECIPE, on=TARGET, wait=False)
    assert "does not belong in the targets file" in str(err.value)
    assert "hunter2" not in str(err.value)
    assert standin.calls == []


# --------------------------------------------------------------------------- running faults


def test_401_while_polling_is_refreshed_and_the_session_stays_ready(make_hp, standin):
    hp = make_hp()
    s = ready(hp)
    tokens = len(standin.token_requests)
    standin.revoke_tokens()
    hp.refresh()
    wait_for(lambda: len(standin.token_requests) > tokens, what="a new token")
    hp.refresh()
    now = hp.status(s.id)
    assert now.state == State.READY and not now.unreachable
    statuses = [c.status for c in standin.calls_to("list_pods")]
    assert 401 in statuses and statuses[-1] == 200
    assert len(standin.token_requests) == tokens + 1


def test_token_given_directly_and_its_expiry(make_hp, standin, monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV)
    monkeypatch.setenv(TOKEN_ENV, standin.issue_token(USERNAME))
    hp = make_hp()
    s = ready(hp)
    assert standin.token_requests == []  # no login: the token was used as given
    standin.revoke_tokens()
    st = wait_for(lambda: (x := hp.status(s.id)).unreachable and x, what="unreachable")
    assert st.state == State.READY  # unknown, not failed
    assert "refused the access token" in unreachable_reason(hp, s.id)
    monkeypatch.setenv(TOKEN_ENV, standin.issue_token(USERNAME))  # a fresh token exported
    wait_for(lambda: not hp.status(s.id).unreachable, what="reachable again")
    assert hp.status(s.id).state == State.READY


def test_pod_deleted_behind_our_back(make_hp, standin):
    hp = make_hp()
    s = ready(hp)
    standin.delete_pod_behind_back(s.handle["pod_id"])
    end = ended(hp, s.id)
    assert end.state == State.STOPPED
    assert "no longer exists (deleted outside hpcserve)" in end.reason
    assert ("get_pod", 404) in ops(standin)
    assert s.handle["volume_id"] not in standin.volumes  # its volume went with it


def test_pod_error_fails_the_session_with_its_logs(make_hp, standin):
    hp = make_hp()
    s = ready(hp)
    standin.force_error(s.handle["pod_id"], "RuntimeError: CUDA error: out of memory (injected)")
    end = ended(hp, s.id)
    assert end.state == State.FAILED
    assert "ended in ERROR" in end.reason
    assert "CUDA error: out of memory (injected)" in end.log_tail
    assert "Uvicorn running" in end.log_tail  # the engine's own output came along
    assert not standin.pods and not standin.volumes  # cleaned up once the logs were read
    assert "out of memory" in hp.logs(s.id)


def test_engine_that_exits_fails_with_the_pod_logs(make_hp, standin, tmp_path):
    hp = make_hp()
    s = hp.launch(RECIPE, on=TARGET, model=str(tmp_path / "missing.gguf"), timeout=120)
    assert s.state == State.FAILED
    assert "ended in ERROR" in s.reason and s.exit_code not in (None, 0)
    assert "missing.gguf" in s.log_tail
    assert not standin.pods and not standin.volumes


def test_slow_api_is_unreachable_not_failed_then_recovers(make_hp, standin):
    hp = make_hp(request_timeout=1.0)
    s = ready(hp)
    standin.delay(2.5, "list_pods")
    st = wait_for(lambda: (x := hp.status(s.id)).unreachable and x, what="unreachable")
    assert st.state == State.READY
    why = unreachable_reason(hp, s.id)
    assert "did not answer" in why and "timed out" in why.lower(), why
    standin.clear_faults()
    wait_for(lambda: not hp.status(s.id).unreachable, what="reachable again")
    assert hp.status(s.id).state == State.READY
    assert hp.prompt(s.id, "Say yes.", max_tokens=4)
    kinds = [e["kind"] for e in hp.events(s.id)]
    assert "unreachable" in kinds and "reachable" in kinds and "failed" not in kinds


def test_5xx_while_polling_is_unreachable_not_failed(make_hp, standin):
    hp = make_hp()
    s = ready(hp)
    standin.fail_next("list_pods", 503, times=None)
    st = wait_for(lambda: (x := hp.status(s.id)).unreachable and x, what="unreachable")
    assert st.state == State.READY and "HTTP 503" in unreachable_reason(hp, s.id)
    standin.clear_faults()
    wait_for(lambda: not hp.status(s.id).unreachable, what="reachable again")


# --------------------------------------------------------------------------- secrets


def test_secrets_stay_out_of_logs_errors_and_the_store(make_hp, standin, caplog):
    caplog.set_level(logging.DEBUG)
    hp = make_hp()
    s = ready(hp)
    target = hp.manager.target(TARGET)
    jwt = target.api.session.current_jwt()
    key = hp.manager.api_key(s)
    assert jwt and key
    errors = []
    standin.fail_next("create_pod", 500)
    try:
        hp.launch(RECIPE, on=TARGET, wait=False)
    except LaunchError as exc:
        errors.append(str(exc))
    standin.force_error(s.handle["pod_id"], f"engine crashed; key was {key}")
    end = ended(hp, s.id)
    errors += [end.reason, end.log_tail, repr(target), repr(target.api),
               repr(target.api.session), repr(s.handle), str(target.describe())]
    store = b"".join(p.read_bytes() for p in hp.manager.home.glob("sessions.db*"))
    assert store
    for secret in (PASSWORD, jwt, key):
        assert secret not in caplog.text
        assert all(secret not in e for e in errors)
        assert secret.encode() not in store
    assert "***" in end.log_tail  # the key the engine printed was redacted
