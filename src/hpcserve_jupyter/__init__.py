"""hpcserve-jupyter: serve AI models on local GPUs, SLURM clusters and Tapis pods from Jupyter.

Importing the package is cheap; the facade lives in `hpcserve_jupyter.api`. In IPython,
`%load_ext hpcserve_jupyter` adds the `%serve` / `%%serve` magics; `hpcserve_jupyter.panel()`
is the control panel (ipywidgets). Both import what they need only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__ as __version__  # re-exported: hpcserve_jupyter.__version__

if TYPE_CHECKING:
    from .facade import Facade
    from .widgets import ControlPanel


def _jupyter_server_extension_points() -> list[dict[str, object]]:
    """The Jupyter server extension (imported only when a Jupyter server loads it)."""
    from .jupyter import _jupyter_server_extension_points as points

    return points()


def load_ipython_extension(ipython: object) -> None:
    """`%load_ext hpcserve_jupyter`: registers the `%serve` and `%%serve` magics."""
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    from .magics import unload_ipython_extension as unload

    unload(ipython)


def panel(facade: Facade | None = None) -> ControlPanel:
    """The control panel (ipywidgets) on `facade`, by default `api.default()`."""
    from .widgets import ControlPanel

    return ControlPanel(facade)
