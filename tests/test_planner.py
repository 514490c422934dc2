from __future__ import annotations

import dataclasses
import itertools
import json

import networkx as nx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from packaging.version import Version

from ckpt_path import LossyPathError, NoPathError, Plan, Planner, Step, UnknownVersionError, build_graph
from ckpt_path.converters import FunctionCode
from helpers import EXAMPLE_CONVERTERS, build_registry, edge_name

LOSSY = {"lossy": True}

# (edges, source, target, allow_lossy, the versions the plan visits)
CASES = {
    "cheaper skip edge beats the chain": (
        [("1.0", "1.1"), ("1.1", "1.2"), ("1.0", "1.2", {"cost": 1.5})],
        "1.0",
        "1.2",
        False,
        ["1.0", "1.2"],
    ),
    "costlier skip edge loses": (
        [("1.0", "1.1"), ("1.1", "1.2"), ("1.0", "1.2", {"cost": 3})],
        "1.0",
        "1.2",
        False,
        ["1.0", "1.1", "1.2"],
    ),
    "equal cost: fewer steps win": (
        [("1.0", "1.1"), ("1.1", "1.2"), ("1.0", "1.2", {"cost": 2})],
        "1.0",
        "1.2",
        False,
        ["1.0", "1.2"],
    ),
    "0.1 + 0.2 ties 0.3 exactly, then fewer steps win": (
        [("1.0", "1.1", {"cost": 0.1}), ("1.1", "1.2", {"cost": 0.2}), ("1.0", "1.2", {"cost": 0.3})],
        "1.0",
        "1.2",
        False,
        ["1.0", "1.2"],
    ),
    "equal cost: fewer steps win over a lower version before the target": (
        [("2.0", "0.1", {"cost": 0.5}), ("0.1", "1.0", {"cost": 0.5}), ("2.0", "1.0")],
        "2.0",
        "1.0",
        False,
        ["2.0", "1.0"],
    ),
    "a cheaper chain of many steps beats one step": (
        [
            ("1.0", "1.1", {"cost": 0.5}),
            ("1.1", "1.2", {"cost": 0.5}),
            ("1.2", "1.3", {"cost": 0.5}),
            ("1.0", "1.3", {"cost": 2}),
        ],
        "1.0",
        "1.3",
        False,
        ["1.0", "1.1", "1.2", "1.3"],
    ),
    "downgrade": (
        [("1.0", "1.1"), ("1.1", "1.2"), ("1.2", "1.1"), ("1.1", "1.0")],
        "1.2",
        "1.0",
        False,
        ["1.2", "1.1", "1.0"],
    ),
    "downgrade then upgrade around a gap": (
        [("2.0", "1.0"), ("1.0", "1.5"), ("2.0", "2.1")],
        "2.0",
        "1.5",
        False,
        ["2.0", "1.0", "1.5"],
    ),
    "onto a branch": (
        [("0.9.0", "1.0.0"), ("1.0.0", "1.0.0+lam"), ("1.0.0", "1.1.0")],
        "0.9.0",
        "1.0.0+lam",
        False,
        ["0.9.0", "1.0.0", "1.0.0+lam"],
    ),
    "along a branch": (
        [("1.0.0", "1.0.0+lam"), ("1.0.0+lam", "1.0.0+lam.2"), ("1.0.0+lam.2", "1.1.0+lam")],
        "1.0.0",
        "1.1.0+lam",
        False,
        ["1.0.0", "1.0.0+lam", "1.0.0+lam.2", "1.1.0+lam"],
    ),
    "merge back to the main line": (
        [("1.0.0", "1.0.0+lam"), ("1.0.0+lam", "1.0.0"), ("1.0.0+lam", "1.1.0"), ("1.0.0", "1.1.0")],
        "1.0.0+lam",
        "1.1.0",
        False,
        ["1.0.0+lam", "1.1.0"],
    ),
    "leave the branch when the merge costs more": (
        [("1.0.0+lam", "1.0.0"), ("1.0.0+lam", "1.1.0", {"cost": 3}), ("1.0.0", "1.1.0")],
        "1.0.0+lam",
        "1.1.0",
        False,
        ["1.0.0+lam", "1.0.0", "1.1.0"],
    ),
    "a longer lossless path beats a shorter lossy one": (
        [("1.1", "1.0", LOSSY), ("1.1", "1.1+lam"), ("1.1+lam", "1.0+lam"), ("1.0+lam", "1.0")],
        "1.1",
        "1.0",
        False,
        ["1.1", "1.1+lam", "1.0+lam", "1.0"],
    ),
    "lossless beats lossy whatever the cost": (
        [("1.1", "1.0", {"lossy": True, "cost": 0.5}), ("1.1", "0.5", {"cost": 50}), ("0.5", "1.0", {"cost": 50})],
        "1.1",
        "1.0",
        False,
        ["1.1", "0.5", "1.0"],
    ),
    "lossy-only path with allow_lossy": (
        [("1.0", "1.1"), ("1.1", "1.0", LOSSY)],
        "1.1",
        "1.0",
        True,
        ["1.1", "1.0"],
    ),
    "fewest lossy steps before cost": (
        [("3", "2", LOSSY), ("2", "1", LOSSY), ("3", "1", {"lossy": True, "cost": 5})],
        "3",
        "1",
        True,
        ["3", "1"],
    ),
    "latest skips branch versions": (
        [("1.0.0", "1.1.0"), ("1.1.0", "2.0.0"), ("1.1.0", "2.0.0+lam"), ("2.0.0+lam", "3.0.0+lam")],
        "1.0.0",
        "latest",
        False,
        ["1.0.0", "1.1.0", "2.0.0"],
    ),
    "lam@latest is the branch's highest point": (
        [("1.0.0", "1.0.0+lam"), ("1.0.0+lam", "1.0.0+lam.2"), ("1.0.0", "1.1.0"), ("1.0.0", "1.0.0+exp")],
        "1.0.0",
        "lam@latest",
        False,
        ["1.0.0", "1.0.0+lam", "1.0.0+lam.2"],
    ),
    "latest as the source": (
        [("1.0", "2.0"), ("2.0", "1.0")],
        "latest",
        "1.0",
        False,
        ["2.0", "1.0"],
    ),
    "tie: the lower version before the target wins": (
        [("1.0", "1.2"), ("1.2", "2.0"), ("1.0", "1.1"), ("1.1", "2.0")],
        "1.0",
        "2.0",
        False,
        ["1.0", "1.1", "2.0"],
    ),
    "tie: the lower version wins even when reached later": (
        [
            ("1.0", "1.1", {"cost": 1.5}),
            ("1.1", "2.0", {"cost": 0.5}),
            ("1.0", "1.2", {"cost": 0.5}),
            ("1.2", "2.0", {"cost": 1.5}),
        ],
        "1.0",
        "2.0",
        False,
        ["1.0", "1.1", "2.0"],
    ),
    "tie: versions compare from the target backwards": (
        [("1.0", "1.5"), ("1.5", "1.6"), ("1.6", "3.0"), ("1.0", "1.1"), ("1.1", "1.9"), ("1.9", "3.0")],
        "1.0",
        "3.0",
        False,
        ["1.0", "1.5", "1.6", "3.0"],
    ),
    "tie: equal last hops compare the hop before": (
        [("1.0", "1.4"), ("1.4", "1.5"), ("1.0", "1.3"), ("1.3", "1.5"), ("1.5", "2.0")],
        "1.0",
        "2.0",
        False,
        ["1.0", "1.3", "1.5", "2.0"],
    ),
    "tie on cost between branches": (
        [("1.0.0", "1.0.0+lam"), ("1.0.0+lam", "1.1.0"), ("1.0.0", "1.0.0+exp"), ("1.0.0+exp", "1.1.0")],
        "1.0.0",
        "1.1.0",
        False,
        ["1.0.0", "1.0.0+exp", "1.1.0"],
    ),
}


