"""Run the demo: plan across the example graph in ./converters."""

from ckpt_path.registry import Registry


def main() -> None:
    """Print the plans the example graph gives."""
    registry = Registry.from_directory("converters")
    for source, target in [("0.1.0", "latest"), ("1.0.0", "lam@latest"), ("1.0.0+lam", "0.3.0")]:
        print(registry.plan(source, target))  # noqa: T201 - the demo talks to people


if __name__ == "__main__":
    main()
