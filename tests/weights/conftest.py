"""The Hub stand-in's fixtures (tests/hf_standin), for the weights tests."""

from hf_standin.conftest import hf_hub, repo_folders

__all__ = ["hf_hub", "repo_folders"]
