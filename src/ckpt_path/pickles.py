"""Classes that moved, were renamed or were deleted, inside pickled checkpoints, loaded safely.

A pickle names every class it holds by its dotted path (``pkg.module.Class``). When the code
moves or deletes that class, the checkpoint no longer loads. A converter file may declare how
its code's globals moved, with plain literals read from its syntax tree::

    moved_modules = {"anemoi.models.schemas.data_processor": "anemoi.models.schemas.data"}
    moved_globals = {"anemoi.training.schemas.data.NormalizerSchema": "anemoi.models.schemas.data.NormalizerSchema"}
    deleted_globals = ["anemoi.models.old.LegacyConfig", "anemoi.models.gone.*"]

Loading still uses ``torch.load(weights_only=True)``: torch's safe-globals mechanism maps
each old dotted name to the current object (no alias is put into ``sys.modules``), and a
deleted global becomes an inert :class:`DeletedGlobal` placeholder that a converter can inspect
or drop. Only the moves of the converters on the plan's path apply.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from ckpt_path.errors import MovedGlobalError, UsageError

__all__ = ["DeletedGlobal", "Moves", "placeholder", "user_globals"]


class DeletedGlobal:
    """An inert stand-in for a global that no longer exists; it keeps what the pickle gave it.

    ``args`` and ``kwargs`` are what the pickle constructed it with, ``state`` what it set on
    it. A converter should drop it, or replace it with something current, before saving.
    """

    __ckpt_path_global__ = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> DeletedGlobal:  # noqa: ARG004, PYI034 - any pickle
        """Create the placeholder; the arguments are kept by ``__init__``."""
        instance = super().__new__(cls)
        instance.args = args
        instance.kwargs = {}
        instance.state = None
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = dict(kwargs)
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        """Keep the pickled state instead of applying it."""
        self.state = state

    def __copy__(self) -> DeletedGlobal:
        """Copy the placeholder as it is (``__setstate__`` would wrap its attributes as state)."""
        twin = type(self).__new__(type(self), *self.args)
        twin.kwargs, twin.state = dict(self.kwargs), self.state
        return twin

    def __deepcopy__(self, memo: dict[int, Any]) -> DeletedGlobal:
        """Deep-copy ``args``, ``kwargs`` and ``state`` as they are."""
        twin = type(self).__new__(type(self), *copy.deepcopy(self.args, memo))
        twin.kwargs = copy.deepcopy(self.kwargs, memo)
        twin.state = copy.deepcopy(self.state, memo)
        return twin

    def __repr__(self) -> str:
        return f"<deleted {self.__ckpt_path_global__}>"


_placeholders: dict[str, type[DeletedGlobal]] = {}


def placeholder(name: str) -> type[DeletedGlobal]:
    """Return the placeholder class that stands in for the deleted global ``name``."""
    if name not in _placeholders:
        _placeholders[name] = type(
            "DeletedGlobal",
            (DeletedGlobal,),
            {"__ckpt_path_global__": name, "__module__": __name__, "__qualname__": f"DeletedGlobal[{name}]"},
        )
    return _placeholders[name]


def _import(dotted: str, declared_by: str) -> object:
    module, _, attr = dotted.rpartition(".")
    try:
        return getattr(import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        raise MovedGlobalError(dotted, declared_by, "cannot be imported") from None


def _class_of_module(dotted: str, package: str, declared_by: str) -> object:
    """Import ``dotted`` for a moved module: only a class defined under ``package`` qualifies.

    A moved module maps every name under it, so anything else (a function, a class the new
    module merely imported, such as a re-exported ``os.system`` or ``subprocess.Popen``) could
    be called by the pickle; it is refused by name.
    """
    found = _import(dotted, declared_by)
    home = getattr(found, "__module__", None) or ""
    if not isinstance(found, type) or not (home == package or home.startswith(package + ".")):
        what = "a class" if isinstance(found, type) else type(found).__name__
        raise MovedGlobalError(
            dotted,
            declared_by,
            f"is {what} from {home or 'elsewhere'}, not a class defined under {package}; a moved module only "
            "supplies its own classes (name anything else in moved_globals)",
        )
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class Moves:
    """How pickled globals moved: modules, single globals, deleted globals (globs allowed).

    ``as_dict`` names dict subclasses (``AttrDict``, ``DotDict``) to read as plain dicts, which
    weights-only loading can fill. ``peeking`` marks the moves of a first look that imports
    nothing (:func:`everything_deleted`).
    """

    modules: Mapping[str, str]
    globals: Mapping[str, str]
    deleted: tuple[str, ...] = ()
    as_dict: tuple[str, ...] = ()
    declared_by: str = "converters"
    peeking: bool = False

    @classmethod
    def merge(cls, moves: Iterable[Moves]) -> Moves:
        """Combine the moves of several converters (later ones win on the same name)."""
        modules: dict[str, str] = {}
        globals_: dict[str, str] = {}
        deleted: list[str] = []
        as_dict: list[str] = []
        sources = []
        peeking = False
        for m in moves:
            peeking = peeking or m.peeking
            modules.update(m.modules)
            globals_.update(m.globals)
            deleted.extend(m.deleted)
            as_dict.extend(m.as_dict)
            sources.append(m.declared_by)
        return cls(
            modules=modules,
            globals=globals_,
            deleted=tuple(deleted),
            as_dict=tuple(dict.fromkeys(as_dict)),
            declared_by=", ".join(sources),
            peeking=peeking,
        )

    def __bool__(self) -> bool:
        return bool(self.modules or self.globals or self.deleted or self.as_dict)

    def resolve(self, name: str) -> object | None:
        """Return what the pickled global ``name`` stands for now, or None if no move covers it.

        A dict subclass read as a dict wins, then an exact move, then a deletion, then the
        longest moved module (which supplies only classes defined under its new name).
        """
        if name in self.as_dict:
            return dict
        if name in self.globals:
            return _import(self.globals[name], self.declared_by)
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.deleted):
            return placeholder(name)
        module, _, attr = name.rpartition(".")
        prefixes = [m for m in self.modules if module == m or module.startswith(m + ".")]
        if prefixes:
            old = max(prefixes, key=len)
            new = self.modules[old]
            return _class_of_module(new + module[len(old) :] + "." + attr, new, self.declared_by)
        return None


def everything_deleted() -> Moves:
    """Return moves that make every unknown global a placeholder: to peek without importing anything."""
    return Moves(modules={}, globals={}, deleted=("*",), declared_by="peek", peeking=True)


def user_globals(names: Iterable[str]) -> dict[str, object]:
    """Import the globals a user allowed by name (``--safe-global module.Name``); they win over any move."""
    allowed: dict[str, object] = {}
    for name in names:
        module, _, attr = name.rpartition(".")
        try:
            allowed[name] = getattr(import_module(module), attr)
        except (ImportError, AttributeError, ValueError):
            raise UsageError(f"--safe-global {name}: cannot import {attr!r} from {module!r}") from None
    return allowed
