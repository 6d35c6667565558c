"""Which files of a Hugging Face repo an engine needs: the one place a recipe's `model` and a
backend name become a repo id and allow-patterns.

A recipe's model is a hub reference when it reads `OWNER/NAME` (a repo, for engines that load
Hugging Face checkpoints) or `OWNER/NAME/FILE.gguf` (one GGUF file of a repo, with any folder
inside it; a split GGUF `...-00001-of-00003.gguf` brings its other parts). `pkg:` models and
paths are not on the hub. GGUF engines get the named file only; the others get the
safetensors weights, configs and tokenizer files, and the pickled `*.bin`/`*.pth` weights only
when the repo has no safetensors (they are the same weights in an older format, often twice the
download, and a repo's `original/*.pth` are another engine's copy).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import BadInput

# Engines that load a single GGUF file, not a checkpoint folder.
GGUF_BACKENDS = frozenset({"llama-cpp"})
HF_WEIGHTS = ("*.safetensors",)
HF_FALLBACK_WEIGHTS = ("*.bin", "*.pth")
HF_SUPPORT = ("*.json", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja", "spiece.model")
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REPO_RE = re.compile(rf"^({_PART})/({_PART})(?:/(.+))?$")
_SPLIT_GGUF = re.compile(r"^(.*)-\d{5}-of-(\d{5})\.gguf$")


@dataclass(frozen=True)
class HubRef:
    """A model on the hub: the repo, and the file inside it for a GGUF model."""

    repo_id: str
    filename: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}/{self.filename}" if self.filename else self.repo_id

    def local_path(self, snapshot: Path) -> Path:
        """What an engine is given once the files are in the cache: the snapshot folder, or the
        GGUF file inside it."""
        return snapshot / self.filename if self.filename else snapshot


def hub_ref(model: str | None) -> HubRef | None:
    """The hub reference a recipe's model names, or None (no model, `pkg:`, a path)."""
    if not model or model.startswith(("pkg:", "/", "./", "../", "~")) or "\\" in model:
        return None
    m = _REPO_RE.match(model)
    if not m:
        return None
    rest = m.group(3)
    if rest is not None:
        parts = PurePosixPath(rest).parts
        if not rest.endswith(".gguf") or any(p in ("..", ".") for p in parts):
            return None  # a repo's subfolder is no model reference engines take
    if Path(model).expanduser().exists():
        return None  # a relative path on this machine that looks like OWNER/NAME
    return HubRef(f"{m.group(1)}/{m.group(2)}", rest)


def require_hub_ref(model: str | None, recipe: str) -> HubRef:
    ref = hub_ref(model)
    if ref is None:
        what = ("has no model" if not model else
                f"names a file shipped in a Python package ({model}), nothing to pull"
                if model.startswith("pkg:") else
                f"has model {model!r}, which is not a Hugging Face repo id (OWNER/NAME, or "
                "OWNER/NAME/FILE.gguf)")
        raise BadInput(f"recipe {recipe!r} {what}")
    return ref


def allow_patterns(ref: HubRef, backend: str, repo_files: Sequence[str]) -> list[str]:
    """The allow-patterns (fnmatch, as huggingface_hub takes them) for `backend`."""
    if ref.filename:
        split = _SPLIT_GGUF.match(ref.filename)
        if split:
            part = "[0-9]" * 5
            return [f"{_escape(split.group(1))}-{part}-of-{split.group(2)}.gguf"]
        return [_escape(ref.filename)]
    if backend in GGUF_BACKENDS:
        ggufs = sorted(f for f in repo_files if f.endswith(".gguf"))
        raise BadInput(f"{backend} loads one GGUF file: name it in the recipe's model as "
                       f"{ref.repo_id}/FILE.gguf", hint=("files of this repo: " + ", ".join(ggufs))
                       if ggufs else f"{ref.repo_id} has no .gguf file")
    has_safetensors = any(fnmatch.fnmatch(f, p) for f in repo_files for p in HF_WEIGHTS)
    weights = HF_WEIGHTS if has_safetensors else HF_WEIGHTS + HF_FALLBACK_WEIGHTS
    return [*weights, *HF_SUPPORT]


def _escape(name: str) -> str:
    """A file name as an fnmatch pattern matching only itself."""
    return re.sub(r"([*?\[])", r"[\1]", name)
