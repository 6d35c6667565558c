"""The control panel (ipywidgets): `hpcserve_jupyter.panel()` or `%serve panel`.

`panel.py` composes the parts, one module each: `launch_form.py` (the form above the tabs),
`sessions_tab.py` with `session_row.py`, `logs_tab.py`, `chat_tab.py`, `jobs_tab.py` with
`job_row.py` and `job_form.py` (one-off jobs); `shared.py` holds what
they share (facade, lock, worker threads, status lines). A new front-end action goes into the
part whose widgets it uses, and calls the facade only.
"""

from .panel import ControlPanel

__all__ = ["ControlPanel"]
