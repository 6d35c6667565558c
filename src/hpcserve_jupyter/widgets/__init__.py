"""The control panel (ipywidgets): `hpcserve_jupyter.panel()` or `%serve panel`."""

from .panel import ControlPanel

__all__ = ["ControlPanel"]
