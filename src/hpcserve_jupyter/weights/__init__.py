"""Model weights ahead of launch: pull a recipe's files from the Hugging Face Hub into a
target's cache, list what a cache holds, free it. No Jupyter here; huggingface_hub (the
optional extra `hf`) is imported only when a cache is read or written.

    formats.py  recipe model + backend -> repo id and allow-patterns (HubRef.local_path: what
                an engine is given once the files are cached)
    pull.py     pull(): model info, snapshot_download, refs, verification, progress
    cache.py    the cache folder from an environment, list_models(), remove()
    where.py    a target's cache (local only for now)
"""

from __future__ import annotations

from .cache import CachedModel, hub_cache_dir, list_models, remove
from .formats import HubRef, allow_patterns, hub_ref, require_hub_ref
from .pull import PullProgress, PullResult, WeightsError, pull
from .where import CacheSite, cache_site

__all__ = ["CacheSite", "CachedModel", "HubRef", "PullProgress", "PullResult", "WeightsError",
           "allow_patterns", "cache_site", "hub_cache_dir", "hub_ref", "list_models", "pull",
           "remove", "require_hub_ref"]
