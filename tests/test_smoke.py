from pathlib import Path

from ckpt_path import Registry

ROOT = Path(__file__).resolve().parents[1]


def test_example_graph_plans_oldest_to_latest():
    """The bundled example history takes 0.1.0 to latest in four steps."""
    registry = Registry.from_directory(ROOT / "converters")
    plan = registry.plan("0.1.0", "latest")
    assert [str(v) for v in plan.versions] == ["0.1.0", "0.2.0", "0.3.0", "1.0.0", "1.1.0"]
