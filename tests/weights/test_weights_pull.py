"""pull() with the real huggingface_hub client against the Hub stand-in: progress, the files an
engine needs, resume, verification, gated repos and the errors users see."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import pytest

from hf_standin.fixtures import BIG, GATED, GGUF, OTHER_TOKEN, TINY, TOKEN
from hf_standin.server import HubStandIn
from hpcserve_jupyter.errors import BadInput, HpcserveError, NotFound
from hpcserve_jupyter.weights import HubRef, PullProgress, WeightsError, allow_patterns, pull

pytest.importorskip("huggingface_hub")
HF_FILES = ["chat_template.jinja", "config.json", "generation_config.json",
            "model.safetensors", "original/params.json", "tokenizer.json",
            "tokenizer_config.json"]


def hf_patterns(repo: str = TINY):
    return functools.partial(allow_patterns, HubRef(repo), "vllm")


def files_in(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def same_files(snapshot: Path, source: Path, names: list[str]) -> bool:
    return all(hashlib.sha256((snapshot / n).read_bytes()).digest()
               == hashlib.sha256((source / n).read_bytes()).digest() for n in names)


def downloads(hub: HubStandIn) -> list[str]:
    """The files whose content was sent (GETs of the Hub's resolve route or of the CDN)."""
    got = [r.path.split("/resolve/", 1)[1].split("/", 1)[1]
           for r in hub.requests("GET", server="hub", path_contains="/resolve/")
           if r.status in (200, 206)]
    got += [r.query.split("name=")[1].split("&")[0].replace("%2F", "/")
            for r in hub.requests("GET", server="cdn") if r.status in (200, 206)]
    return sorted(got)


def test_pull_fetches_what_the_engine_needs_with_progress(hf_hub: HubStandIn, repo_folders,
                                                          tmp_path):
    seen: list[PullProgress] = []
    result = pull(TINY, None, hf_patterns(), tmp_path / "cache", None, seen.append)
    main = hf_hub.repos[TINY].revisions["main"]
    assert result.commit == main.commit and result.revision == "main"
    assert result.snapshot == (tmp_path / "cache" / "models--hpcserve-test--tiny-model"
                               / "snapshots" / main.commit)
    assert files_in(result.snapshot) == HF_FILES == result.files
    assert same_files(result.snapshot, repo_folders["main"], HF_FILES)
    total = sum((repo_folders["main"] / n).stat().st_size for n in HF_FILES)
    assert result.size == total
    assert (result.snapshot.parent.parent / "refs" / "main").read_text() == main.commit
    download = [p for p in seen if p.phase == "download"]
    verify = [p for p in seen if p.phase == "verify"]
    assert download and verify and seen.index(download[-1]) < seen.index(verify[0])
    assert all(p.bytes_total == total and p.files_total == len(HF_FILES) for p in seen)
    done = [p.bytes_done for p in download]
    assert done == sorted(done) and done[-1] == total
    assert max(p.files_done for p in download) == len(HF_FILES)
    assert (verify[-1].bytes_done, verify[-1].files_done) == (total, len(HF_FILES))
    assert downloads(hf_hub) == HF_FILES  # never the .bin, README or .gitattributes


def test_a_second_pull_downloads_nothing(hf_hub: HubStandIn, tmp_path):
    first = pull(TINY, None, hf_patterns(), tmp_path / "c")
    before = len(hf_hub.log)
    seen: list[PullProgress] = []
    again = pull(TINY, None, hf_patterns(), tmp_path / "c", progress=seen.append)
    assert again.snapshot == first.snapshot
    assert not [r for r in hf_hub.log[before:] if "/resolve/" in r.path or r.server == "cdn"]
    assert seen[-1].bytes_done == seen[-1].bytes_total


def test_a_cut_connection_resumes_with_a_range(hf_hub: HubStandIn, repo_folders, tmp_path):
    hf_hub.cut_once("model.safetensors", 11 * 1024 * 1024)
    result = pull(TINY, None, hf_patterns(), tmp_path / "c")
    assert same_files(result.snapshot, repo_folders["main"], ["model.safetensors"])
    ranges = [r.range for r in hf_hub.requests("GET", server="cdn")]
    assert ranges == [None, f"bytes={10 * 1024 * 1024}-"]


def test_an_interrupted_pull_fetches_only_what_is_missing(hf_hub: HubStandIn, repo_folders,
                                                         tmp_path):
    hf_hub.cut_once("model.safetensors", 11 * 1024 * 1024, then_status=500)
    with pytest.raises(WeightsError) as err:
        pull(TINY, None, hf_patterns(), tmp_path / "c", max_workers=1)
    assert "500" in str(err.value)
    snap = tmp_path / "c" / "models--hpcserve-test--tiny-model" / "snapshots" / \
        hf_hub.repos[TINY].revisions["main"].commit
    had = files_in(snap) if snap.exists() else []
    assert "model.safetensors" not in had
    before = len(hf_hub.log)
    result = pull(TINY, None, hf_patterns(), tmp_path / "c")
    hf_hub.log[:] = hf_hub.log[before:]
    assert downloads(hf_hub) == sorted(set(HF_FILES) - set(had))
    assert same_files(result.snapshot, repo_folders["main"], HF_FILES)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_verification_catches_a_corrupted_file(hf_hub: HubStandIn, repo_folders, tmp_path,
                                               name):
    hf_hub.corrupt_once(name)
    with pytest.raises(WeightsError) as err:
        pull(TINY, None, hf_patterns(), tmp_path / "c")
    kind = "sha256" if name.endswith(".safetensors") else "git blob sha1"
    assert f"{name} ({kind} differs" in str(err.value) and "run the pull again" in str(err.value)
    snap = tmp_path / "c" / "models--hpcserve-test--tiny-model" / "snapshots" / \
        hf_hub.repos[TINY].revisions["main"].commit
    assert not (snap / name).exists()
    before = len(hf_hub.log)
    result = pull(TINY, None, hf_patterns(), tmp_path / "c")
    hf_hub.log[:] = hf_hub.log[before:]
    assert downloads(hf_hub) == [name]
    assert same_files(result.snapshot, repo_folders["main"], HF_FILES)


def test_verification_catches_a_file_changed_in_the_cache(hf_hub: HubStandIn, tmp_path):
    first = pull(TINY, None, hf_patterns(), tmp_path / "c")
    blob = (first.snapshot / "tokenizer.json").resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b"!")
    with pytest.raises(WeightsError, match=r"tokenizer\.json"):
        pull(TINY, None, hf_patterns(), tmp_path / "c")
    assert not blob.exists()


