"""IPython magics: `%load_ext hpcserve_jupyter`, then `%serve help`.

    %serve launch smollm2-135m          # progress until ready; the session is now "in use"
    %%serve --max-tokens 64
    Why is the sky blue? Answer for {audience}.     # {name}: a notebook variable; {{ }}: braces

This module stays import-light: IPython's magic machinery is imported by `.core` only when the
extension is loaded, and the facade only when a command runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell


def load_ipython_extension(ipython: InteractiveShell) -> None:
    from .core import register

    register(ipython)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    from .core import unregister

    unregister(ipython)
