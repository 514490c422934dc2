"""The registry: the converters a project has, from a directory or added in code."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
from packaging.version import Version

from ckpt_path.converter_files import read_converters
from ckpt_path.converters import Converter, ConvertFn, WhenFn
from ckpt_path.errors import SettingsError, VersionError
from ckpt_path.graph import build_graph
from ckpt_path.pickles import Moves
from ckpt_path.planner import Plan, Planner
from ckpt_path.shapes import Schema, load_schema
from ckpt_path.versions import parse_version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["ENV_VAR", "Registry", "Settings", "find_converters_dir", "project_settings", "read_settings"]

ENV_VAR = "CKPT_PATH_CONVERTERS"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """A project's ``[tool.ckpt-path]`` table in ``./pyproject.toml``.

    ``version_key``: a dotted key (``hyper_parameters.version``) where checkpoints saved
    before ckpt-path already recorded their version. ``oldest``: the oldest version still
    converted; ``last_release``: what reads checkpoints older than that (for the message).
    """

    converters: Path | None = None
    version_key: str | None = None
    oldest: Version | None = None
    last_release: str | None = None


def read_settings(cwd: Path | None = None) -> Settings:
    """Read ``[tool.ckpt-path]`` from ``pyproject.toml`` in ``cwd`` (default: the working directory)."""
    here = cwd or Path.cwd()
    pyproject = here / "pyproject.toml"
    if not pyproject.is_file():
        return Settings()
    try:
        config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(str(pyproject), None, f"not valid TOML: {exc}") from None
    table = config.get("tool", {}).get("ckpt-path", {})
    kinds = {"converters": "a path string", "version-key": "a dotted key string", "oldest": "a version string"}
    for key, what in {**kinds, "last-release": "a string"}.items():
        if key in table and not isinstance(table[key], str):
            raise SettingsError(str(pyproject), key, f"must be {what}")
    oldest = table.get("oldest")
    try:
        oldest_version = parse_version(oldest) if oldest is not None else None
    except VersionError as exc:
        raise SettingsError(str(pyproject), "oldest", str(exc)) from None
    return Settings(
        converters=here / table["converters"] if "converters" in table else None,
        version_key=table.get("version-key"),
        oldest=oldest_version,
        last_release=table.get("last-release"),
    )


def project_settings(directory: Path) -> Settings:
    """Read the settings of the project that owns ``directory``: its nearest ``pyproject.toml`` above."""
    start = directory.resolve()
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file():
            return read_settings(folder)
    return Settings()


def find_converters_dir(explicit: str | Path | None = None, cwd: Path | None = None) -> Path:
    """Find the converters directory the way every command does.

    In order: ``explicit`` (``--converters``), the environment variable
    ``CKPT_PATH_CONVERTERS``, ``[tool.ckpt-path] converters`` in ``./pyproject.toml``
    (relative to that file), then ``./converters``.
    """
    here = cwd or Path.cwd()
    if explicit is not None:
        return Path(explicit)
    if env := os.environ.get(ENV_VAR):
        return Path(env)
    return read_settings(here).converters or here / "converters"


def _version_or_none(text: str) -> Version | None:
    try:
        return parse_version(text)
    except VersionError:
        return None  # a file not named after a version is not a schema of ours


class Registry:
    """The converters of a project, and the version graph and planner they make.

    Build one from a directory with :meth:`from_directory`, or empty and :meth:`add` to it
    (libraries, tests). The graph and planner are built on first use and rebuilt after a
    change.
    """

    def __init__(
        self,
        converters: Iterable[Converter] = (),
        *,
        directory: Path | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.directory = directory
        self.settings = settings or Settings()
        self._converters: list[Converter] = list(converters)
        self._planner: Planner | None = None
        self._schemas: dict[Version, Schema | Path] | None = None

    @classmethod
    def from_directory(cls, directory: str | Path | None = None) -> Registry:
        """Read the converters of a directory (found as :func:`find_converters_dir` says).

        The ``[tool.ckpt-path]`` settings come from the project that owns the converters: the
        nearest ``pyproject.toml`` at or above the directory, wherever the process runs.
        """
        root = find_converters_dir(directory)
        return cls(read_converters(root), directory=root, settings=project_settings(root))

    @property
    def dict_globals(self) -> Moves:
        """Every dict subclass a converter declares ``read_as_dict``: safe to apply on every load."""
        names = [name for c in self._converters if c.moves for name in c.moves.as_dict]
        return Moves(modules={}, globals={}, as_dict=tuple(dict.fromkeys(names)), declared_by="read_as_dict")

    @property
    def converters(self) -> tuple[Converter, ...]:
        """Every converter, in the order it was added."""
        return tuple(self._converters)

    def add(  # noqa: PLR0913 - mirrors the module-level names of a converter file
        self,
        source: str | Version | Converter,
        target: str | Version | None = None,
        convert: ConvertFn | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        touches: Iterable[str] | None = None,
        lossy: bool = False,
        cost: float = 1.0,
        when: WhenFn | None = None,
    ) -> Converter:
        """Add a converter (a :class:`Converter`, or the parts of one) and return it."""
        if isinstance(source, Converter):
            converter = source
        else:
            if target is None or convert is None:
                msg = "add(source, target, convert) needs all three"
                raise TypeError(msg)
            converter = Converter.from_function(
                source,
                target,
                convert,
                name=name,
                description=description,
                touches=touches,
                lossy=lossy,
                cost=cost,
                when=when,
            )
        self._converters.append(converter)
        self._planner = None
        return converter

    def converter(
        self,
        source: str,
        target: str,
        **options: Any,
    ) -> Callable[[ConvertFn], ConvertFn]:
        """Register the decorated function as a converter: ``@registry.converter("1.0", "1.1")``."""

        def register(fn: ConvertFn) -> ConvertFn:
            self.add(source, target, fn, **options)
            return fn

        return register

    @property
    def planner(self) -> Planner:
        """The planner over this registry's graph."""
        if self._planner is None:
            self._planner = Planner(build_graph(self._converters))
        return self._planner

    @property
    def graph(self) -> nx.DiGraph:
        """The version graph."""
        return self.planner.graph

    @property
    def versions(self) -> list[Version]:
        """Every version, oldest first."""
        return self.planner.versions

    def plan(
        self,
        source: str | Version,
        target: str | Version = "latest",
        *,
        allow_lossy: bool = False,
    ) -> Plan:
        """Shortcut for ``registry.planner.plan(...)``."""
        return self.planner.plan(source, target, allow_lossy=allow_lossy)

    @property
    def schemas_dir(self) -> Path | None:
        """Where this registry's schemas live: ``<converters>/schemas``."""
        return self.directory / "schemas" if self.directory is not None else None

    def _schema_index(self) -> dict[Version, Schema | Path]:
        if self._schemas is None:
            self._schemas = {}
            folder = self.schemas_dir
            if folder is not None and folder.is_dir():
                for path in sorted(folder.glob("*.json")):
                    if (version := _version_or_none(path.stem)) is not None:
                        self._schemas[version] = path
        return self._schemas

    def schema(self, version: str | Version) -> Schema | None:
        """Return the schema of ``version``, or None when it has none."""
        index = self._schema_index()
        found = index.get(parse_version(version))
        if isinstance(found, Path):
            found = index[parse_version(version)] = load_schema(found)
        return found

    def add_schema(self, schema: Schema) -> None:
        """Add a schema made in code (it wins over a file for the same version)."""
        self._schema_index()[parse_version(schema.version)] = schema
