"""Job list/search semantics of the stand-in: Tapis search conditions, orderBy and paging.

Why a module of its own: the query language is independent of running jobs and is checked by
unit tests.  Facts followed (tapis-shared-java SearchUtils, tapis-jobs JobsDao): a condition is
``<attr>.<op>=<value>`` (every query parameter that is not reserved), op case-insensitive in
EQ NEQ GT GTE LT LTE IN NIN LIKE NLIKE BETWEEN NBETWEEN CONTAINS NCONTAINS; list values are
comma separated (``\\,`` escapes a comma); LIKE uses ``*`` and ``!`` wildcards; on the
``tags`` array IN/CONTAINS test overlap; ``orderBy`` is ``attr(asc|desc),...``; default limit
100.  Choice of the stand-in: an unknown attribute or operator answers 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .common import ApiError, Request

SUMMARY_FIELDS = ("uuid", "name", "owner", "appId", "created", "status", "condition",
                  "remoteStarted", "ended", "tenant", "execSystemId", "archiveSystemId",
                  "appVersion", "lastUpdated")
RESERVED_QUERY = {"pretty", "select", "search", "orderby", "limit", "skip", "startafter",
                  "computetotal", "listtype"}
INT_FIELDS = {"id", "nodeCount", "coresPerNode", "memoryMB", "maxMinutes", "blockedCount",
              "remoteSubmitRetries", "remoteChecksSuccess", "remoteChecksFailed"}


def page(req: Request, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                         dict[str, Any]]:
    """orderBy, skip and limit (default 100, negative = all); the Tapis list metadata."""
    order_by = req.q("orderBy")
    if order_by:
        for item in reversed([s.strip() for s in order_by.split(",") if s.strip()]):
            m = re.fullmatch(r"(\w+)(?:\((asc|desc)\))?", item)
            if not m:
                raise ApiError(400, f"TAPIS_QUERY_PARAM_ORDERBY_ERROR Invalid orderBy: {item}")
            key = m.group(1)
            rows.sort(key=lambda r, k=key: (r.get(k) is None, r.get(k) if not isinstance(
                r.get(k), list) else ",".join(r[k])), reverse=m.group(2) == "desc")
    limit = req.q_int("limit", 100)
    limit = 100 if limit is None else limit
    skip = req.q_int("skip", 0) or 0
    total = len(rows)
    rows = rows[skip:] if limit < 0 else rows[skip:skip + limit]
    meta = {"recordCount": len(rows), "recordLimit": limit, "recordsSkipped": skip,
            "orderBy": order_by, "startAfter": None,
            "totalCount": total if req.q_bool("computeTotal") else -1}
    return rows, meta


def like(pattern: str) -> re.Pattern[str]:
    out = ""
    for ch in pattern:
        out += ".*" if ch == "*" else "." if ch == "!" else re.escape(ch)
    return re.compile(out, re.DOTALL)


def matches(row: dict[str, Any], key: str, value: str) -> bool:
    """One search condition ``<attr>.<op>=<value>`` against a Job row."""
    attr, _, op = key.rpartition(".")
    op = op.upper()
    if not attr or op not in ("EQ", "NEQ", "GT", "GTE", "LT", "LTE", "IN", "NIN", "LIKE",
                              "NLIKE", "BETWEEN", "NBETWEEN", "CONTAINS", "NCONTAINS"):
        raise ApiError(400, f"JOBS_SEARCH_LIST_ERROR Invalid search condition: {key}={value}")
    if attr not in row:
        raise ApiError(400, f"SEARCH_DB_NO_COLUMN Unknown search attribute: {attr}")
    values = [v.replace("\\,", ",") for v in re.split(r"(?<!\\),", value)]
    have = row[attr]
    if isinstance(have, list):  # tags: text[]
        if op in ("IN", "CONTAINS"):
            return bool(set(values) & set(have))
        if op in ("NIN", "NCONTAINS"):
            return not set(values) & set(have)
        raise ApiError(400, f"SEARCH_DB_INVALID_SEARCH_TYPE Operator {op} is not supported "
                            f"for {attr}")
    if have is None:
        return op in ("NEQ", "NIN", "NLIKE")
    if attr in INT_FIELDS or isinstance(have, bool):
        conv: Callable[[str], Any] = (lambda v: v.lower() == "true") if isinstance(have, bool) \
            else int
        try:
            values_c = [conv(v) for v in values]
        except ValueError:
            raise ApiError(400, f"SEARCH_DB_INVALID_VALUE {value} is not valid for {attr}") \
                from None
    else:
        values_c, have = values, str(have)
    one = values_c[0]
    if op == "EQ":
        return have == one
    if op == "NEQ":
        return have != one
    if op == "GT":
        return have > one
    if op == "GTE":
        return have >= one
    if op == "LT":
        return have < one
    if op == "LTE":
        return have <= one
    if op == "IN":
        return have in values_c
    if op == "NIN":
        return have not in values_c
    if op in ("LIKE", "NLIKE"):
        hit = like(str(one)).fullmatch(str(have)) is not None
        return hit if op == "LIKE" else not hit
    if len(values_c) != 2:
        raise ApiError(400, f"SEARCH_COND_INVALID_BETWEEN {op} needs two values: {value}")
    inside = values_c[0] <= have <= values_c[1]
    if op in ("BETWEEN", "NBETWEEN"):
        return inside if op == "BETWEEN" else not inside
    raise ApiError(400, f"SEARCH_DB_INVALID_SEARCH_TYPE Operator {op} is not supported for "
                        f"{attr}")