@pytest.mark.parametrize(("edges", "source", "target", "allow_lossy", "expected"), CASES.values(), ids=CASES.keys())
def test_plan_table(edges, source, target, allow_lossy, expected):
    """The planner picks the fewest lossy steps, then the lowest cost, then the documented tie rule."""
    plan = build_registry(edges).plan(source, target, allow_lossy=allow_lossy)
    assert [str(v) for v in plan.versions] == expected
    assert [step.name for step in plan.steps] == [edge_name(a, b) for a, b in itertools.pairwise(expected)]


@pytest.mark.parametrize(("edges", "source", "target", "allow_lossy", "expected"), CASES.values(), ids=CASES.keys())
def test_plan_ignores_insertion_order(edges, source, target, allow_lossy, expected):
    """Whatever order the converters are added in, the plan is the same."""
    found = {
        tuple(str(v) for v in build_registry(order).plan(source, target, allow_lossy=allow_lossy).versions)
        for order in itertools.permutations(edges)
    }
    assert found == {tuple(expected)}


def test_cost_sums_are_exact():
    """A plan's cost is the exact decimal sum of its steps' costs."""
    edges = [("1.0", "1.1", {"cost": 0.1}), ("1.1", "1.2", {"cost": 0.2}), ("1.0", "1.2", {"cost": 0.30001})]
    plan = build_registry(edges).plan("1.0", "1.2")
    assert [str(v) for v in plan.versions] == ["1.0", "1.1", "1.2"]
    assert plan.cost == 0.3


