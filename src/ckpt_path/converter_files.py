"""Reading converter files: their metadata from the syntax tree, without importing them.

A converters directory holds one ``.py`` file per converter. Its module-level literals
(``source``, ``target``, ``reversible``, ``lossy``, ``cost``, ``touches``, the moves) and its
``ops`` are read from the syntax tree, so building the graph never runs user code and never
imports torch. A file that breaks a rule is a :class:`ConverterFileError` with file and line.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from packaging.version import Version

from ckpt_path.converters import Code, Converter, FileCode, MovesCode, OpsCode, check_cost, file_digest
from ckpt_path.errors import ConverterFileError, VersionError
from ckpt_path.ops import OPS, Op, OpError, invert
from ckpt_path.pickles import Moves
from ckpt_path.versions import parse_version

__all__ = ["converter_files", "display_path", "read_converter_file", "read_converters"]

_LITERALS = (
    "source",
    "target",
    "reversible",
    "lossy",
    "cost",
    "touches",
    "moved_modules",
    "moved_globals",
    "deleted_globals",
    "read_as_dict",
)
_CODE = ("convert", "ops", "when")


def _cost(value: object, _name: str, file: str, line: int) -> float:
    return check_cost(value, file, line)


def _literal(node: ast.expr, name: str, file: str) -> object:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError):  # TypeError: an unhashable item in a set or dict literal
        raise ConverterFileError(
            file,
            f"{name} must be a plain literal (the graph is read without running the file)",
            node.lineno,
        ) from None


def _version(value: object, name: str, file: str, line: int) -> Version:
    if not isinstance(value, str):
        raise ConverterFileError(file, f"{name} must be a version string, got {value!r}", line)
    try:
        return parse_version(value)
    except VersionError as exc:
        raise ConverterFileError(file, f"{name}: {exc}", line) from None


def _bool(value: object, name: str, file: str, line: int) -> bool:
    if not isinstance(value, bool):
        raise ConverterFileError(file, f"{name} must be True or False, got {value!r}", line)
    return value


def _touches(value: object, _name: str, file: str, line: int) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
        raise ConverterFileError(file, "touches must be a list of key patterns (strings)", line)
    return tuple(value)


def _module_names(tree: ast.Module, file: str) -> dict[str, ast.stmt]:
    """Map each module-level name that matters to the statement that binds it."""
    found: dict[str, ast.stmt] = {}
    for stmt in tree.body:
        names: list[str] = []
        if isinstance(stmt, ast.Assign):
            names = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if stmt.value is not None:
                names = [stmt.target.id]
        elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            names = [stmt.name]
        for name in names:
            if name not in _LITERALS + _CODE:
                continue
            if name in found:
                raise ConverterFileError(
                    file,
                    f"{name} is bound twice (first on line {found[name].lineno}); bind it once",
                    stmt.lineno,
                )
            found[name] = stmt
    return found


def _read_literals(names: dict[str, ast.stmt], file: str) -> dict[str, Any]:
    """Read and check the module-level literals of a converter file."""
    for required in ("source", "target"):
        if required not in names:
            raise ConverterFileError(file, f'missing `{required} = "VERSION"`', 1)
    checks: dict[str, Callable[[object, str, str, int], Any]] = {
        "source": _version,
        "target": _version,
        "reversible": _bool,
        "lossy": _bool,
        "cost": _cost,
        "touches": _touches,
        "moved_modules": _name_map,
        "moved_globals": _name_map,
        "deleted_globals": _names,
        "read_as_dict": _names,
    }
    meta: dict[str, Any] = {}
    for name, check in checks.items():
        if name not in names:
            continue
        stmt = names[name]
        if not isinstance(stmt, ast.Assign | ast.AnnAssign) or stmt.value is None:
            raise ConverterFileError(file, f"{name} must be a literal, not a function", stmt.lineno)
        meta[name] = check(_literal(stmt.value, name, file), name, file, stmt.lineno)
    return meta


_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_*][A-Za-z0-9_*]*)*")


def _name_map(value: object, name: str, file: str, line: int) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _DOTTED.fullmatch(k) and _DOTTED.fullmatch(v)
        for k, v in value.items()
    ):
        raise ConverterFileError(file, f'{name} must map dotted names to dotted names ({{"old.mod": "new.mod"}})', line)
    return dict(value)


def _names(value: object, name: str, file: str, line: int) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and _DOTTED.fullmatch(v) for v in value):
        raise ConverterFileError(file, f"{name} must be a list of dotted names (globs allowed)", line)
    return tuple(value)


def _check_code(names: dict[str, ast.stmt], file: str, *, reversible: bool, moves: bool = False) -> bool:
    """Check that the file defines convert or ops (not both); return True for ops.

    A file that only declares moved globals needs neither: its step leaves the state dict alone.
    """
    has_convert, has_ops = "convert" in names, "ops" in names
    if has_convert and has_ops:
        raise ConverterFileError(file, "define either convert or ops, not both", names["ops"].lineno)
    if not has_convert and not has_ops and not moves:
        raise ConverterFileError(file, "defines neither `def convert(ckpt)` nor `ops = [...]`", 1)
    if reversible and not has_ops:
        raise ConverterFileError(
            file,
            "reversible = True needs ops (a convert function has no automatic inverse)",
            names["reversible"].lineno,
        )
    return has_ops


def read_converter_file(path: Path, *, display: str | None = None) -> Converter:
    """Read one converter file's metadata from its syntax tree, without importing it."""
    file = display or str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConverterFileError(file, f"cannot read: {exc.strerror}") from None
    try:
        tree = ast.parse(data, filename=file)
    except SyntaxError as exc:
        raise ConverterFileError(file, f"syntax error: {exc.msg}", exc.lineno) from None
    except ValueError as exc:  # e.g. null bytes
        raise ConverterFileError(file, f"not Python source: {exc}") from None
    names = _module_names(tree, file)
    meta = _read_literals(names, file)
    source, target = meta["source"], meta["target"]
    if source == target:
        raise ConverterFileError(file, f"source and target are both {source}", names["target"].lineno)
    moves = Moves(
        modules=meta.get("moved_modules", {}),
        globals=meta.get("moved_globals", {}),
        deleted=meta.get("deleted_globals", ()),
        as_dict=meta.get("read_as_dict", ()),
        declared_by=file,
    )
    has_ops = _check_code(names, file, reversible=meta.get("reversible", False), moves=bool(moves))
    ops = _read_ops(names["ops"], file) if has_ops else None
    if ops is not None and meta.get("reversible", False) and any(op.is_lossy() for op in ops):
        culprit = next(op for op in ops if op.is_lossy())
        raise ConverterFileError(
            file,
            f"reversible = True, but {type(culprit).__name__} is lossy, so the way back cannot restore "
            "what it threw away; drop reversible or write the inverse edge as its own file",
            names["reversible"].lineno,
        )
    if ops is not None and meta.get("reversible", False) and invert(ops) is None:
        culprit = next(op for op in ops if op.inverse() is None)
        raise ConverterFileError(
            file,
            f"reversible = True, but {type(culprit).__name__} has no inverse; drop reversible "
            "or write the inverse edge as its own file",
            names["reversible"].lineno,
        )
    lossy = meta.get("lossy", False) or (ops is not None and any(op.is_lossy() for op in ops))

    doc = ast.get_docstring(tree)
    description = doc.strip().splitlines()[0] if doc and doc.strip() else f"{source} -> {target}"
    return Converter(
        source=source,
        target=target,
        name=path.stem,
        description=description,
        file=file,
        lossy=lossy,
        cost=meta.get("cost", 1.0),
        touches=meta.get("touches", () if not has_ops and "convert" not in names else None),
        reversible=meta.get("reversible", False),
        code=_code(ops, with_convert="convert" in names, with_when="when" in names),
        digest=file_digest(data),
        moves=moves or None,
    )


