"""The control panel over a test module's facade (`hp`, each module defines it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from hpcserve_jupyter.widgets import ControlPanel


@pytest.fixture
def panel(hp: Any) -> Iterator[ControlPanel]:
    p = ControlPanel(hp)
    yield p
    p.join(60)
    p.close()
