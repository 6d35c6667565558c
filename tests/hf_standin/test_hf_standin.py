"""Contract tests: the real huggingface_hub client (2.4.0) against the stand-in, through
HF_ENDPOINT only (no endpoint argument), into a per-test HF_HOME."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from .fixtures import BIG, GATED, OTHER_TOKEN, TINY, TOKEN
from .server import HubStandIn

hf = pytest.importorskip("huggingface_hub")
errors = pytest.importorskip("huggingface_hub.errors")


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_model_info_gives_the_commit_and_file_metadata(hf_hub: HubStandIn, repo_folders):
    info = hf.HfApi().model_info(TINY, files_metadata=True)
    main = hf_hub.repos[TINY].revisions["main"]
    assert info.sha == main.commit
    assert info.gated is False
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == set(main.files)
    big = siblings["model.safetensors"]
    assert big.size == BIG and big.lfs is not None
    assert big.lfs.sha256 == sha256(repo_folders["main"] / "model.safetensors")
    assert siblings["config.json"].lfs is None
    assert siblings["config.json"].size == (repo_folders["main"] / "config.json").stat().st_size
    v1 = hf.HfApi().model_info(TINY, revision="v1")
    assert v1.sha == hf_hub.repos[TINY].revisions["v1"].commit != main.commit


def test_list_repo_files_and_tree(hf_hub: HubStandIn):
    files = hf.list_repo_files(TINY)
    assert sorted(files) == sorted(hf_hub.repos[TINY].revisions["main"].files)
    top = list(hf.HfApi().list_repo_tree(TINY))
    assert {e.path for e in top if isinstance(e, hf.hf_api.RepoFolder)} == {"original"}
    assert "original/params.json" not in {e.path for e in top}


def test_tree_pages_are_followed(hf_hub: HubStandIn):
    hf_hub.page_size = 3
    assert len(hf.list_repo_files(TINY)) == len(hf_hub.repos[TINY].revisions["main"].files)
    assert len(hf_hub.requests("GET", path_contains="/tree/")) > 1


def test_hf_hub_download_small_and_lfs_files(hf_hub: HubStandIn, repo_folders):
    config = hf.hf_hub_download(TINY, "config.json")
    assert Path(config).read_bytes() == (repo_folders["main"] / "config.json").read_bytes()
    big = hf.hf_hub_download(TINY, "model.safetensors", token=TOKEN)
    assert sha256(big) == sha256(repo_folders["main"] / "model.safetensors")
    # the LFS file came from the CDN, without the token; the Hub answered the HEAD with it
    cdn = hf_hub.requests("GET", server="cdn")
    assert len(cdn) == 1 and not cdn[0].auth
    heads = hf_hub.requests("HEAD", path_contains="model.safetensors")
    assert heads and all(h.auth and h.status == 302 for h in heads)
    commit = hf_hub.repos[TINY].revisions["main"].commit
    assert Path(big).parent.name == commit
    # blobs are named by sha256 (LFS) and by the git blob id (small files)
    blobs = {p.name for p in (Path(os.environ["HF_HUB_CACHE"]) / "models--hpcserve-test--tiny-model"
                                / "blobs").iterdir()}
    main = hf_hub.repos[TINY].revisions["main"]
    assert blobs == {main.files["model.safetensors"].sha256, main.files["config.json"].blob_id}


def test_snapshot_download_with_patterns_and_revision(hf_hub: HubStandIn, repo_folders):
    folder = Path(hf.snapshot_download(TINY, revision="v1",
                                       allow_patterns=["*.json", "*.safetensors"]))
    v1 = hf_hub.repos[TINY].revisions["v1"]
    assert folder.name == v1.commit
    got = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert got == sorted(p for p in v1.files if p.endswith((".json", ".safetensors")))
    assert sha256(folder / "model.safetensors") == sha256(repo_folders["v1"] / "model.safetensors")
    assert (folder / "config.json").read_text() == (repo_folders["v1"] / "config.json").read_text()
    refs = folder.parent.parent / "refs" / "v1"
    assert refs.read_text() == v1.commit
    # nothing outside the patterns was asked for
    assert not hf_hub.requests(path_contains="pytorch_model.bin")


def test_gated_repo_needs_a_granted_token(hf_hub: HubStandIn, repo_folders):
    with pytest.raises(errors.GatedRepoError) as no_token:
        hf.hf_hub_download(GATED, "config.json", token=False)
    assert no_token.value.response.status_code == 401
    with pytest.raises(errors.GatedRepoError) as not_granted:
        hf.hf_hub_download(GATED, "config.json", token=OTHER_TOKEN)
    assert not_granted.value.response.status_code == 403
    with pytest.raises(errors.HfHubHTTPError) as bad:
        hf.hf_hub_download(GATED, "config.json", token="hf_not_a_token_the_hub_knows")
    assert bad.value.response.status_code == 401
    assert not isinstance(bad.value, errors.RepositoryNotFoundError)
    path = hf.snapshot_download(GATED, token=TOKEN, allow_patterns=["*.safetensors"])
    assert sha256(Path(path) / "model.safetensors") == sha256(
        repo_folders["gated"] / "model.safetensors")
    # the token went to the Hub only, as a Bearer header (the log keeps its presence, no value)
    assert all(not r.auth for r in hf_hub.requests(server="cdn"))
    assert all(r.auth for r in hf_hub.requests(server="hub", path_contains="/resolve/")
               if r.status in (200, 302))


def test_interrupted_download_resumes_with_a_range(hf_hub: HubStandIn, repo_folders):
    cut_at = 11 * 1024 * 1024  # after the client's first 10 MiB read
    hf_hub.cut_once("model.safetensors", cut_at)
    path = hf.hf_hub_download(TINY, "model.safetensors")
    assert sha256(path) == sha256(repo_folders["main"] / "model.safetensors")
    gets = hf_hub.requests("GET", server="cdn")
    assert [g.range for g in gets] == [None, f"bytes={10 * 1024 * 1024}-"]
    assert gets[1].status == 206


def test_unknown_repo_revision_and_file(hf_hub: HubStandIn):
    with pytest.raises(errors.RepositoryNotFoundError):
        hf.snapshot_download("nobody/nothing")
    with pytest.raises(errors.RevisionNotFoundError):
        hf.HfApi().model_info(TINY, revision="no-such-branch")
    with pytest.raises(errors.RemoteEntryNotFoundError):
        hf.hf_hub_download(TINY, "missing.json")


def test_injected_failure_is_retried_by_the_client(hf_hub: HubStandIn):
    hf_hub.fail_next(503, method="GET", path_contains="/tree/")
    assert "config.json" in hf.list_repo_files(TINY)
    assert [r.status for r in hf_hub.requests("GET", path_contains="/tree/")] == [503, 200]
