from __future__ import annotations

import pytest
from packaging.version import Version

from ckpt_path import UnknownVersionError, VersionError, branch_of, parse_version, resolve_target
from ckpt_path.versions import LATEST, nearest_versions


def versions(*texts: str) -> list[Version]:
    """Parse each text as a version."""
    return [Version(t) for t in texts]


GRAPH = versions("0.1.0", "1.0.0", "1.1.0", "1.3.0+lam", "1.3.0+lam.2", "1.2.0+lam.7", "2.0.0+exp", "1.2.0")
"""Versions of a graph with two branches; ``2.0.0+exp`` is higher than every main-line version."""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.0.0", "1.0.0"),
        ("1.3.0+lam", "1.3.0+lam"),
        ("1.3.0+lam.2", "1.3.0+lam.2"),
        (" 1.2 ", "1.2"),
        ("v1.0", "1.0"),
        ("1.0.0rc1", "1.0.0rc1"),
        ("1.0.0.post2", "1.0.0.post2"),
        ("1.0+LAM-2", "1.0+lam.2"),
    ],
)
def test_parse_version_accepts_pep440(text, expected):
    """PEP 440 strings parse to the normalised version."""
    assert parse_version(text) == Version(expected)
    assert str(parse_version(text)) == expected


def test_parse_version_passes_version_objects_through():
    """A Version object is returned as it is."""
    version = Version("1.2.3")
    assert parse_version(version) is version


@pytest.mark.parametrize(
    "text",
    ["", "   ", "latest", "not a version", "1.0.0+", "1.0.0+lam@latest", "1..0", "one.two"],
)
def test_parse_version_rejects_other_strings(text):
    """A string PEP 440 does not accept raises VersionError naming it, with an example."""
    with pytest.raises(VersionError) as info:
        parse_version(text)
    assert info.value.text == text
    assert str(info.value) == f"invalid version {text!r}: not a PEP 440 version (e.g. 1.2.0, 1.3.0+lam)"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("text", "branch"),
    [
        ("1.3.0", None),
        ("1.3.0rc1", None),
        ("1.3.0+lam", "lam"),
        ("1.3.0+lam.2", "lam"),
        ("1.3.0+lam.2.fix", "lam"),
        ("1.3.0+LAM_3", "lam"),
        ("1.3.0+7", "7"),
    ],
)
def test_branch_of(text, branch):
    """The branch is the first segment of the local label; no label means the main line."""
    assert branch_of(Version(text)) == branch


@pytest.mark.parametrize(
    ("text", "known", "expected"),
    [
        ("latest", GRAPH, "1.2.0"),
        (" latest ", GRAPH, "1.2.0"),
        ("lam@latest", GRAPH, "1.3.0+lam.2"),
        ("lam@latest", versions("1.3.0+lam", "1.3.0+lam.2"), "1.3.0+lam.2"),
        ("lam@latest", versions("1.3.0+lam.2", "1.3.0+lam.10"), "1.3.0+lam.10"),
        ("lam@latest", versions("1.3.0+lam.2", "1.4.0+lam"), "1.4.0+lam"),
        ("exp@latest", GRAPH, "2.0.0+exp"),
        ("LAM@latest", GRAPH, "1.3.0+lam.2"),
        ("latest", versions("1.0.0", "2.0.0rc1"), "2.0.0rc1"),
        ("1.1.0", GRAPH, "1.1.0"),
        ("9.9.9", GRAPH, "9.9.9"),
        ("1.3.0+lam", [], "1.3.0+lam"),
    ],
)
def test_resolve_target(text, known, expected):
    """`latest` skips branch versions, `LABEL@latest` is the branch's highest, versions pass through."""
    assert resolve_target(text, known) == Version(expected)


def test_resolve_target_accepts_a_generator():
    """The known versions may be any iterable, read once."""
    assert resolve_target("lam@latest", iter(GRAPH)) == Version("1.3.0+lam.2")


@pytest.mark.parametrize(
    ("text", "known", "message"),
    [
        (
            "dev@latest",
            GRAPH,
            "invalid version 'dev@latest': no branch 'dev' in the graph (branches: exp, lam)",
        ),
        (
            "lam@latest",
            versions("1.0.0", "1.1.0"),
            "invalid version 'lam@latest': no branch 'lam' in the graph (branches: none)",
        ),
        ("@latest", GRAPH, "invalid version '@latest': LABEL@latest needs a branch label before '@'"),
        ("Latest", GRAPH, "invalid version 'Latest': not a PEP 440 version (e.g. 1.2.0, 1.3.0+lam)"),
    ],
)
def test_resolve_target_errors(text, known, message):
    """A target naming no branch, or with an empty label, raises VersionError saying what exists."""
    with pytest.raises(VersionError) as info:
        resolve_target(text, known)
    assert str(info.value) == message


def test_latest_without_main_line_versions():
    """`latest` on a graph of branch versions only is an unknown version listing the highest ones."""
    with pytest.raises(UnknownVersionError) as info:
        resolve_target(LATEST, versions("1.0.0+a", "1.1.0+a", "1.2.0+b", "1.3.0+a"))
    assert info.value.version == "latest"
    assert info.value.nearest == ("1.1.0+a", "1.2.0+b", "1.3.0+a")


POOL = versions("0.1.0", "0.2.0", "0.3.0", "1.0.0", "1.0.0+lam", "1.0.0+lam.2", "1.1.0", "1.2.0")


@pytest.mark.parametrize(
    ("text", "count", "expected"),
    [
        ("1.0.1", 2, ["1.0.0", "1.1.0"]),
        ("1.0.1", 4, ["0.3.0", "1.0.0", "1.1.0", "1.2.0"]),
        ("0.2.5", 2, ["0.2.0", "0.3.0"]),
        ("0.0.1", 2, ["0.1.0", "0.2.0"]),
        ("9.9", 2, ["1.1.0", "1.2.0"]),
        ("1.0.0+lam.1", 2, ["1.0.0+lam", "1.0.0+lam.2"]),
        ("1.0.0+lam.1", 4, ["1.0.0", "1.0.0+lam", "1.0.0+lam.2", "1.1.0"]),
        ("1.0.0+exp", 2, ["1.0.0", "1.0.0+lam"]),
        ("1.0.1", 20, [str(v) for v in sorted(POOL)]),
    ],
)
def test_nearest_versions(text, count, expected):
    """The nearest known versions, same branch first, at most `count`, listed in version order."""
    assert nearest_versions(Version(text), POOL, count) == expected


def test_nearest_versions_of_empty_graph():
    """A graph without versions suggests nothing."""
    assert nearest_versions(Version("1.0"), []) == []


def test_nearest_versions_ignores_duplicates():
    """A version listed twice is suggested once."""
    assert nearest_versions(Version("1.0.1"), versions("1.0.0", "1.0", "1.1.0"), 3) == ["1.0.0", "1.1.0"]
