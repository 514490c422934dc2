from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.version import Version

from ckpt_path import UnknownVersionError, VersionError, branch_of, parse_version, resolve_target
from ckpt_path.versions import LATEST, floor_version, nearest_versions


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


def test_version_rows_mark_latest_and_branch_heads():
    """Rows run newest first; latest is the highest main-line version, LABEL@latest each branch's highest."""
    from ckpt_path.versions import latest, version_rows

    known = [Version(v) for v in ("1.0.0", "1.1.0", "1.0.0+lam", "1.0.0+lam.2", "2.0.0rc1")]
    rows = version_rows(known)
    assert [(str(r.version), r.notes) for r in rows] == [
        ("2.0.0rc1", ("latest",)),
        ("1.1.0", ()),
        ("1.0.0+lam.2", ("branch lam", "lam@latest")),
        ("1.0.0+lam", ("branch lam",)),
        ("1.0.0", ()),
    ]
    assert latest(known) == Version("2.0.0rc1")
    assert latest([Version("1.0.0+lam")]) is None


def test_nearest_versions_ignores_duplicates():
    """A version listed twice is suggested once."""
    assert nearest_versions(Version("1.0.1"), versions("1.0.0", "1.0", "1.1.0"), 3) == ["1.0.0", "1.1.0"]


FLOORS = versions("1.0.0", "1.5.0", "1.6.0", "1.0.0+lam", "1.0.2+lam", "1.0.2+lam.3", "2.0.0+lam")
"""A main line and a ``lam`` branch whose versions interleave with it."""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.5.0", "1.5.0"),
        ("1.5.4", "1.5.0"),
        ("9.0", "1.6.0"),
        ("1.5.0.post1", "1.5.0"),
        ("1.6.0rc1", "1.5.0"),
        ("1.6.0.dev3", "1.5.0"),
        ("1.0.3+lam", "1.0.2+lam.3"),
        ("1.0.2+lam.2", "1.0.2+lam"),
        ("1.9+lam", "1.0.2+lam.3"),
        ("3.0+lam.1", "2.0.0+lam"),
        ("0.9", None),
        ("0.9+lam", None),
        ("1.5.0+exp", None),
    ],
)
def test_floor_version(text, expected):
    """A version reads as the highest known version at or below it on its branch, or None."""
    found = floor_version(Version(text), FLOORS)
    assert found == (None if expected is None else Version(expected))


def test_floor_version_of_empty_graph():
    """With no known versions nothing is at or below anything."""
    assert floor_version(Version("1.0"), []) is None


RELEASES = st.builds(
    lambda release, pre, post, label: Version(
        ".".join(map(str, release))
        + (f"rc{pre}" if pre is not None else "")
        + (f".post{post}" if post is not None else "")
        + (f"+{label}" if label else ""),
    ),
    st.lists(st.integers(0, 3), min_size=1, max_size=3),
    st.none() | st.integers(0, 2),
    st.none() | st.integers(0, 2),
    st.sampled_from(["", "", "lam", "lam.2", "exp"]),
)
"""Versions with few distinct parts, so drawn versions often share a branch and neighbours."""


@given(st.lists(RELEASES, max_size=12), RELEASES)
def test_floor_version_is_the_highest_at_or_below_on_the_branch(known, version):
    """The version read is at or below, on the same branch, with no known branch version strictly between."""
    found = floor_version(version, known)
    on_branch = [v for v in known if branch_of(v) == branch_of(version)]
    if found is None:
        assert all(v > version for v in on_branch)
        return
    assert found in known
    assert found <= version
    assert branch_of(found) == branch_of(version)
    assert not any(found < v <= version for v in on_branch)
