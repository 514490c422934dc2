"""Fixtures: converter folders written in ``tmp_path``; the functions they use are in ``helpers.py``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt_path.registry import ENV_VAR
from helpers import copy_examples, write_converter


@pytest.fixture(autouse=True)
def _no_converters_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a ``CKPT_PATH_CONVERTERS`` of the shell running the tests out of every test."""
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture
def payload_modules() -> Iterator[None]:
    """Forget the payload modules a test imported, so none leaks into the next test, which imports afresh."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("ckpt_payload_"):
            del sys.modules[name]


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """Copy the shipped example converters and their schemas to ``tmp_path / "converters"``."""
    return copy_examples(tmp_path / "converters")


@pytest.fixture
def converters_dir(tmp_path: Path) -> Path:
    """Make an empty converters directory under ``tmp_path``."""
    directory = tmp_path / "converters"
    directory.mkdir()
    return directory


@pytest.fixture
def example_dir(converters_dir: Path) -> Path:
    """Write a small converters directory: a main line, a downgrade, a lam branch and a lossy edge.

    ``1.0.0 -> 1.1.0 -> 1.2.0``, ``1.1.0 -> 1.0.0``, ``1.1.0 -> 1.1.0+lam -> 1.2.0`` and a
    lossy ``1.2.0 -> 1.1.0``.
    """
    write_converter(converters_dir, "a_upgrade", "1.0.0", "1.1.0", doc="Upgrade to 1.1.")
    write_converter(converters_dir, "b_upgrade", "1.1.0", "1.2.0", doc="Upgrade to 1.2.")
    write_converter(converters_dir, "c_downgrade", "1.1.0", "1.0.0", doc="Downgrade to 1.0.")
    write_converter(converters_dir, "d_branch", "1.1.0", "1.1.0+lam", doc="Branch off to lam.")
    write_converter(converters_dir, "e_merge", "1.1.0+lam", "1.2.0", doc="Merge lam back.", cost=3)
    write_converter(converters_dir, "f_drop", "1.2.0", "1.1.0", doc="Drop the new head.", lossy=True)
    return converters_dir
