"""Where a checkpoint's version comes from, and whether its history can still be trusted.

In order: ``--from VERSION`` (``--from auto`` infers it from the schemas), the stamp, the
project's ``version-key`` setting (a dotted key where old checkpoints recorded their version,
e.g. ``hyper_parameters.version``). A version older than the project's ``oldest`` setting is
refused with the release that still reads it. History entries whose converter digest differs
from the current file's are reported: a converter was edited after it ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from packaging.version import Version

from ckpt_path.checkpoint import Loaded, Stamp, read_stamp
from ckpt_path.errors import (
    CheckpointError,
    NoStampError,
    UnsupportedVersionError,
    VersionError,
    VersionInferenceError,
)
from ckpt_path.registry import Registry
from ckpt_path.shapes import signature
from ckpt_path.versions import parse_version

__all__ = ["AUTO", "digest_mismatches", "infer_version", "source_version", "version_at_key"]

AUTO = "auto"
"""``--from auto``: infer the version from the schemas."""


def infer_version(loaded: Loaded, registry: Registry) -> Version:
    """Return the one version whose schema the state dict matches (named dimensions allowed)."""
    sig = signature(loaded.state_dict)
    closeness: list[tuple[str, int]] = []
    matches: list[Version] = []
    for version in registry.versions:
        schema = registry.schema(version)
        if schema is None:
            continue
        problems = len(schema.check(sig))
        closeness.append((str(version), problems))
        if problems == 0:
            matches.append(version)
    if len(matches) == 1:
        return matches[0]
    closeness.sort(key=lambda item: (item[1], item[0]))
    raise VersionInferenceError(str(loaded.path), [str(v) for v in matches], closeness)


def version_at_key(obj: Any, key: str) -> str | None:  # noqa: ANN401 - any checkpoint
    """Return the version recorded at a dotted ``key`` of a checkpoint, or None if absent."""
    node = obj
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if node is None:
        return None
    return str(node)


def source_version(loaded: Loaded, source: str | None, registry: Registry) -> tuple[Version, str]:
    """Return the checkpoint's version and where it came from (``--from``, ``stamp``, ...)."""
    stamp = read_stamp(loaded.obj, loaded.state_dict_path)
    if source == AUTO:
        version, origin = infer_version(loaded, registry), "schemas"
    elif source is not None:
        version, origin = registry.planner.resolve(source), "--from"
    elif stamp is not None:
        version, origin = registry.planner.resolve(stamp.version), "stamp"
    elif (
        registry.settings.version_key
        and (recorded := version_at_key(loaded.obj, registry.settings.version_key)) is not None
    ):
        try:
            version = registry.planner.resolve(parse_version(recorded))
        except VersionError as exc:
            key = registry.settings.version_key
            raise CheckpointError(f"{loaded.path}: {key} holds {recorded!r}, not a version") from exc
        origin = registry.settings.version_key
    else:
        raise NoStampError(str(loaded.path))
    oldest = registry.settings.oldest
    if oldest is not None and version < oldest:
        raise UnsupportedVersionError(str(version), str(oldest), registry.settings.last_release)
    return version, origin


def digest_mismatches(stamp: Stamp | None, registry: Registry) -> list[str]:
    """Describe each history step whose converter has changed since it ran."""
    if stamp is None:
        return []
    current = {}
    for data in (d for _, _, d in registry.graph.edges(data=True)):
        converter = data["converter"]
        current[(converter.name, str(converter.source), str(converter.target))] = converter
    found = []
    for entry in stamp.history:
        key = (str(entry.get("converter")), str(entry.get("source")), str(entry.get("target")))
        converter = current.get(key)
        digest = entry.get("digest")
        if converter is not None and digest and converter.digest and digest != converter.digest:
            found.append(
                f"step {key[1]} -> {key[2]} ran {key[0]} with digest {digest}, but "
                f"{converter.origin} is now {converter.digest}: the converter was edited after it ran",
            )
    return found
