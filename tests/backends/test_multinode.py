"""How each engine runs one replica over several nodes is data the backend declares
(`ServeSpec.multinode`), so targets act on it without knowing engines: pin each declaration,
the resolve-time refusal for engines that cannot span nodes, and that the data survives the
session store's JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcserve_jupyter.backends import backend_names, get_backend
from hpcserve_jupyter.errors import BadInput
from hpcserve_jupyter.recipes import Catalog
from hpcserve_jupyter.resolve import resolve
from hpcserve_jupyter.spec import MultiNode, ServeSpec

# Spelled out, not imported: renaming a placeholder must fail here too.
NNODES, RANK = "{HPCSERVE_NNODES}", "{HPCSERVE_NODE_RANK}"
HEAD, DIST = "{HPCSERVE_HEAD_ADDR}", "{HPCSERVE_DIST_PORT}"
# One replica over two nodes of four GPUs; the same two nodes with a replica per node.
SPANNING = {"nodes": "2", "gpu_per_replica": "8"}
PER_NODE = {"nodes": "2", "gpu_per_replica": "4"}


def spec_for(tmp_path: Path, backend: str, overrides: dict[str, Any]) -> ServeSpec:
    recipe = {"name": "big", "category": "inference", "model": "org/big-model",
              "backends": [backend], "resources": {"gpus": 4}}
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return resolve("big", backend, overrides, catalog=Catalog([tmp_path]))


def test_each_engine_declares_how_it_spans_nodes():
    modes = {name: get_backend(name).multinode.mode for name in backend_names()}
    assert modes == {"vllm": "ray", "sglang": "per-node", "trtllm": "mpi", "tgi": "none",
                     "transformers": "none", "llama-cpp": "none", "llama-server": "none",
                     "chroma": "none", "qdrant": "none", "task": "none"}
    # SGLang's own flags (docs.sglang.io, multi-node deployment), each node told its rank
    assert get_backend("sglang").multinode.node_args == (
        "--nnodes", NNODES, "--node-rank", RANK, "--dist-init-addr", f"{HEAD}:{DIST}")
    assert get_backend("trtllm").multinode.launcher == ("trtllm-llmapi-launch",)


@pytest.mark.parametrize("backend", ["vllm", "sglang", "trtllm"])
def test_a_replica_spanning_nodes_carries_its_engines_declaration(tmp_path, backend):
    spec = spec_for(tmp_path, backend, SPANNING)
    assert spec.multinode == get_backend(backend).multinode
    # a replica inside one node needs no multi-node launch, even in a multi-node job
    assert spec_for(tmp_path, backend, PER_NODE).multinode is None
    assert spec_for(tmp_path, backend, {}).multinode is None


@pytest.mark.parametrize("backend", ["tgi", "transformers", "llama-cpp"])
def test_engines_that_cannot_span_nodes_are_refused_at_resolve(tmp_path, backend):
    with pytest.raises(BadInput, match=rf"backend '{backend}' cannot run one replica over "
                       r"several nodes; this launch gives a replica 8 GPUs over 2 nodes "
                       r"\(4 per node\)") as caught:
        spec_for(tmp_path, backend, SPANNING)
    assert "gpu_per_replica <= 4" in caught.value.hint
    assert spec_for(tmp_path, backend, PER_NODE).multinode is None  # each replica on a node


def test_the_declaration_survives_the_session_stores_json(tmp_path):
    spec = spec_for(tmp_path, "sglang", SPANNING)
    again = ServeSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and isinstance(again.multinode, MultiNode)
    # specs stored before the field existed load as single-node ones
    old = {k: v for k, v in spec_for(tmp_path, "vllm", {}).to_dict().items()
           if k != "multinode"}
    assert ServeSpec.from_dict(old).multinode is None


def test_a_declaration_is_checked_when_made():
    with pytest.raises(ValueError, match="multi-node mode 'slurm' is none of"):
        MultiNode("slurm")
    with pytest.raises(ValueError, match="one printable line"):
        MultiNode("ray", note="x\nrm -rf ~")  # it becomes a comment line of a job script
