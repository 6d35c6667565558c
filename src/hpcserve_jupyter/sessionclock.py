"""How long sessions have: the target's own limit as each poll reports it, the `expiring` and
`idle-expiring` notices (expiry.py decides when), and extensions. Mixed into SessionManager."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from . import expiry
from .errors import BadInput, FixedLimit, NotReady, Refused
from .store import StaleSession
from .targets.base import Phase

if TYPE_CHECKING:
    from .resolve import LaunchDefaults
    from .sessions import Session
    from .store import Store
    from .targets.base import Target, TargetStatus

# Seconds an end time may move between polls before it is written again (a poll's own delay).
TIME_SLACK = 5.0


class SessionClock:
    """The manager's time-left bookkeeping (attributes and methods it relies on below)."""

    store: Store
    defaults: LaunchDefaults
    expiry_warning: float

    def get(self, key: str) -> Session: ...
    def target(self, name: str) -> Target: ...
    def wake(self) -> None: ...
    def _write(self, s: Session, event: str | None = None, message: str = "") -> None: ...

    def _note_time_left(self, s: Session, st: TargetStatus) -> None:
        """Keep the target's limit and end time; written only when they move by more than
        TIME_SLACK (a poll's own delay), not every tick."""
        limit = st.time_limit_s if st.time_limit_s is not None else s.time_limit_s
        ends = s.ends_at
        if st.time_left_s is not None and st.phase == Phase.RUNNING:
            seen = time.time() + st.time_left_s
            if ends is None or abs(seen - ends) > TIME_SLACK:
                ends = seen
        if limit != s.time_limit_s or ends != s.ends_at:
            s.time_limit_s, s.ends_at = limit, ends
            self._write(s)

    def _warn_expiring(self, live: list[Session]) -> None:
        """`expiring` / `idle-expiring` events, each once (expiry.py)."""
        now = time.time()
        for s in live:
            if not s.handle:  # still launching: its launch writes it next, not the monitor
                continue
            rearm = expiry.moved_away(s, now, self.expiry_warning)
            if rearm:
                s.expiry_warned = False
            due = expiry.notices(s, now, self.expiry_warning)
            with contextlib.suppress(StaleSession):
                for kind, message in due:
                    self._write(s, kind, message)
                if rearm and not due:
                    self._write(s)

    async def extend(self, key: str, add_s: int) -> tuple[Session, str]:
        """`add_s` more seconds for a live session: on the target where it limits the session
        (SLURM asks scontrol, whose refusal is the error), and its max lifetime, which may not
        pass the configured bound. A target whose limit is fixed (Tapis) still lets the max
        lifetime grow, and the answer says the session ends at the target's limit anyway.
        Nothing changes when the bound or the target refuses, or when nothing would."""
        from .durations import parse_duration

        if add_s <= 0:
            raise BadInput("extend wants a positive duration, e.g. --time 30m")
        s = self.get(key)
        if not s.state.live:
            raise NotReady(f"session {s.name} has ended ({s.state})",
                           hint=f"relaunch it: hpcserve relaunch {s.name}")
        bound = parse_duration(self.defaults.lifetime_bound)
        lifetime = s.max_lifetime_s + add_s if s.max_lifetime_s else None
        if lifetime is not None and lifetime > bound:
            raise Refused(f"{s.name} would live {lifetime} s, more than the {bound} s allowed",
                           hint="relaunch it instead, or ask the server's administrator to "
                           "raise c.HpcserveApp.max_lifetime_bound")
        fixed: FixedLimit | None = None
        try:
            said = await self.target(s.target).extend(s.handle or {}, add_s)
        except FixedLimit as exc:
            if lifetime is None:
                raise
            said, fixed = None, exc
        if said is None and lifetime is None:
            raise Refused(f"nothing limits how long {s.name} runs: it has no max lifetime and "
                          f"its target {s.target} sets no time limit", hint="nothing to extend")
        s = self.get(s.id)
        if lifetime is not None:
            s.max_lifetime_s = lifetime
        what = said or f"max lifetime now {lifetime} s"
        if fixed is not None and lifetime is not None:
            what += f"; the target's own limit stays ({fixed.message})"
            if s.ends_at is not None and s.created_at + lifetime > s.ends_at:
                what += f", so {s.name} still ends in {max(0, round(s.ends_at - time.time()))} s"
        self._write(s, "extended", what)
        self.wake()
        return s, what