def test_a_revision_and_a_gguf_file(hf_hub: HubStandIn, repo_folders, tmp_path):
    v1 = pull(TINY, "v1", ["config.json"], tmp_path / "c")
    assert v1.commit == hf_hub.repos[TINY].revisions["v1"].commit
    assert (v1.snapshot / "config.json").read_bytes() == \
        (repo_folders["v1"] / "config.json").read_bytes()
    assert (v1.snapshot.parent.parent / "refs" / "v1").read_text() == v1.commit
    ref = HubRef(GGUF, "tiny-Q8_0.gguf")
    gguf = pull(GGUF, None, functools.partial(allow_patterns, ref, "llama-cpp"), tmp_path / "c")
    assert files_in(gguf.snapshot) == ["tiny-Q8_0.gguf"]
    assert ref.local_path(gguf.snapshot).read_bytes() == \
        (repo_folders["gguf"] / "tiny-Q8_0.gguf").read_bytes()


def test_gated_repo_without_a_token_names_the_variable(hf_hub: HubStandIn, tmp_path):
    with pytest.raises(BadInput) as err:
        pull(GATED, None, hf_patterns(GATED), tmp_path / "c", token_env="MY_HF_TOKEN")
    assert "gated" in str(err.value) and "MY_HF_TOKEN" in str(err.value)
    assert not hf_hub.requests(path_contains="/resolve/")  # refused before any download


@pytest.mark.parametrize(("token", "words"), [
    (OTHER_TOKEN, "has no access to the gated model"),
    ("hf_this_token_is_unknown_to_the_hub", "refused the token in HF_TOKEN")])
def test_a_token_without_access_is_a_clear_error(hf_hub: HubStandIn, tmp_path, token, words):
    with pytest.raises(BadInput) as err:
        pull(GATED, None, hf_patterns(GATED), tmp_path / "c", token)
    assert words in str(err.value)
    assert token not in str(err.value) and token not in repr(err.value)


def test_gated_repo_with_the_token(hf_hub: HubStandIn, repo_folders, tmp_path):
    result = pull(GATED, None, hf_patterns(GATED), tmp_path / "c", TOKEN)
    assert same_files(result.snapshot, repo_folders["gated"], HF_FILES)
    assert all(r.auth for r in hf_hub.requests(server="hub", path_contains="/resolve/"))
    assert not any(r.auth for r in hf_hub.requests(server="cdn"))


def test_unknown_repo_and_revision(hf_hub: HubStandIn, tmp_path):
    with pytest.raises(NotFound, match="no model 'nobody/nothing'"):
        pull("nobody/nothing", None, None, tmp_path / "c")
    with pytest.raises(NotFound, match="no revision 'v9'"):
        pull(TINY, "v9", None, tmp_path / "c")


def test_patterns_matching_nothing(hf_hub: HubStandIn, tmp_path):
    with pytest.raises(BadInput, match="matches"):
        pull(TINY, None, ["*.onnx"], tmp_path / "c")


def test_an_unreachable_hub(hf_hub: HubStandIn, tmp_path, monkeypatch):
    hf_hub.stop()
    with pytest.raises(HpcserveError) as err:
        pull(TINY, None, None, tmp_path / "c", TOKEN)
    assert "cannot reach the Hugging Face Hub at " + hf_hub.url in str(err.value)
    assert TOKEN not in str(err.value)


def test_sizes_in_the_progress_are_the_lfs_sizes(hf_hub: HubStandIn, tmp_path):
    seen: list[PullProgress] = []
    pull(TINY, None, ["model.safetensors"], tmp_path / "c", progress=seen.append)
    assert seen[-1].bytes_total == BIG
