"""Where a checkpoint's version comes from, and whether its history can still be trusted.

In order: ``--from VERSION`` (``--from auto`` infers it from the schemas), the stamp, the
project's ``version-key`` setting (a dotted key where old checkpoints recorded their version,
e.g. ``hyper_parameters.version``), then what the caller says unstamped checkpoints are (the
Lightning mixin's ``ckpt_path_unstamped``: a version or ``auto``). A version older than the
project's ``oldest`` setting is refused with the release that still reads it. History entries
whose converter digest differs from the current file's are reported: a converter was edited
after it ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from packaging.version import Version

from ckpt_path.checkpoint import Checkpoint
from ckpt_path.errors import (
    NoStampError,
    UnsupportedVersionError,
    VersionError,
    VersionInferenceError,
)
from ckpt_path.registry import Registry
from ckpt_path.shapes import signature
from ckpt_path.stamp import Stamp
from ckpt_path.versions import parse_version

__all__ = ["AUTO", "SourceVersion", "digest_mismatches", "infer_version", "source_version", "version_at_key"]

AUTO = "auto"
"""``--from auto``: infer the version from the schemas."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceVersion:
    """A checkpoint's version and where it came from.

    ``version_from`` is ``--from``, ``stamp``, ``schemas``, the ``version-key`` setting's key,
    or ``unstamped`` (the caller's rule for checkpoints without a stamp).
    """

    version: Version
    version_from: str


def infer_version(checkpoint: Checkpoint, registry: Registry) -> Version:
    """Return the one version whose schema the state dict matches (named dimensions allowed)."""
    sig = signature(checkpoint.state_dict)
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
    raise VersionInferenceError(checkpoint.name, [str(v) for v in matches], closeness)


def version_at_key(obj: Any, key: str) -> str | None:
    """Return the version recorded at a dotted ``key`` of a checkpoint, or None if absent."""
    node = obj
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if node is None:
        return None
    return str(node)


def _given(text: str, checkpoint: Checkpoint, registry: Registry, version_from: str) -> SourceVersion:
    if text == AUTO:
        return SourceVersion(version=infer_version(checkpoint, registry), version_from="schemas")
    return SourceVersion(version=parse_version(text), version_from=version_from)


def source_version(
    checkpoint: Checkpoint,
    registry: Registry,
    source: str | None = None,
    *,
    unstamped: str | None = None,
) -> SourceVersion:
    """Return the checkpoint's version and where it came from.

    ``source`` (``--from``) wins over everything; ``unstamped`` is used only when the
    checkpoint has neither a stamp nor a version at the project's ``version-key``. The version
    need not be a node of the graph: the planner reads it as the highest node at or below it.
    """
    key = registry.settings.version_key
    if source is None and checkpoint.damaged_stamp is not None:
        raise checkpoint.damaged_stamp
    if source is not None:
        found = _given(source, checkpoint, registry, "--from")
    elif checkpoint.stamp is not None:
        found = SourceVersion(version=parse_version(checkpoint.stamp.version), version_from="stamp")
    elif key and (recorded := version_at_key(checkpoint.obj, key)) is not None:
        try:
            found = SourceVersion(version=parse_version(recorded[:200]), version_from=key)
        except VersionError as exc:
            raise VersionError(recorded[:80], f"{checkpoint.name}: {key} holds it, and it is not a version") from exc
    elif unstamped is not None:
        found = _given(unstamped, checkpoint, registry, "unstamped")
    else:
        raise NoStampError(checkpoint.name)
    oldest = registry.settings.oldest
    if oldest is not None and found.version < oldest:
        raise UnsupportedVersionError(str(found.version), str(oldest), registry.settings.last_release)
    return found


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
