"""hpcserve-jupyter: serve AI models on local GPUs, SLURM clusters and Tapis pods from Jupyter.

Importing the package is cheap; the facade lives in `hpcserve_jupyter.api`. In IPython,
`%load_ext hpcserve_jupyter` adds the `%serve` / `%%serve` magics; `hpcserve_jupyter.panel()`
is the control panel (ipywidgets). Both import what they need only when used.
"""

__version__ = "0.1.0"


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


def panel(facade: object = None) -> object:
    """The control panel (ipywidgets) on `facade`, by default `api.default()`."""
    from .widgets import ControlPanel

    return ControlPanel(facade)
