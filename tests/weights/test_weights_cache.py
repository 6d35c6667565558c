"""What a cache holds (list_models) and freeing a repo (remove), on caches filled by real pulls
from the Hub stand-in; where the cache is for an environment."""

from __future__ import annotations

import pytest

from hf_standin.fixtures import GGUF, TINY
from hf_standin.server import HubStandIn
from hpcserve_jupyter.errors import NotFound
from hpcserve_jupyter.weights import hub_cache_dir, list_models, pull, remove

pytest.importorskip("huggingface_hub")


def test_list_models_shows_repos_revisions_sizes(hf_hub: HubStandIn, repo_folders, tmp_path):
    cache = tmp_path / "c"
    main = pull(TINY, None, ["*.json", "*.safetensors"], cache)
    v1 = pull(TINY, "v1", ["config.json"], cache)
    gguf = pull(GGUF, None, ["tiny-Q4_K_M.gguf"], cache)
    models = {(m.repo_id, m.revision): m for m in list_models(cache)}
    assert set(models) == {(TINY, main.commit), (TINY, v1.commit), (GGUF, gguf.commit)}
    m = models[(TINY, main.commit)]
    assert m.refs == ("main",) and m.files == len(main.files) and m.size == main.size
    assert m.snapshot == str(main.snapshot)
    assert models[(TINY, v1.commit)].refs == ("v1",)
    assert models[(GGUF, gguf.commit)].size == \
        (repo_folders["gguf"] / "tiny-Q4_K_M.gguf").stat().st_size
    assert all(x.last_used > 0 for x in models.values())
    assert m.public()["refs"] == ["main"]


def test_remove_frees_every_revision_of_a_repo(hf_hub: HubStandIn, tmp_path):
    cache = tmp_path / "c"
    main = pull(TINY, None, ["*.json"], cache)
    pull(TINY, "v1", ["*.json"], cache)
    pull(GGUF, None, ["tiny-Q8_0.gguf"], cache)
    freed = remove(TINY, cache)
    assert freed >= main.size
    assert [m.repo_id for m in list_models(cache)] == [GGUF]
    assert not (cache / "models--hpcserve-test--tiny-model").exists()
    with pytest.raises(NotFound) as err:
        remove("hpcserve-test/tiny-modl", cache)
    assert "did you mean 'hpcserve-test/tiny-gguf'" in str(err.value)


def test_an_empty_or_missing_cache(tmp_path):
    assert list_models(tmp_path / "none") == []
    with pytest.raises(NotFound):
        remove("o/r", tmp_path / "none")


@pytest.mark.parametrize(("env", "expected"), [
    ({"HF_HUB_CACHE": "/a", "HF_HOME": "/b"}, "/a"),
    ({"HUGGINGFACE_HUB_CACHE": "/legacy", "HF_HOME": "/b"}, "/legacy"),
    ({"HF_HOME": "/b", "XDG_CACHE_HOME": "/x"}, "/b/hub"),
    ({"XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/x/huggingface/hub"),
    ({"HOME": "/h"}, "/h/.cache/huggingface/hub"),
])
def test_hub_cache_dir_follows_huggingface_hub(env, expected):
    assert str(hub_cache_dir(env)) == expected