def test_lossy_path_needs_allow_lossy():
    """When every path is lossy, plan raises LossyPathError naming the lossy steps of the plan it would use."""
    registry = build_registry([("1.0", "1.1"), ("1.1", "1.2"), ("1.2", "1.1", LOSSY), ("1.1", "1.0")])
    with pytest.raises(LossyPathError) as info:
        registry.plan("1.2", "1.0")
    assert (info.value.source, info.value.target, info.value.lossy_steps) == ("1.2", "1.0", (("1.2", "1.1"),))
    assert "1.2 -> 1.1" in str(info.value)
    assert "--allow-lossy" in str(info.value)

    plan = registry.plan("1.2", "1.0", allow_lossy=True)
    assert [str(v) for v in plan.versions] == ["1.2", "1.1", "1.0"]
    assert plan.lossy
    assert [s.lossy for s in plan.steps] == [True, False]


def test_lossless_plan_is_not_lossy():
    """A plan with no lossy step says so, with or without allow_lossy."""
    registry = build_registry([("1.0", "1.1"), ("1.0", "1.1+x", LOSSY)])
    assert registry.plan("1.0", "1.1").lossy is False
    assert registry.plan("1.0", "1.1", allow_lossy=True).lossy is False


def test_no_path_lists_both_sides():
    """NoPathError lists what the source reaches and what reaches the target."""
    registry = build_registry([("1.0", "1.1"), ("1.1", "1.2"), ("2.0", "2.1"), ("1.9", "2.0"), ("2.1", "1.0")])
    with pytest.raises(NoPathError) as info:
        registry.plan("1.0", "1.9")
    error = info.value
    assert (error.source, error.target) == ("1.0", "1.9")
    assert error.reachable == ("1.1", "1.2")
    assert error.reaching == ()
    assert str(error) == "no path from 1.0 to 1.9: 1.0 reaches 1.1, 1.2; 1.9 is reached from nothing"

    with pytest.raises(NoPathError) as info:
        registry.plan("1.1", "2.0")
    assert info.value.reachable == ("1.2",)
    assert info.value.reaching == ("1.9",)


def test_no_path_lists_are_shortened():
    """Long reach lists in the message are cut to twenty names and a count."""
    edges = [(f"1.{i}", f"1.{i + 1}") for i in range(30)] + [("9.0", "9.1")]
    with pytest.raises(NoPathError) as info:
        build_registry(edges).plan("1.0", "9.1")
    assert len(info.value.reachable) == 30
    assert "1.20 and 10 more" in str(info.value)


