"""What sessions and jobs share as stored records: a state machine whose allowed transitions
are a table, time stamps set on entering states, and a JSON form for the store."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import asdict
from enum import StrEnum
from typing import Any, ClassVar, Self

from .errors import HpcserveError


class InvalidTransition(HpcserveError):
    http_status = 409


class StateRecord:
    """Mixed into a dataclass with `name`, `state`, `reason`, `updated_at` and `ended_at`."""

    NOUN: ClassVar[str]
    STATES: ClassVar[type[StrEnum]]
    ALLOWED: ClassVar[Mapping[Any, frozenset[Any]]]
    STAMPS: ClassVar[Mapping[str, str]] = {}  # state -> attribute set to the time entered
    name: str
    state: Any
    reason: str
    updated_at: float
    ended_at: float | None

    def transition(self, new: Any, reason: str = "") -> bool:
        """Move to `new`; False when already there, InvalidTransition when not allowed."""
        new = self.STATES(new)
        if new == self.state:
            if reason:
                self.reason = reason
            return False
        if new not in self.ALLOWED[self.state]:
            raise InvalidTransition(f"{self.NOUN} {self.name} cannot go from {self.state} "
                                    f"to {new}")
        now = time.time()
        self.state, self.reason, self.updated_at = new, reason, now
        if str(new) in self.STAMPS:
            setattr(self, self.STAMPS[str(new)], now)
        if not self.ALLOWED[new]:
            self.ended_at = now
        return True

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)  # type: ignore[call-overload]
        data["state"] = str(self.state)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        known = {k: v for k, v in data.items() if k in names}
        known["state"] = cls.STATES(known.get("state", "pending"))
        return cls(**known)
