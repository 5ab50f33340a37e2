"""Shared tiny fixtures for the unit tests (CPU, offline, deterministic)."""

from __future__ import annotations

import pytest

from dsd.tiny import make_tiny, write_release


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    """``python -m dsd make-tiny`` output: FluxPipeline folder, release, BFL base file."""
    return make_tiny(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("release"), seed=0)


@pytest.fixture(scope="session")
def tiny_release_sharded(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("release_sharded"), seed=0, shards=3)