@pytest.mark.parametrize(
    ("source", "target", "unknown", "nearest"),
    [
        ("0.9.5", "1.2.0", "0.9.5", ("1.0.0", "1.1.0", "1.1.0+lam", "1.2.0")),
        ("1.0.0", "1.1.1", "1.1.1", ("1.0.0", "1.1.0", "1.1.0+lam", "1.2.0")),
        ("1.0.0", "1.1.0+lam.3", "1.1.0+lam.3", ("1.0.0", "1.1.0", "1.1.0+lam", "1.2.0")),
    ],
)
def test_unknown_version_lists_nearest(source, target, unknown, nearest):
    """A version no converter mentions raises UnknownVersionError with the nearest known versions."""
    registry = build_registry([("1.0.0", "1.1.0"), ("1.1.0", "1.1.0+lam"), ("1.1.0+lam", "1.2.0")])
    with pytest.raises(UnknownVersionError) as info:
        registry.plan(source, target)
    assert info.value.version == unknown
    assert info.value.nearest == nearest
    assert str(info.value) == f"unknown version {unknown}; nearest known: {', '.join(nearest)}"


def test_empty_graph():
    """With no converters, every version is unknown and the message says the graph is empty."""
    with pytest.raises(UnknownVersionError, match="the graph has no versions"):
        build_registry([]).plan("1.0", "1.0")


@pytest.mark.parametrize("target", ["1.1", "1.1.0", "latest"])
def test_source_equal_to_target_is_an_empty_plan(target):
    """Planning from a version to itself gives a plan with no steps."""
    plan = build_registry([("1.0", "1.1"), ("1.1", "1.0")]).plan("1.1", target)
    assert plan.steps == ()
    assert len(plan) == 0
    assert (plan.cost, plan.lossy, plan.versions) == (0.0, False, (Version("1.1"),))
    assert str(plan).startswith("1.1 is already 1.1")
    assert str(plan).endswith(": nothing to do")


def test_versions_are_equal_however_spelt():
    """`1.0` and `1.0.0` are one node of the graph."""
    plan = build_registry([("1.0", "1.1"), ("1.1.0", "1.2")]).plan("1.0.0", "1.2.0")
    assert len(plan) == 2


def test_registry_replans_after_add():
    """Adding a converter to a registry is seen by the next plan."""
    registry = build_registry([("1.0", "1.1"), ("1.2", "1.3")])
    with pytest.raises(NoPathError):
        registry.plan("1.0", "1.3")
    registry.add("1.1", "1.2", lambda ckpt: ckpt)
    assert len(registry.plan("1.0", "1.3")) == 3


def test_registry_decorator_registers():
    """`@registry.converter(source, target)` adds the function and returns it unchanged."""
    registry = build_registry([])

    @registry.converter("1.0", "1.1", cost=2)
    def upgrade(ckpt):
        """Upgrade."""
        return ckpt

    plan = registry.plan("1.0")
    assert [s.name for s in plan.steps] == ["upgrade"]
    assert plan.steps[0].code == FunctionCode(upgrade)
    assert plan.cost == 2.0


def test_planner_versions_are_sorted():
    """The planner lists every version of the graph, oldest first."""
    planner = Planner(build_graph(build_registry([("2.0", "1.0+a"), ("1.0", "1.5")]).converters))
    assert [str(v) for v in planner.versions] == ["1.0", "1.0+a", "1.5", "2.0"]


STEP_KEYS = {"source", "target", "converter", "file", "lossy", "cost", "description"}


def test_plan_to_dict_has_the_contract_keys(example_dir):
    """Plan.to_dict has exactly the keys and types of `plan --json`, and to_json is the same."""
    from ckpt_path import Registry

    plan = Registry.from_directory(example_dir).plan("1.0.0", "1.2.0")
    data = plan.to_dict()
    assert set(data) == {"source", "requested_source", "target", "cost", "lossy", "steps"}
    assert data["source"] == "1.0.0"
    assert data["requested_source"] is None
    assert data["target"] == "1.2.0"
    assert data["cost"] == 2.0
    assert isinstance(data["cost"], float)
    assert data["lossy"] is False
    assert data["steps"] == [
        {
            "source": "1.0.0",
            "target": "1.1.0",
            "converter": "a_upgrade",
            "file": str(example_dir / "a_upgrade.py"),
            "lossy": False,
            "cost": 1.0,
            "description": "Upgrade to 1.1.",
        },
        {
            "source": "1.1.0",
            "target": "1.2.0",
            "converter": "b_upgrade",
            "file": str(example_dir / "b_upgrade.py"),
            "lossy": False,
            "cost": 1.0,
            "description": "Upgrade to 1.2.",
        },
    ]
    assert all(set(step) == STEP_KEYS for step in data["steps"])
    assert json.loads(plan.to_json()) == data


