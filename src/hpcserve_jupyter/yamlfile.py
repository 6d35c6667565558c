"""Read YAML user files keeping node positions, so validation errors can point at a line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import RecipeError


def load_with_lines(path: Path) -> tuple[Any, yaml.Node | None]:
    """(data, node tree) of a YAML file; a RecipeError with file:line when it does not parse."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"cannot read the file: {exc.strerror}", path=str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise RecipeError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x})", path=str(path),
                          line=line, hint="save the file as UTF-8") from None
    try:
        return yaml.safe_load(text), yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise RecipeError(f"not valid YAML: {getattr(exc, 'problem', exc)}", path=str(path),
                          line=mark.line + 1 if mark else None) from None
    except (ValueError, OverflowError) as exc:
        # PyYAML's constructors let these through: a date like 2024-13-45, an integer of
        # more digits than Python converts.
        raise RecipeError(f"not valid YAML: a value cannot be read: {exc}", path=str(path)
                          ) from None
    except RecursionError:
        raise RecipeError("not valid YAML: nested too deeply", path=str(path)) from None


def line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the node at a pydantic error location (or of its closest parent)."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(key):
                    node, line = v, k.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def explain(err: dict[str, Any]) -> str:
    """One pydantic error as 'field.path: what is wrong'."""
    loc = ".".join(str(p) for p in err["loc"]
                   if not str(p).startswith("function-") and p != "[key]")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "literal_error":
        msg = f"{msg} (got {err.get('input')!r})"
    return f"{loc}: {msg}" if loc else msg
