"""Apps routes through the real tapipy client (no cluster needed): versions, latest version,
409s, putApp, deleteApp, and what tapipy hands back for them."""

from __future__ import annotations

import pytest
from tapipy import errors

from .server import StandIn


def create(tapis, version: str, **kw):
    body = {"id": "myapp", "version": version, "runtime": "ZIP",
            "containerImage": "/apps/myapp.tgz", "jobType": "BATCH"}
    body.update(kw)
    return tapis.apps.createAppVersion(**body)


def test_versions_latest_and_conflicts(standin: StandIn, tapis):
    created = create(tapis, "1.0", description="first")
    assert created.url == f"{standin.base_url}/v3/apps/myapp"
    assert standin.calls_to("createAppVersion")[-1].status == 201
    create(tapis, "0.9")  # created last: the latest, whatever the version string says
    assert tapis.apps.getAppLatestVersion(appId="myapp").version == "0.9"
    assert tapis.apps.getApp(appId="myapp", appVersion="1.0").description == "first"
    assert [(a.id, a.version) for a in tapis.apps.getApps()] == [("myapp", "0.9")]
    with pytest.raises(errors.BaseTapyException) as err:
        create(tapis, "1.0")
    assert err.value.response.status_code == 409 and "APPAPI_APP_EXISTS" in str(err.value)

    tapis.apps.putApp(appId="myapp", appVersion="1.0", containerImage="/apps/v2.tgz",
                      runtime="ZIP", jobType="BATCH", jobAttributes={"maxMinutes": 7})
    app = tapis.apps.getApp(appId="myapp", appVersion="1.0")
    assert app.containerImage == "/apps/v2.tgz" and app.jobAttributes.maxMinutes == 7
    assert app.description == "first"  # not in the PUT body: kept

    deleted = tapis.apps.deleteApp(appId="myapp")
    assert deleted.changes == 1
    with pytest.raises(errors.NotFoundError):
        tapis.apps.getApp(appId="myapp", appVersion="1.0")
    assert tapis.apps.getApps() == []
    with pytest.raises(errors.BaseTapyException) as err:
        create(tapis, "2.0")
    assert err.value.response.status_code == 409 and "APPAPI_CREATE_RESERVED" in str(err.value)


@pytest.mark.parametrize(("kw", "text"), [
    ({"runtime": "ZIP", "containerImage": "relative/path.tgz"}, "APPAPI_ZIP_CONTAINERIMAGE"),
    ({"runtime": "PODMAN"}, "APPAPI_INVALID_RUNTIME"),
    ({"jobType": "MPI"}, "APPAPI_INVALID_JOBTYPE"),
    ({"jobAttributes": {"execSystemId": "nosuchsystem"}}, "APPAPI_SYS_NOEXIST"),
    ({"jobAttributes": {"maxMinutes": -1}}, "maxMinutes"),
    ({"id": "bad id!"}, "APPAPI_INVALID_ID"),
])
def test_invalid_apps_are_400(standin: StandIn, tapis, kw, text):
    with pytest.raises(errors.BadRequestError) as err:
        create(tapis, "1.0", **kw)
    assert text in str(err.value)
    assert standin.apps.apps == {}


def test_put_and_get_unknown_app_is_404(standin: StandIn, tapis):
    with pytest.raises(errors.NotFoundError):
        tapis.apps.putApp(appId="none", appVersion="1", containerImage="/x.tgz", runtime="ZIP")
    with pytest.raises(errors.NotFoundError):
        tapis.apps.getAppLatestVersion(appId="none")
    with pytest.raises(errors.NotFoundError):
        tapis.apps.deleteApp(appId="none")
