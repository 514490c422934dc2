"""Converters: one edge of the version graph each.

A :class:`Converter` is a value: its versions, how the planner weighs it, and its code: a
converter file (imported only when its step runs), declarative ops read from the file's syntax
tree, or a function given in code. Reading converter files lives in
:mod:`ckpt_path.converter_files`, as Alembic keeps ``Revision`` apart from loading scripts.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from packaging.version import Version

from ckpt_path.errors import ConverterFileError, VersionError
from ckpt_path.ops import Op, invert
from ckpt_path.pickles import Moves
from ckpt_path.versions import parse_version

__all__ = [
    "MIN_COST",
    "Code",
    "ConvertFn",
    "Converter",
    "FileCode",
    "FunctionCode",
    "MovesCode",
    "OpsCode",
    "WhenFn",
    "check_cost",
    "file_digest",
]

ConvertFn = Callable[[Any], Any]
WhenFn = Callable[[Any], bool]

MIN_COST = 1e-6
"""Costs are summed in millionths, so that equal totals compare equal whatever the order."""

Kind = Literal["convert", "ops", "moves"]


@dataclass(frozen=True, slots=True)
class FileCode:
    """A converter file that defines ``convert``: imported when its step runs, never before."""

    with_when: bool = False
    """The file defines a ``when`` guard too."""


@dataclass(frozen=True, slots=True)
class OpsCode:
    """Declarative ops, read from the file's syntax tree (or given in code)."""

    ops: tuple[Op, ...]
    with_when: bool = False
    """The file defines a ``when`` guard: it is imported for that alone when the step runs."""


@dataclass(frozen=True, slots=True)
class MovesCode:
    """A file that only declares moved globals: its step leaves the checkpoint as it is."""

    with_when: bool = False


@dataclass(frozen=True, slots=True)
class FunctionCode:
    """A function given in code (libraries, tests), with its optional guard."""

    convert: ConvertFn
    when: WhenFn | None = None


Code = FileCode | OpsCode | MovesCode | FunctionCode
"""What a converter runs: exactly one of these."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Converter:
    """One edge ``source -> target`` of the version graph.

    ``code`` says what the step runs: a converter file's ``convert`` (imported only when the
    step runs, see :mod:`ckpt_path._converter_code`), declarative ops read from the file's
    syntax tree, a file that only moves pickled globals, or a function given in code.
    """

    source: Version
    target: Version
    name: str
    description: str = ""
    file: str | None = None
    lossy: bool = False
    cost: float = 1.0
    touches: tuple[str, ...] | None = None
    """Glob patterns of the keys the step may change; None when not declared (nothing checked)."""
    reversible: bool = False
    code: Code = field(default_factory=FileCode, compare=False, repr=False)
    digest: str = ""
    """Fingerprint of the converter's code, recorded in the stamp's history."""
    inverse: bool = False
    """True for the edge registered automatically from a ``reversible`` file."""
    moves: Moves | None = None
    """How pickled globals moved in this step's code (see :mod:`ckpt_path.pickles`)."""

    @property
    def kind(self) -> Kind:
        """``ops``, ``moves`` (a file that only moves pickled globals) or ``convert`` (a function)."""
        if isinstance(self.code, OpsCode):
            return "ops"
        return "moves" if isinstance(self.code, MovesCode) else "convert"

    @property
    def ops(self) -> tuple[Op, ...] | None:
        """The step's declarative ops, or None for code."""
        return self.code.ops if isinstance(self.code, OpsCode) else None

    @property
    def has_when(self) -> bool:
        """Whether the step has a ``when`` guard."""
        if isinstance(self.code, FunctionCode):
            return self.code.when is not None
        return self.code.with_when

    @property
    def origin(self) -> str:
        """Where the converter comes from, for messages: its file, or ``<code>``."""
        return self.file if self.file is not None else f"<code:{self.name}>"

    @property
    def edge(self) -> tuple[Version, Version]:
        """The ``(source, target)`` pair."""
        return (self.source, self.target)

    def to_dict(self) -> dict[str, Any]:
        """Return the converter as a step of the contract's ``plan --json``."""
        return {
            "source": str(self.source),
            "target": str(self.target),
            "converter": self.name,
            "file": self.file,
            "lossy": self.lossy,
            "cost": self.cost,
            "description": self.description,
        }

    def edges(self) -> tuple[Converter, ...]:
        """Return the edges this converter adds to the graph: itself, and its inverse when reversible."""
        return (self, self.inverted()) if self.reversible else (self,)

    def inverted(self) -> Converter:
        """Return the inverse edge ``target -> source`` of a reversible converter."""
        ops = invert(self.ops) if self.ops is not None else None
        if ops is None:
            msg = f"{self.origin}: reversible, but an op has no inverse"
            raise ConverterFileError(self.origin, msg)
        return Converter(
            source=self.target,
            target=self.source,
            name=f"{self.name}:inverse",
            description=f"undo: {self.description}",
            file=self.file,
            lossy=any(op.is_lossy() for op in ops),
            cost=self.cost,
            touches=None,
            reversible=True,
            code=OpsCode(ops),
            digest=self.digest,
            inverse=True,
        )

    @classmethod
    def from_function(  # noqa: PLR0913 - mirrors the module-level names of a converter file
        cls,
        source: str | Version,
        target: str | Version,
        convert: ConvertFn,
        *,
        name: str | None = None,
        description: str | None = None,
        touches: Iterable[str] | None = None,
        lossy: bool = False,
        cost: float = 1.0,
        when: WhenFn | None = None,
    ) -> Converter:
        """Make a converter from a function, for libraries and tests."""
        src, tgt = parse_version(source), parse_version(target)
        if src == tgt:
            raise VersionError(str(target), f"a converter needs two different versions, got {src} twice")
        check_cost(cost, "<code>", None)
        doc = inspect.getdoc(convert) or ""
        return cls(
            source=src,
            target=tgt,
            name=name or str(getattr(convert, "__name__", f"{src}->{tgt}")),
            description=description or (doc.splitlines()[0] if doc else f"{src} -> {tgt}"),
            lossy=lossy,
            cost=float(cost),
            touches=tuple(touches) if touches is not None else None,
            code=FunctionCode(convert, when),
            digest=_code_digest(convert),
        )


def _code_digest(fn: Callable[..., Any]) -> str:
    try:
        text = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text = code.co_code if code is not None else repr(fn).encode()
    return "sha256:" + hashlib.sha256(text).hexdigest()[:16]


def file_digest(data: bytes) -> str:
    """Fingerprint a converter file's bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


def check_cost(value: object, file: str, line: int | None) -> float:
    """Check a cost literal: a number >= MIN_COST; return it as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConverterFileError(file, f"cost must be a number, got {value!r}", line)
    try:
        number = float(value)
    except OverflowError:  # an int literal too large for a float
        number = math.inf
    if not math.isfinite(number) or number < MIN_COST:
        raise ConverterFileError(file, f"cost must be a number >= {MIN_COST:g}, got {value!r}", line)
    return number
