"""Pod status -> Phase. Pure; the target adds endpoints and log tails.

| pod status                  | phase     | session (manager)                        |
|-----------------------------|-----------|------------------------------------------|
| REQUESTED, SPAWNER SETUP    | PENDING   | pending (reason: the pod status)         |
| CREATING                    | RUNNING   | starting (no endpoint yet, so not ready) |
| AVAILABLE                   | RUNNING   | starting -> ready by the health check    |
| DELETING                    | STOPPING  | stopping                                 |
| STOPPED                     | STOPPED, or TIMEOUT once time_to_stop_ts passed |
| ERROR, COMPLETE             | EXITED    | failed, with the pod's logs              |
| (not listed, get_pod 404)   | STOPPED   | stopped: "deleted outside hpcserve"      |

The service has no RUNNING status; AVAILABLE means the container runs (and, live, that its
port answers), not that the model is loaded: the manager's health check decides `ready`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..base import Phase, TargetStatus, exit_text

PENDING_STATES = ("REQUESTED", "SPAWNER SETUP")
ENDED_STATES = ("ERROR", "COMPLETE")


def _when(ts: Any) -> dt.datetime | None:
    """An ISO timestamp (naive = UTC, as the service writes them), or None."""
    if not isinstance(ts, str) or not ts:
        return None
    try:
        when = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when


def _past(ts: Any) -> bool:
    """True when an ISO timestamp has passed."""
    when = _when(ts)
    return when is not None and when <= dt.datetime.now(dt.UTC)


def time_limit(pod: dict[str, Any]) -> int | None:
    """The pod's time_to_stop in seconds (the instance's, else the default); -1: none."""
    ttl = pod.get("time_to_stop_instance") or pod.get("time_to_stop_default")
    return int(ttl) if isinstance(ttl, int | float) and ttl > 0 else None


def time_left(pod: dict[str, Any], now: float) -> float | None:
    """Seconds to time_to_stop_ts, when the service stops the running pod."""
    when = _when(pod.get("time_to_stop_ts"))
    return None if when is None else max(0.0, when.timestamp() - now)


def container_detail(pod: dict[str, Any]) -> str:
    info = pod.get("status_container") or {}
    if not isinstance(info, dict):
        return ""
    return str(info.get("message") or "").strip()


def exit_code(pod: dict[str, Any]) -> int | None:
    info = pod.get("status_container") or {}
    code = info.get("exit_code") if isinstance(info, dict) else None
    return code if isinstance(code, int) else (0 if pod.get("status") == "COMPLETE" else None)


def phase_of(pod: dict[str, Any]) -> TargetStatus:
    """The phase of a listed pod (endpoints and logs are the target's business)."""
    status = str(pod.get("status") or "").upper()
    pod_id = pod.get("pod_id", "?")
    if status in PENDING_STATES:
        return TargetStatus(Phase.PENDING, reason=f"pod {pod_id} is {status}",
                            time_limit_s=time_limit(pod))
    if status in ("CREATING", "AVAILABLE"):
        return TargetStatus(Phase.RUNNING, reason=f"pod {pod_id} is {status}",
                            time_limit_s=time_limit(pod),
                            time_left_s=time_left(pod, dt.datetime.now(dt.UTC).timestamp()))
    if status == "DELETING":
        return TargetStatus(Phase.STOPPING, reason=f"pod {pod_id} is being stopped")
    if status == "STOPPED":
        if _past(pod.get("time_to_stop_ts")):
            return TargetStatus(Phase.TIMEOUT, reason=f"pod {pod_id} reached its time_to_stop "
                                f"({pod.get('time_to_stop_default')} s) and was stopped")
        return TargetStatus(Phase.STOPPED, reason=f"pod {pod_id} was stopped outside hpcserve")
    if status in ENDED_STATES:
        # The container's message goes into the log tail (which the manager redacts), not the
        # reason: it is whatever the process wrote last and may quote a secret.
        code = exit_code(pod)
        what = "ended in ERROR" if status == "ERROR" else "ended (COMPLETE: its command exited)"
        return TargetStatus(Phase.EXITED, exit_code=code, reason=f"pod {pod_id} {what}"
                            + (f" with {exit_text(code)}" if code is not None else ""))
    return TargetStatus(Phase.PENDING, reason=f"pod {pod_id} is {status or 'in an unknown state'}")
