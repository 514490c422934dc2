from __future__ import annotations
import __future__

import importlib.metadata
import types

import ckpt_path


def public_attributes():
    """Return the public names bound in ckpt_path, without submodules and `from __future__` flags."""
    return {
        name
        for name, value in vars(ckpt_path).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not isinstance(value, type(__future__.annotations))
    }


def test_every_exported_name_exists():
    """Every name in ckpt_path.__all__ can be got from ckpt_path."""
    missing = [name for name in ckpt_path.__all__ if not hasattr(ckpt_path, name)]
    assert missing == []


def test_every_public_attribute_is_exported():
    """Every public attribute of ckpt_path (other than submodules) is listed in __all__."""
    assert public_attributes() - set(ckpt_path.__all__) == set()


def test_star_import_gives_exactly_all():
    """`from ckpt_path import *` binds exactly the names of __all__."""
    namespace: dict[str, object] = {}
    exec("from ckpt_path import *", namespace)  # noqa: S102 - a fixed statement, to test star imports
    namespace.pop("__builtins__")
    assert set(namespace) == set(ckpt_path.__all__)


def test_all_is_sorted_without_duplicates():
    """__all__ is sorted and names each member once."""
    assert ckpt_path.__all__ == sorted(set(ckpt_path.__all__))


def test_version_matches_the_distribution():
    """ckpt_path.__version__ is the installed distribution's version."""
    assert ckpt_path.__version__ == importlib.metadata.version("ckpt-path")
