"""Model weights in a Tapis Pods target's shared volume, through the Pods API only.

The pods of a `tapis-pods` target mount its volume at `model_dir` and read the Hugging Face
cache under it (HF_HOME=<model_dir>/hf, deploy.py), so a pull fills that cache in the volume:
the files are fetched here (huggingface_hub, verified, into a private staging cache under the
hpcserve home that a cut pull resumes from; nothing is fetched when the volume's index already
lists the commit's files) and uploaded with `upload_to_volume` into
`hf/hub/models--OWNER--NAME/snapshots/<commit>/` (plain files: the API makes no links, and
huggingface_hub reads a snapshot's files whatever they are), then `refs/<revision>`. The Pods
API lists only a volume's top level and deletes no single file, so each pulled model also gets
an index at that level, `.hpcserve-model--OWNER--NAME.json` (revisions, files, sizes), written
last: `hpcserve models` and the launch-time lookup read it, and a model whose upload was cut is
not in it. Removing a model runs a short pod that mounts the volume and deletes its folder and
index. Only a shared volume (`volume_id`) can be filled ahead of a launch: a session's own volume
is created with its pod.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import posixpath
import shutil
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import BadInput, HpcserveError, NotFound, close_matches
from .formats import HubRef, allow_patterns
from .pull import PullProgress, WeightsError, pull

log = logging.getLogger(__name__)
INDEX_PREFIX = ".hpcserve-model--"
RM_TIMEOUT = 300.0  # seconds a removal pod may take
RM_POLL = 1.0


def repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def index_name(repo_id: str) -> str:
    return INDEX_PREFIX + repo_id.replace("/", "--") + ".json"


class VolumeCache:
    """The Hugging Face cache in a Tapis Pods target's shared volume."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.s = target.settings
        self.api = target.api
        if not self.s.volume_id:
            raise BadInput(f"target {target.name!r} gives each session a volume of its own (no "
                           "volume_id), so nothing can be pulled into it ahead of a launch",
                           hint="set volume_id: <name> in the target's settings to share one "
                           "model volume between its sessions, then pull into it")
        self.volume_id: str = self.s.volume_id
        self.model_dir = self.s.model_dir.rstrip("/") or "/"
        self.hub_rel = self._hub_rel()

    def _hub_rel(self) -> str:
        """The pods' hub cache as a path inside the volume (it must be in it)."""
        from .cache import hub_cache_dir

        env = {"HF_HOME": posixpath.join(self.model_dir, "hf"), "HOME": "/root",
               **{str(k): str(v) for k, v in self.s.env.items()}}
        hub = PurePosixPath(str(hub_cache_dir(env)))
        try:
            rel = hub.relative_to(self.model_dir)
        except ValueError:
            raise BadInput(f"target {self.target.name!r}: its pods' model cache {hub} is not in "
                           f"the model volume (mounted at {self.model_dir})",
                           hint="remove HF_HOME/HF_HUB_CACHE from the target's env:, or point "
                           f"them under {self.model_dir}") from None
        return rel.as_posix()

    def where(self) -> str:
        return f"volume {self.volume_id} ({posixpath.join(self.model_dir, self.hub_rel)})"

    def pod_path(self, repo_id: str, commit: str, filename: str | None = None) -> str:
        snap = posixpath.join(self.model_dir, self.hub_rel, repo_folder(repo_id), "snapshots",
                              commit)
        return posixpath.join(snap, filename) if filename else snap

    # ------------------------------------------------------------ index

    def _index(self, repo_id: str) -> dict[str, Any]:
        return self._read_index(index_name(repo_id))

    def _read_index(self, name: str) -> dict[str, Any]:
        from ..targets.tapis.errors import TapisNotFound

        try:
            raw = self.api.volume_file(self.volume_id, name)
        except TapisNotFound:
            return {}
        try:
            found = json.loads(raw.decode())
        except (UnicodeDecodeError, ValueError):
            log.warning("unreadable model index %s in volume %s", name, self.volume_id)
            return {}
        return found if isinstance(found, dict) and found.get("repo_id") else {}

    def _indexes(self) -> list[dict[str, Any]]:
        listing = self.api.call("list_volume_files", f"list volume {self.volume_id}",
                                volume_id=self.volume_id) or []
        names = sorted(str(f.get("name") or posixpath.basename(str(f.get("path", ""))))
                       for f in listing if isinstance(f, dict))
        found = []
        for name in names:
            if name.startswith(INDEX_PREFIX) and name.endswith(".json"):
                index = self._read_index(name)
                if index.get("snapshots"):
                    found.append(index)
        return found

    # ------------------------------------------------------------ list, find

    def list(self) -> tuple[str, list[dict[str, Any]]]:
        models = []
        for index in self._indexes():
            refs = index.get("refs") or {}
            for commit, snap in sorted((index.get("snapshots") or {}).items()):
                files = snap.get("files") or {}
                models.append({
                    "repo_id": index["repo_id"], "revision": commit,
                    "refs": sorted(r for r, c in refs.items() if c == commit),
                    "size": sum(int(v) for v in files.values()), "files": len(files),
                    "last_used": 0.0, "pulled_at": snap.get("pulled_at", 0.0),
                    "snapshot": self.pod_path(index["repo_id"], commit)})
        return self.where(), models

    def find(self, repo_id: str, filename: str | None, revision: str = "main") -> str | None:
        """The path in the pods of a model the index says is complete there, or None."""
        index = self._index(repo_id)
        snapshots = index.get("snapshots") or {}
        commit = (index.get("refs") or {}).get(revision) or (
            revision if revision in snapshots else None)
        files = (snapshots.get(commit) or {}).get("files") or {} if commit else {}
        if not files or (filename and filename not in files):
            return None
        return self.pod_path(repo_id, str(commit), filename)

    # ------------------------------------------------------------ pull

    def _staging(self, ref: HubRef, backend: str, revision: str | None) -> Path:
        from ..paths import home

        key = hashlib.sha256(json.dumps([self.s.base_url, self.volume_id, ref.repo_id,
                                         ref.filename, backend, revision or "main"]
                                        ).encode()).hexdigest()[:16]
        folder = home() / "weights-staging" / key
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return folder

    def pull(self, ref: HubRef, backend: str, revision: str | None, token: str | None,
             token_env: str, progress: Callable[[PullProgress], None] | None = None
             ) -> dict[str, Any]:
        """Fetch (resuming), upload what the volume lacks, then refs and the index."""
        from ..targets.tapis.errors import TapisNotFound

        try:  # a volume missing now is created as the first launch would create it
            self.api.get_volume(self.volume_id)
        except TapisNotFound:
            self.api.create_volume({"volume_id": self.volume_id,
                                    "size_limit": self.s.volume_size_mb,
                                    "description": "hpcserve shared model files"})
        staging = self._staging(ref, backend, revision)
        index = self._index(ref.repo_id) or {"repo_id": ref.repo_id}

        def present(commit: str, sizes: dict[str, int]) -> bool:
            """The index lists these files at these sizes: the volume has them (complete)."""
            have = ((index.get("snapshots") or {}).get(commit) or {}).get("files") or {}
            return all(have.get(name) == size for name, size in sizes.items())

        done = pull(ref.repo_id, revision, functools.partial(allow_patterns, ref, backend),
                    staging / "hub", token, progress, token_env=token_env, present=present)
        sizes = ({name: (done.snapshot / name).stat().st_size for name in done.files}
                 if done.fetched else index["snapshots"][done.commit]["files"])
        sizes = {name: int(sizes[name]) for name in done.files}
        uploaded_file = staging / f"uploaded-{done.commit}.json"
        try:
            uploaded = dict(json.loads(uploaded_file.read_text()))
        except (OSError, ValueError):
            uploaded = {}
        total, sent = sum(sizes.values()), 0
        base = posixpath.join(self.hub_rel, repo_folder(ref.repo_id))
        for n, name in enumerate(sorted(sizes), 1):
            # not in the volume already, nor sent by an earlier run that was cut
            if done.fetched and uploaded.get(name) != sizes[name]:
                self.api.upload(self.volume_id,
                                posixpath.join(base, "snapshots", done.commit, name),
                                (done.snapshot / name).read_bytes())
                uploaded[name] = sizes[name]
                uploaded_file.write_text(json.dumps(uploaded))
            sent += sizes[name]
            if progress is not None:
                progress(PullProgress("upload", sent, total, n, len(sizes)))
        asked = revision or "main"
        refs = dict(index.get("refs") or {})
        if asked != done.commit and refs.get(asked) != done.commit:
            self.api.upload(self.volume_id, posixpath.join(base, "refs", asked),
                            done.commit.encode())
            refs[asked] = done.commit
        if done.fetched or refs != (index.get("refs") or {}):
            snapshots = dict(index.get("snapshots") or {})
            snapshots[done.commit] = {"files": {**(snapshots.get(done.commit) or {}).get(
                "files", {}), **sizes}, "pulled_at": time.time()}
            index.update(repo_id=ref.repo_id, refs=refs, snapshots=snapshots)
            self.api.upload(self.volume_id, index_name(ref.repo_id),
                            json.dumps(index, indent=1, sort_keys=True).encode())
        shutil.rmtree(staging, ignore_errors=True)  # in the volume now: no copy kept here
        return {"repo_id": ref.repo_id, "revision": asked, "commit": done.commit,
                "snapshot": self.pod_path(ref.repo_id, done.commit), "cache": self.where(),
                "files": sorted(sizes), "size": total}

    # ------------------------------------------------------------ remove

    def remove(self, repo_id: str) -> tuple[str, int]:
        """A short pod with the volume mounted deletes the model's folder and index (the Pods
        API deletes no file); waits for it, then deletes the pod."""
        from ..targets.tapis import deploy
        from ..targets.tapis.config import FLEXSERV_IMAGE
        from ..targets.tapis.ids import check_id
        from ..targets.tapis.states import ENDED_STATES

        index = self._index(repo_id)
        if not index.get("snapshots"):
            known = [str(i.get("repo_id")) for i in self._indexes()]
            raise NotFound(f"no model {repo_id!r} in {self.where()} of target "
                           f"{self.target.name!r}", hint=close_matches(repo_id, known))
        freed = sum(int(v) for snap in index["snapshots"].values()
                    for v in (snap.get("files") or {}).values())
        paths = [posixpath.join(self.model_dir, self.hub_rel, repo_folder(repo_id)),
                 posixpath.join(self.model_dir, index_name(repo_id))]
        digest = hashlib.sha256(f"{repo_id}{time.time()}".encode()).hexdigest()[:10]
        pod_id = check_id(f"{self.s.id_prefix}rm{digest}", "pod id")
        body = {"pod_id": pod_id, "image": self.s.image or FLEXSERV_IMAGE,
                "description": f"hpcserve: remove {repo_id} from volume {self.volume_id}"[:255],
                "command": ["rm"], "arguments": ["-rf", "--", *paths],
                "volume_mounts": deploy.volume_mounts(self.s, self.volume_id),
                "resources": {"cpu_request": 100, "cpu_limit": 500, "mem_request": 64,
                              "mem_limit": 256, "gpus": 0},
                "time_to_stop_default": deploy.MIN_TIME_TO_STOP}
        self.api.create_pod(body)
        try:
            deadline = time.monotonic() + RM_TIMEOUT
            while True:
                pod = self.api.get_pod(pod_id)
                status = str(pod.get("status") or "")
                if status in ENDED_STATES:
                    break
                if time.monotonic() > deadline:
                    raise WeightsError(f"the pod {pod_id} removing {repo_id} did not end in "
                                       f"{RM_TIMEOUT:.0f} s (status {status})")
                time.sleep(RM_POLL)
            if status != "COMPLETE":
                logs = self.api.pod_logs(pod_id).strip()
                raise WeightsError(f"the pod {pod_id} removing {repo_id} ended in {status}"
                                   + (f": {logs.splitlines()[-1]}" if logs else ""))
        finally:
            try:
                self.api.delete_pod(pod_id)
            except HpcserveError as exc:
                log.warning("could not delete the removal pod %s: %s", pod_id, exc.message)
        return self.where(), freed
