"""Primitives shared by the stand-in's route modules (server, jobs, apps/systems, files).

They live apart from :mod:`.server` so that the route modules can import them without a
circular import, and so that ``python -m tests.tapis_standin.server`` (which loads server.py
as ``__main__``) and the route modules raise and catch the very same ``ApiError`` class.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: info.version of the bundled specs; used as the envelope "version" of each service.
SPEC_VERSIONS = {"jobs": "1.7.1", "apps": "25Q4.0", "systems": "25Q4.1", "files": "1.8.2"}
#: The Java services' envelope also carries commit and build (TapisRestUtils).
JAVA_SPECS = frozenset(SPEC_VERSIONS)


class ApiError(Exception):
    """Raised by operation handlers; rendered as a Tapis error envelope."""

    def __init__(self, status: int, message: str | list[str], result: Any = None,
                 envelope_status: str = "error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.result = result
        self.envelope_status = envelope_status  # Jobs answers some 404s with "success"


@dataclass
class FileReply:
    """A non-JSON success answer: a file's bytes, sent from disk in chunks."""

    path: Path
    content_type: str
    filename: str
    remove_after: bool = False  # a temporary file (a directory's zip)


@dataclass
class StreamReply:
    """A non-JSON success answer produced chunk by chunk (e.g. read over SFTP)."""

    chunks: Iterator[bytes]
    content_type: str
    filename: str
    length: int | None = None  # None: the connection is closed after the body


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    raw: bytes
    body: Any
    claims: dict[str, Any] | None

    def q(self, name: str, default: str | None = None) -> str | None:
        """The last value of a query parameter."""
        values = self.query.get(name)
        return values[-1] if values else default

    def q_bool(self, name: str, default: bool = False) -> bool:
        value = self.q(name)
        return default if value is None else value.lower() in ("true", "1")

    def q_int(self, name: str, default: int | None = None) -> int | None:
        value = self.q(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise ApiError(400, f"TAPIS_QUERY_PARAM_NOTINT The {name} query parameter is not "
                                f"an integer: {value}") from None

    @property
    def user(self) -> str:
        return (self.claims or {}).get("tapis/username", "")

    @property
    def tenant(self) -> str:
        return (self.claims or {}).get("tapis/tenant_id", "")


def java_envelope(result: Any, message: str, spec: str, metadata: Any = None,
                  status: str = "success") -> dict[str, Any]:
    """The envelope of the Java services (Jobs, Apps, Systems, Files)."""
    return {"status": status, "message": message, "version": SPEC_VERSIONS[spec],
            "commit": "standin", "build": "standin", "metadata": metadata, "result": result}


def tapis_ts(when: dt.datetime | None = None) -> str:
    """A UTC timestamp the way the Java services print them: 2024-02-21T17:18:01.774368Z."""
    when = when or dt.datetime.now(dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
