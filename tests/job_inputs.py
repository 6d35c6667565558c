"""Batch-job inputs the job tests share: chat lines in the OpenAI Batch format, written as
JSONL. (A module of its own: a conftest is not importable by name when several exist.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def chat_lines(n: int, max_tokens: int = 8, prefix: str = "q") -> list[dict[str, Any]]:
    """`n` chat requests with custom_ids PREFIX0..PREFIX{n-1}, greedy, at most `max_tokens`."""
    return [{"custom_id": f"{prefix}{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"messages": [{"role": "user", "content": f"Count to {i % 5 + 2}."}],
                      "max_tokens": max_tokens, "temperature": 0}} for i in range(n)]


def write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path
