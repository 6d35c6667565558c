"""Re-execute the example notebooks in place and save them WITH their outputs, which nbval
compares against (`make test`). Run after editing a notebook:

    .venv/bin/python notebooks/execute.py                 # all of them
    .venv/bin/python notebooks/execute.py 01-quickstart   # some

Each runs in a fresh kernel started in this folder (as nbval does). Stream outputs are merged
(a streamed answer is one output, not one per token), widget state is not saved (a widget
shows as its text when the notebook is opened without a kernel), and the saved outputs are
checked for the test secret 04-control-panel types into a password field.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
NEVER_SAVED = ("hf_not_a_real_token",)  # typed into a Password widget in 04-control-panel


def merge_streams(outputs: list) -> list:
    merged: list = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if (out.get("output_type") == "stream" and prev is not None
                and prev.get("output_type") == "stream" and prev.get("name") == out.get("name")):
            prev["text"] += out["text"]
        else:
            merged.append(out)
    return merged


def execute(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    start = time.monotonic()
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = merge_streams(cell.outputs)
    nb.metadata.pop("widgets", None)  # no saved widget state: smaller, and nothing typed in it
    text = nbformat.writes(nb)
    saved = nbformat.writes(nbformat.from_dict({**nb, "cells": [  # all but the code typed in
        {**c, "source": ""} for c in nb.cells]}))
    leaked = [s for s in NEVER_SAVED if s in saved]
    if leaked:
        raise SystemExit(f"{path.name}: a secret would be saved in the notebook: {leaked}")
    path.write_text(text)
    print(f"{path.name}: executed in {time.monotonic() - start:.1f} s")


def main(names: list[str]) -> None:
    paths = ([HERE / (n if n.endswith(".ipynb") else f"{n}.ipynb") for n in names] if names
             else sorted(HERE.glob("[0-9][0-9]-*.ipynb")))
    for path in paths:
        execute(path)


if __name__ == "__main__":
    main(sys.argv[1:])
