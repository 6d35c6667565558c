"""The layout rules docs/ARCHITECTURE.md promises, checked on the source so they stay true:
modules small enough to read, targets that know no engine, a core free of Jupyter."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from hpcserve_jupyter.backends import backend_names

SRC = Path(__file__).resolve().parents[1] / "src" / "hpcserve_jupyter"
MAX_LINES = 700
# Front ends and the server extension may import Jupyter; everything else is the core.
JUPYTER_FACES = ("jupyter", "magics", "widgets")
JUPYTER_MODULES = ("IPython", "ipywidgets", "jupyter_server", "tornado", "traitlets",
                   "ipykernel", "jupyterlab", "jupyter_core")
# The remote facade finds the Jupyter servers running on this machine with jupyter_server's own
# list (inside a function, optional: a kernel without jupyter_server skips that source).
ALLOWED = {("remote.py", "jupyter_server.serverapp")}


def modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


# Backends that are no serving engine: `task` runs a task recipe's own command (and "task" is
# also SLURM's word for a process of a job step, which the SLURM target rightly uses).
NOT_ENGINES = {"task"}


def engine_words() -> list[str]:
    """Every spelling of every registered engine's name (llama-cpp, llama_cpp, llama.cpp)."""
    words = set()
    for name in set(backend_names()) - NOT_ENGINES:
        for sep in ("-", "_", ".", " ", ""):
            words.add(re.sub(r"[-_]", sep, name).lower())
    return sorted(words)


def test_no_module_is_over_the_line_limit():
    long = {str(p.relative_to(SRC)): n for p in modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules along their sections (> {MAX_LINES} lines): {long}"


def test_targets_never_name_an_engine():
    """A target receives argv/env/ports; what an engine needs (Ray, its own rank flags) is data
    the backend declares. Comments count too: a name there is knowledge leaking in."""
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in engine_words()) + r")\b",
                         re.IGNORECASE)
    found = []
    for path in sorted((SRC / "targets").rglob("*.py")):
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if m := pattern.search(line):
                found.append(f"{path.relative_to(SRC)}:{no}: {m.group(0)!r} in {line.strip()}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", [p for p in modules()
                                  if p.relative_to(SRC).parts[0] not in JUPYTER_FACES],
                         ids=lambda p: str(p.relative_to(SRC)))
def test_core_modules_import_no_jupyter(path):
    """The core runs in plain scripts, the CLI and batch jobs: no Jupyter import, lazy or not
    (imports under `if TYPE_CHECKING:` never run and are not counted)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            node.body = []
    bad = []
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                 else [])
        bad += [f"{n} (line {node.lineno})" for n in names
                if n.split(".")[0] in JUPYTER_MODULES
                and (str(path.relative_to(SRC)), n) not in ALLOWED]
    assert not bad, bad
