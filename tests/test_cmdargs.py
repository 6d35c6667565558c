import argparse

import pytest

from hpcserve_jupyter.cmdargs import count_arg, launch_overrides, parse_sets, seconds_arg
from hpcserve_jupyter.errors import BadInput


def launch_args(*sets: str, backend=None, gpus=None, time=None) -> argparse.Namespace:
    return argparse.Namespace(set=list(sets), backend=backend, gpus=gpus, time=time)


def test_sets_shortcuts_and_backend():
    assert parse_sets([" cpus =4", "env.A=x=y"]) == {"cpus": "4", "env.A": "x=y"}
    backend, overrides = launch_overrides(
        launch_args("port=9000", "backend=vllm", gpus="2", time="1h"))
    assert backend == "vllm" and overrides == {"port": "9000", "gpus": "2", "time": "1h"}


@pytest.mark.parametrize(("args", "words"), [
    (launch_args("cpus"), "--set expects KEY=VALUE"),
    (launch_args("wait=1"), "unknown override 'wait'"),
    (launch_args("backend=vllm", backend="llama-cpp"), "disagree"),
])
def test_launch_words_that_are_no_override_are_refused(args, words):
    with pytest.raises(BadInput, match=words):
        launch_overrides(args)


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf"])
def test_seconds_must_be_finite_and_positive(text):
    with pytest.raises(argparse.ArgumentTypeError):
        seconds_arg(text)
    assert seconds_arg("2.5") == 2.5


def test_counts_are_non_negative_integers():
    assert count_arg("0") == 0
    with pytest.raises(argparse.ArgumentTypeError):
        count_arg("-3")
    with pytest.raises(ValueError):
        count_arg("1.5")
