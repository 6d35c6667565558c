"""Whether an engine serves: its health endpoint answers below 400 with the session's key.

One probe for everyone who asks: the manager (is a starting session ready?) and the server
extension's replica groups (may a replica taken out of the rotation come back?).
"""

from __future__ import annotations

import httpx


async def answers(client: httpx.AsyncClient, url: str, path: str, api_key: str, *,
                  timeout: float | None = None) -> bool:
    """GET url+path with the key; False for an error status or any transport failure."""
    kwargs = {} if timeout is None else {"timeout": timeout}
    try:
        r = await client.get(url + path, headers={"Authorization": f"Bearer {api_key}"},
                             **kwargs)
    except httpx.HTTPError:
        return False
    return r.status_code < 400
