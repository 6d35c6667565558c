import pytest

from hpcserve_jupyter.errors import LaunchError
from hpcserve_jupyter.targets.gpus import GpuAllocator, discover


def test_discover_without_nvidia_smi_is_empty(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert discover() == []


def test_allocation_prefers_free_gpus_in_order():
    a = GpuAllocator(["0", "1", "2", "3"])
    assert a.allocate(2, busy=["0"]) == ["1", "2"]
    assert a.allocate(0, busy=[]) == []


def test_class_members_must_exist():
    with pytest.raises(LaunchError, match="does not have"):
        GpuAllocator(["0"], {"big": ["5"]})


def test_not_enough_free_gpus_says_which_are_busy():
    a = GpuAllocator(["0", "1"], {"small": ["0"]})
    with pytest.raises(LaunchError, match=r"only 0 of 1 are free.*busy: \['0'\]"):
        a.allocate(1, busy=["0"], gpu_class="small")
