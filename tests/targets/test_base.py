"""targets/base.py: how an engine's end is told to users."""

from __future__ import annotations

import pytest

from hpcserve_jupyter.targets.base import exit_text


@pytest.mark.parametrize(("code", "text"), [
    (1, "exit code 1"),
    (0, "exit code 0"),
    (-9, "exit code -9: killed by SIGKILL"),  # Python's Popen.returncode
    (137, "exit code 137: killed by SIGKILL"),  # a shell / container runtime: 128 + 9
    (143, "exit code 143: killed by SIGTERM"),
    (128, "exit code 128"),
    (255, "exit code 255"),  # not a signal
    (-200, "exit code -200"),  # no such signal
])
def test_exit_text_names_the_signal(code: int, text: str) -> None:
    assert exit_text(code) == text
