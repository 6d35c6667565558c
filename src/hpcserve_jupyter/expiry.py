"""When to tell users a session is about to end: its time limit is near (`expiring`) or idle
autostop is (`idle-expiring`). Each is said once: the time-limit warning once per session (again
only after an extension moved the end away), the idle one once per idle stretch (a request
starts a new one). Pure: the manager writes the notices as events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .views import age

if TYPE_CHECKING:
    from .sessions import Session

EXPIRING, IDLE_EXPIRING = "expiring", "idle-expiring"
NOTICES = frozenset({EXPIRING, IDLE_EXPIRING})


def notices(s: Session, now: float, warning_s: float) -> list[tuple[str, str]]:
    """The notices due for `s` now, as (event kind, message); marks them said on `s`."""
    if not s.state.live:
        return []
    due = []
    timing = s.timing(now)
    left = timing["time_left_s"]
    if left is not None and left < warning_s and not s.expiry_warned:
        s.expiry_warned = True
        due.append((EXPIRING, f"{age(left)} left: it ends at {timing['ends_at']} "
                              "(extend it, or relaunch it to carry on)"))
    idle = timing["idle_stop_in_s"]
    if (idle is not None and s.idle_timeout_s and s.idle_warned_at != s.last_activity
            and idle < min(warning_s, s.idle_timeout_s / 2)):
        s.idle_warned_at = s.last_activity
        due.append((IDLE_EXPIRING, f"idle: autostop in {age(idle)} unless it gets a request "
                                   "(or a keepalive)"))
    return due


def moved_away(s: Session, now: float, warning_s: float) -> bool:
    """After an extension: the end is far again, so a later `expiring` may be said anew."""
    left = s.timing(now)["time_left_s"]
    return s.expiry_warned and (left is None or left >= warning_s)
