"""Fixtures: converter folders written in ``tmp_path`` and version graphs built in memory."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import pytest

from ckpt_path import Converter, Registry
from ckpt_path.registry import ENV_VAR

ROOT = Path(__file__).resolve().parents[1]
"""The repository; only read from, never written to."""

EXAMPLE_CONVERTERS = ROOT / "converters"

Edge: TypeAlias = "tuple[str, str] | tuple[str, str, Mapping[str, Any]]"
"""``(source, target)`` or ``(source, target, options)``; options go to ``Converter.from_function``."""

IDENTITY = "def convert(ckpt):\n    return ckpt\n"


def edge_name(source: str, target: str) -> str:
    """Name the in-memory converter of an edge after its versions."""
    return f"{source}->{target}"


def build_registry(edges: Iterable[Edge]) -> Registry:
    """Build a registry of identity converters, one per edge, in the order given."""
    registry = Registry()
    for edge in edges:
        source, target = edge[0], edge[1]
        options: Mapping[str, Any] = edge[2] if len(edge) > 2 else {}

        def convert(ckpt: object) -> object:
            return ckpt

        registry.add(
            Converter.from_function(source, target, convert, name=edge_name(source, target), **options),
        )
    return registry


def render_converter(
    source: str,
    target: str,
    *,
    doc: str | None = None,
    code: str = IDENTITY,
    **literals: object,
) -> str:
    """Return the text of a converter file with the given literals and code."""
    lines = [f'"""{doc}"""', ""] if doc is not None else []
    lines += [f"source = {source!r}", f"target = {target!r}"]
    lines += [f"{name} = {value!r}" for name, value in literals.items()]
    return "\n".join(lines) + "\n\n\n" + code


def write_converter_file(
    directory: Path,
    name: str,
    source: str,
    target: str,
    **extra: Any,
) -> Path:
    """Write ``<directory>/<name>.py`` (see :func:`render_converter`) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(render_converter(source, target, **extra), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _no_converters_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a ``CKPT_PATH_CONVERTERS`` of the shell running the tests out of every test."""
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture(scope="session")
def write_converter() -> Callable[..., Path]:
    """Write one converter file: ``write_converter(dir, name, source, target, **extra)``."""
    return write_converter_file


@pytest.fixture(scope="session")
def make_registry() -> Callable[[Sequence[Edge]], Registry]:
    """Build an in-memory registry from edges: ``make_registry([("1.0", "1.1", {"cost": 2})])``."""
    return build_registry


@pytest.fixture
def converters_dir(tmp_path: Path) -> Path:
    """Make an empty converters directory under ``tmp_path``."""
    directory = tmp_path / "converters"
    directory.mkdir()
    return directory


@pytest.fixture
def example_dir(converters_dir: Path, write_converter: Callable[..., Path]) -> Path:
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
