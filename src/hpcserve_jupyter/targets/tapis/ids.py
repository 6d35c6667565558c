"""Deployment, pod and volume ids, checked the way the Pods service checks them.

A deployment is one launch: `<prefix><session name, letters and digits only><session id>`,
e.g. `hpssmollm2135m1` + `3fa2c1d0`. Its pod id is the deployment id and its volume id the
deployment id + `vol`, so one model can have any number of pods, each with its own volume, and a
pod's volume is found from the pod id alone. Ids are checked here, before any call is made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...errors import BadInput

ID_RE = re.compile(r"[a-z][a-z0-9]+")
MIN_LEN, MAX_LEN = 3, 64
# The live Pod.check_pod_id list (a superset of volumes/snapshots/admin).
RESERVED = frozenset({"catalog", "catalogs", "snapshot", "snapshots", "volume", "volumes",
                      "admin", "image", "images", "template", "templates"})
# Pod hosts are <pod_id>[-<networking key>].pods.<tenant host>: keep the first DNS label short.
MAX_DEPLOYMENT = 40
VOLUME_SUFFIX = "vol"
ID_HINT = "Tapis ids are lowercase letters and digits, start with a letter, 3-64 characters"


def check_id(value: str, what: str = "pod id") -> str:
    """`value` if the service would accept it as a pod/volume id, else a BadInput saying why."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise BadInput(f"invalid {what} {value!r}: only lowercase letters and digits, starting "
                       "with a letter", hint=ID_HINT)
    if not MIN_LEN <= len(value) <= MAX_LEN:
        raise BadInput(f"invalid {what} {value!r}: {len(value)} characters, the service takes "
                       f"{MIN_LEN}-{MAX_LEN}", hint=ID_HINT)
    if value in RESERVED:
        raise BadInput(f"invalid {what} {value!r}: it is reserved by the Pods service",
                       hint="reserved: " + ", ".join(sorted(RESERVED)))
    return value


def slug(text: str) -> str:
    """Lowercase letters and digits of `text` (everything else dropped)."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


@dataclass(frozen=True)
class DeploymentIds:
    deployment: str
    pod: str
    volume: str


def deployment_ids(prefix: str, name: str, session_id: str,
                   shared_volume: str | None = None) -> DeploymentIds:
    """The ids of one launch; unique per session, readable from the session name."""
    sid = slug(session_id)
    if not sid:
        raise BadInput(f"invalid session id {session_id!r} for a pod id")
    room = MAX_DEPLOYMENT - len(prefix) - len(sid)
    dep = prefix + slug(name)[:max(0, room)] + sid
    check_id(dep, "deployment id")
    volume = shared_volume if shared_volume is not None else dep + VOLUME_SUFFIX
    return DeploymentIds(deployment=dep, pod=check_id(dep, "pod id"),
                         volume=check_id(volume, "volume id"))