def _code(ops: tuple[Op, ...] | None, *, with_convert: bool, with_when: bool) -> Code:
    if ops is not None:
        return OpsCode(ops, with_when=with_when)
    return FileCode(with_when=with_when) if with_convert else MovesCode(with_when=with_when)


def _op_argument(node: ast.expr, file: str) -> object:
    """Read a literal op argument; ``torch.float16`` becomes the dtype name ``"float16"``.

    Lists stay lists and tuples tuples (``SetMeta`` stores the value as written).
    """
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch":
        return node.attr
    if isinstance(node, ast.List):
        return [_op_argument(e, file) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_op_argument(e, file) for e in node.elts)
    return _literal(node, "an op argument", file)


def _read_ops(stmt: ast.stmt, file: str) -> tuple[Op, ...]:
    """Build the ops of ``ops = [...]`` from the syntax tree, without running the file."""
    if not isinstance(stmt, ast.Assign | ast.AnnAssign) or stmt.value is None:
        raise ConverterFileError(file, "ops must be a list of operations", stmt.lineno)
    if not isinstance(stmt.value, ast.List | ast.Tuple):
        raise ConverterFileError(
            file,
            "ops must be a literal list of op calls, e.g. [Rename(...), Drop(...)]",
            stmt.lineno,
        )
    ops: list[Op] = []
    for node in stmt.value.elts:
        func = node.func if isinstance(node, ast.Call) else None
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if not isinstance(node, ast.Call) or name not in OPS:
            known = ", ".join(OPS)
            raise ConverterFileError(file, f"each op must be a call of one of {known}", node.lineno)
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise ConverterFileError(file, f"{name}: no *args or **kwargs in ops", node.lineno)
        args = [_op_argument(a, file) for a in node.args]
        kwargs = {str(k.arg): _op_argument(k.value, file) for k in node.keywords}
        make: Callable[..., Op] = OPS[name]
        try:
            ops.append(make(*args, **kwargs))
        except (OpError, TypeError) as exc:
            raise ConverterFileError(file, f"{name}: {exc}", node.lineno) from None
    if not ops:
        raise ConverterFileError(file, "ops is empty", stmt.lineno)
    return tuple(ops)


def converter_files(directory: Path) -> list[Path]:
    """List the converter files of a directory: ``*.py`` not starting with ``_``, sorted.

    A link among them that leads nowhere is a :class:`ConverterFileError` naming it, not a
    converter silently missing from the graph.
    """
    found = sorted(p for p in directory.iterdir() if p.suffix == ".py" and not p.name.startswith("_"))
    for path in found:
        if path.is_symlink() and not path.exists():
            raise ConverterFileError(
                display_path(path),
                f"a symbolic link to {path.readlink()}, which does not exist; fix the link or remove it",
            )
    return [p for p in found if p.is_file()]


def read_converters(directory: str | Path) -> list[Converter]:
    """Read every converter file of ``directory`` (see :func:`read_converter_file`)."""
    root = Path(directory)
    if not root.is_dir():
        raise ConverterFileError(str(root), "converters directory not found")
    return [read_converter_file(p, display=display_path(p)) for p in converter_files(root)]


def display_path(path: Path) -> str:
    """Show a path relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
