"""Versions: PEP 440 strings, branch labels and symbolic targets.

A *local label* marks a branch: ``1.3.0+lam`` is the ``lam`` branch's 1.3.0 and
``1.3.0+lam.2`` a later point of that branch. The branch name is the first segment of the
local label. Versions are :class:`packaging.version.Version` objects everywhere inside the
package; strings appear only at the edges.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from ckpt_path.errors import UnknownVersionError, VersionError

__all__ = [
    "LATEST",
    "VersionRow",
    "branch_of",
    "floor_version",
    "latest",
    "nearest_versions",
    "parse_version",
    "resolve_target",
    "version_rows",
]

LATEST = "latest"
"""The highest version without a local label."""


def parse_version(text: str | Version) -> Version:
    """Parse ``text`` as a PEP 440 version, or raise :class:`VersionError`."""
    if isinstance(text, Version):
        return text
    try:
        return Version(text.strip())
    except InvalidVersion:
        raise VersionError(text) from None


def branch_of(version: Version) -> str | None:
    """Return the branch a version belongs to: the first segment of its local label."""
    if version.local is None:
        return None
    return version.local.split(".", 1)[0]


def floor_version(version: Version, versions: Iterable[Version]) -> Version | None:
    """Return the highest of ``versions`` at or below ``version`` on its branch, or None.

    The branch is :func:`branch_of`: a main-line version only ever reads as a main-line
    version, ``1.0.3+lam`` only as a ``lam`` version. This is how a release between two
    converters reads: ``1.5.4`` with versions ``1.5.0`` and ``1.6.0`` is ``1.5.0``, and so is
    ``1.6.0rc1`` (a pre-release sorts below its release).
    """
    branch = branch_of(version)
    return max((v for v in versions if v <= version and branch_of(v) == branch), default=None)


def latest(versions: Iterable[Version]) -> Version | None:
    """Return the highest version without a local label (what ``latest`` means), or None."""
    return max((v for v in versions if v.local is None), default=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionRow:
    """One line of ``ckpt-path versions``: a version, its branch, and what it is."""

    version: Version
    branch: str | None
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        """Return the row as ``versions --json`` prints it."""
        return {"version": str(self.version), "branch": self.branch, "notes": list(self.notes)}


def version_rows(versions: Iterable[Version]) -> list[VersionRow]:
    """Describe every version, newest first: its branch, and whether it is ``latest`` or ``LABEL@latest``."""
    known = sorted(set(versions), reverse=True)
    top = latest(known)
    heads: dict[str | None, Version] = {}
    for version in known:
        heads.setdefault(branch_of(version), version)
    rows = []
    for version in known:
        branch = branch_of(version)
        notes = [f"branch {branch}"] if branch else []
        if version == top:
            notes.append("latest")
        elif branch and heads[branch] == version:
            notes.append(f"{branch}@latest")
        rows.append(VersionRow(version=version, branch=branch, notes=tuple(notes)))
    return rows


def resolve_target(text: str, versions: Iterable[Version]) -> Version:
    """Turn a target as users write it into a version of the graph.

    ``latest`` is the highest version without a local label, ``LABEL@latest`` the highest
    version of branch ``LABEL``; anything else must parse as a version (it need not be in
    ``versions``: the planner reports unknown versions with their nearest neighbours).
    """
    known = list(versions)
    text = text.strip()
    if text == LATEST:
        found = latest(known)
        if found is None:
            raise UnknownVersionError(LATEST, [str(v) for v in sorted(known)[-3:]])
        return found
    if text.endswith("@" + LATEST):
        label = text[: -len("@" + LATEST)].lower()  # PEP 440 lowercases local labels
        if not label:
            raise VersionError(text, "LABEL@latest needs a branch label before '@'")
        on_branch = [v for v in known if branch_of(v) == label]
        if not on_branch:
            branches = sorted({b for v in known if (b := branch_of(v)) is not None})
            listed = ", ".join(branches) or "none"
            raise VersionError(text, f"no branch {label!r} in the graph (branches: {listed})")
        return max(on_branch)
    return parse_version(text)


def nearest_versions(version: Version, versions: Iterable[Version], count: int = 4) -> list[str]:
    """Return up to ``count`` known versions closest to ``version`` in version order.

    Versions of the same branch come first, so a typo in a patch number suggests its
    neighbours on the same line of development.
    """
    pool = sorted(set(versions))
    same_branch = [v for v in pool if branch_of(v) == branch_of(version)]
    chosen: list[Version] = []
    for candidates in (same_branch, pool):
        at = bisect.bisect_left(candidates, version)
        # Distance in positions from the gap where `version` would sit: 1 for both neighbours.
        ranked = sorted(
            range(len(candidates)),
            key=lambda i: (at - i if i < at else i - at + 1, i),
        )
        for i in ranked:
            if len(chosen) == count:
                break
            if candidates[i] not in chosen:
                chosen.append(candidates[i])
    return [str(v) for v in sorted(chosen)]
