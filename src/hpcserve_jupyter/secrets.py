"""Per-session secrets, derived rather than stored, and redaction of secrets from text.

A session's API key is HMAC(master key, session id): the master key lives in a 0600 file in the
state directory, so the session store never holds a key in clear text and a restarted manager
derives the same key again.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets as _random
from pathlib import Path

MASTER_FILE = "secret.key"


def master_key(state_dir: Path) -> bytes:
    path = state_dir / MASTER_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    key = _random.token_bytes(32)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex())
    try:
        os.link(tmp, path)  # atomic: the first writer wins, the others read its key
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return bytes.fromhex(path.read_text().strip())


def session_api_key(master: bytes, session_id: str) -> str:
    digest = hmac.new(master, f"api-key:{session_id}".encode(), hashlib.sha256).hexdigest()
    return "hps-" + digest[:40]


def redact(text: str, secrets: list[str] | tuple[str, ...]) -> str:
    """Replace every occurrence of each secret (of useful length) with ***."""
    for s in secrets:
        if s and len(s) >= 6:
            text = text.replace(s, "***")
    return text