def test_step_of_code_converter_has_no_file():
    """A step made in code serialises its file as null."""
    plan = build_registry([("1.0", "1.1", LOSSY)]).plan("1.0", "1.1", allow_lossy=True)
    step = json.loads(plan.to_json())["steps"][0]
    assert step["file"] is None
    assert step["lossy"] is True


def test_plan_str_lists_steps():
    """A plan prints its summary line and one numbered line per step."""
    plan = build_registry([("1.0", "1.1", {"description": "Up."}), ("1.1", "1.2", LOSSY)]).plan(
        "1.0",
        "1.2",
        allow_lossy=True,
    )
    assert str(plan).splitlines() == [
        "1.0 -> 1.2: 2 step(s), cost 2",
        "  1. 1.0 -> 1.1  1.0->1.1  Up.",
        "  2. 1.1 -> 1.2  1.1->1.2  [lossy]  1.1 -> 1.2",
    ]


def test_plan_and_step_are_frozen():
    """Plans and steps are immutable values."""
    plan = build_registry([("1.0", "1.1")]).plan("1.0", "1.1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.target = Version("9.0")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.steps[0].cost = 2.0  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):
        plan.note = "x"  # type: ignore[attr-defined]
    assert isinstance(plan, Plan)
    assert isinstance(plan.steps, tuple)
    assert isinstance(plan.steps[0], Step)


# Property test: the planner against a brute-force enumeration of every simple path.

POOL = ["0.1", "0.2", "1.0", "1.0+lam", "1.0+lam.2", "1.1", "2.0", "2.0+exp"]
COSTS = [0.5, 1, 1.5, 2, 3]


@st.composite
def graphs(draw):
    """Draw up to seven versions and edges between them with random lossy flags and costs."""
    names = draw(st.lists(st.sampled_from(POOL), min_size=2, max_size=7, unique=True))
    # Each ordered pair independently: no edge, or an edge with its lossy flag and cost.
    edge = st.none() | st.fixed_dictionaries({"lossy": st.booleans(), "cost": st.sampled_from(COSTS)})
    edges = [(a, b, options) for a in names for b in names if a != b and (options := draw(edge)) is not None]
    assume(edges)
    return edges


def brute_force(graph, source, target):
    """Return the best simple path by (lossy steps, cost in millionths, steps, versions from the target back)."""
    if source == target:
        return (0, 0, 0, (target,)), [source]

    def key(path):
        hops = [graph.edges[u, v] for u, v in itertools.pairwise(path)]
        return (sum(h["lossy"] for h in hops), sum(h["micro"] for h in hops), len(hops), tuple(reversed(path)))

    paths = list(nx.all_simple_paths(graph, source, target))
    if not paths:
        return None, None
    best = min(paths, key=key)
    return key(best), best


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(graphs(), st.data())
def test_planner_matches_brute_force(edges, data):
    """For a random pair of versions and then for every pair, the plan is the brute-force best path."""
    registry = build_registry(edges)
    graph = nx.DiGraph()
    for a, b, options in edges:
        graph.add_edge(Version(a), Version(b), lossy=options["lossy"], micro=round(options["cost"] * 1_000_000))
    nodes = sorted(graph.nodes)
    drawn = (data.draw(st.sampled_from(nodes), "source"), data.draw(st.sampled_from(nodes), "target"))
    for source, target in [drawn, *itertools.product(nodes, nodes)]:
        check_plan(registry, graph, source, target)


def check_plan(registry, graph, source, target):
    """Assert the registry's plan from source to target is the brute-force best, or NoPathError."""
    best_key, best_path = brute_force(graph, source, target)
    if best_path is None:
        with pytest.raises(NoPathError):
            registry.plan(source, target, allow_lossy=True)
        return

    plan = registry.plan(source, target, allow_lossy=True)
    assert plan.versions[0] == source
    assert plan.versions[-1] == target
    assert all(graph.has_edge(s.source, s.target) for s in plan.steps)
    assert all(s.lossy == graph.edges[s.source, s.target]["lossy"] for s in plan.steps)
    assert list(plan.versions) == best_path
    assert plan.cost == best_key[1] / 1_000_000
    assert plan.lossy == (best_key[0] > 0)

    if plan.lossy:
        with pytest.raises(LossyPathError):
            registry.plan(source, target)
    else:
        assert registry.plan(source, target) == plan


def test_bundled_example_plans_oldest_to_latest():
    """The repository's example converters take 0.1.0 to latest through every main-line version."""
    from ckpt_path import Registry

    plan = Registry.from_directory(EXAMPLE_CONVERTERS).plan("0.1.0", "latest")
    assert [str(v) for v in plan.versions] == ["0.1.0", "0.2.0", "0.3.0", "1.0.0", "1.1.0"]


# Version ranges: a source that is not a version of the graph reads as the highest version at
# or below it on its branch.

RANGES = [
    ("0.5.0", "1.0.0"),
    ("1.0.0", "1.5.0"),
    ("1.5.0", "1.6.0"),
    ("1.0.0", "1.0.0+lam"),
    ("1.0.0+lam", "1.0.2+lam"),
    ("1.0.2+lam", "1.6.0"),
]
"""A main line 0.5.0 .. 1.6.0 and a ``lam`` branch 1.0.0+lam, 1.0.2+lam."""


@pytest.mark.parametrize(
    ("source", "node"),
    [
        ("1.5.4", "1.5.0"),
        ("1.5.99.1", "1.5.0"),
        ("9.0", "1.6.0"),
        ("1.5.0.post1", "1.5.0"),
        ("1.6.0rc1", "1.5.0"),
        ("1.0.1+lam", "1.0.0+lam"),
        ("1.0.3+lam", "1.0.2+lam"),
        ("1.7+lam", "1.0.2+lam"),
        ("1.0.2+lam.5", "1.0.2+lam"),
    ],
)
def test_source_between_versions_reads_as_the_one_below(source, node):
    """A source that is not in the graph plans from the highest version at or below it on its branch."""
    plan = build_registry(RANGES).plan(source, "1.6.0")
    assert plan.source == Version(node)
    assert plan.requested_source == Version(source)
    assert plan.versions[0] == Version(node)
    assert plan.versions[-1] == Version("1.6.0")


def test_source_in_the_graph_has_no_requested_source():
    """A source that is a version of the graph is planned from as it is, with requested_source None."""
    plan = build_registry(RANGES).plan("1.5.0", "1.6.0")
    assert (plan.source, plan.requested_source) == (Version("1.5.0"), None)
    assert plan.to_dict()["requested_source"] is None
    assert str(plan).splitlines()[0] == "1.5.0 -> 1.6.0: 1 step(s), cost 1"


def test_branch_source_never_reads_as_a_main_line_version():
    """1.7+lam reads as the lam branch's 1.0.2+lam, not as the higher main-line 1.6.0 or 1.5.0."""
    node, requested = Planner(build_graph(build_registry(RANGES).converters)).resolve_source("1.7+lam")
    assert (node, requested) == (Version("1.0.2+lam"), Version("1.7+lam"))


@pytest.mark.parametrize(
    ("source", "nearest"),
    [
        ("0.1", ("0.5.0", "1.0.0", "1.5.0", "1.6.0")),
        ("0.9+lam", ("0.5.0", "1.0.0", "1.0.0+lam", "1.0.2+lam")),
        ("1.5.0+exp", ("1.0.0+lam", "1.0.2+lam", "1.5.0", "1.6.0")),
    ],
)
def test_source_with_nothing_below_on_its_branch_is_unknown(source, nearest):
    """A source with no version at or below it on its branch stays an UnknownVersionError listing the nearest."""
    planner = Planner(build_graph(build_registry(RANGES).converters))
    for attempt in (planner.resolve_source, lambda s: planner.plan(s, "1.6.0")):
        with pytest.raises(UnknownVersionError) as info:
            attempt(source)
        assert info.value.version == str(Version(source))
        assert info.value.nearest == nearest


def test_target_not_in_the_graph_is_still_unknown():
    """Only sources read as the version below: a target that is not in the graph is an UnknownVersionError."""
    registry = build_registry(RANGES)
    with pytest.raises(UnknownVersionError) as info:
        registry.plan("1.5.4", "1.6.1")
    assert info.value.version == "1.6.1"
    assert info.value.nearest == ("0.5.0", "1.0.0", "1.5.0", "1.6.0")
    with pytest.raises(UnknownVersionError):
        registry.planner.resolve("1.5.4")


def test_resolve_source_of_a_version_in_the_graph():
    """resolve_source returns a version of the graph with None, and accepts `latest` and Version objects."""
    planner = Planner(build_graph(build_registry(RANGES).converters))
    assert planner.resolve_source("1.5") == (Version("1.5"), None)
    assert planner.resolve_source("latest") == (Version("1.6.0"), None)
    assert planner.resolve_source(Version("1.5.4")) == (Version("1.5.0"), Version("1.5.4"))


def test_plan_from_a_version_between_says_so():
    """The JSON of a plan from a version not in the graph has requested_source, and its text a note line."""
    plan = build_registry(RANGES).plan("1.5.4", "1.6.0")
    data = json.loads(plan.to_json())
    assert (data["source"], data["requested_source"]) == ("1.5.0", "1.5.4")
    assert str(plan).splitlines() == [
        "1.5.4 is not a version of the graph; it reads as 1.5.0, the highest version at or below it on its branch",
        "1.5.0 -> 1.6.0: 1 step(s), cost 1",
        "  1. 1.5.0 -> 1.6.0  1.5.0->1.6.0  1.5.0 -> 1.6.0",
    ]


def test_empty_plan_from_a_version_between_says_so():
    """Planning from 1.5.4 to 1.5.0 is an empty plan that still says 1.5.4 read as 1.5.0."""
    plan = build_registry(RANGES).plan("1.5.4", "1.5.0")
    assert plan.steps == ()
    assert plan.requested_source == Version("1.5.4")
    assert str(plan).splitlines() == [
        "1.5.4 is not a version of the graph; it reads as 1.5.0, the highest version at or below it on its branch",
        "1.5.0 is already 1.5.0: nothing to do",
    ]


VERSION_TEXTS = st.builds(
    lambda release, pre, label: release + pre + label,
    st.sampled_from(["0.0.5", "0.1", "0.1.5", "0.2", "1.0", "1.0.1", "1.1", "1.5", "2.0", "2.0.1", "3"]),
    st.sampled_from(["", "", "rc1", ".post1", ".dev0"]),
    st.sampled_from(["", "", "+lam", "+lam.1", "+lam.2", "+exp"]),
)
"""Versions around and between the property test's POOL, on its branches and off them."""


@settings(max_examples=200, deadline=None)
@given(graphs(), VERSION_TEXTS, st.data())
def test_any_source_plans_as_its_version_below(edges, text, data):
    """Any source plans exactly as the highest graph version at or below it on its branch, or is unknown."""
    registry = build_registry(edges)
    nodes = sorted(registry.planner.versions)
    target = data.draw(st.sampled_from(nodes), "target")
    version = Version(text)
    below = [v for v in nodes if v <= version and (v.local or "").split(".")[0] == (version.local or "").split(".")[0]]
    if not below:
        with pytest.raises(UnknownVersionError):
            registry.plan(version, target, allow_lossy=True)
        return
    node = below[-1]
    assert not any(node < v <= version for v in below)
    try:
        expected = registry.plan(node, target, allow_lossy=True)
    except NoPathError:
        with pytest.raises(NoPathError):
            registry.plan(version, target, allow_lossy=True)
        return
    plan = registry.plan(version, target, allow_lossy=True)
    assert plan == dataclasses.replace(expected, requested_source=None if node == version else version)
    assert plan.source == node
