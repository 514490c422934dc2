"""Import the code of converter files, each directory with its own helper modules.

A converters directory may hold helpers (``_helpers.py``, ``_common/``) that its converter
files import with a plain ``import _helpers``. Putting the directory on ``sys.path`` would
make that import global: the first ``_helpers`` imported would stay in ``sys.modules`` for
the whole process, and a second converters directory with its own ``_helpers.py`` would run
with the first one's. So, as Alembic gives each migration script a module id of its own:

* every resolved converters directory gets a synthetic package,
  ``ckpt_path_converters_<short sha256 of the directory>``, whose ``__path__`` is the
  directory. Nothing is executed for the package itself (an ``__init__.py`` is ignored).
* a converter file is executed as a submodule of that package (``<package>.<file stem>``),
  from the bytes whose digest the graph was built from, so a file edited after the graph
  was read is refused instead of half-trusted. Modules are cached by (resolved file,
  digest).
* a helper is imported as a submodule of the same package (``<package>._helpers``), once
  per process and directory, so two directories never share a helper.
* while a converter file executes (and only then), a finder at the front of
  ``sys.meta_path`` resolves a plain ``import _helpers`` (or ``import _common.sub``) to that
  directory's submodule and aliases it under the plain name; afterwards ``sys.modules`` is
  put back as it was, so no alias outlives the import. Whatever ``sys.modules`` held under
  the name of one of the directory's helpers (``_``-names, as the README says: another
  directory's helper, a test suite's own ``_helpers``) is hidden meanwhile, so the
  directory's own helper wins. Other modules of the directory keep the ``sys.path``
  semantics of old: found there only when nothing of that name is imported yet. Names of
  the standard library are never taken from the directory. A helper importing another
  helper at its top level goes through the same finder.

An import that runs later, inside a function, sees no alias: write ``from . import _helpers``
there, which the synthetic package resolves at any time.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from ckpt_path.converters import Converter, file_digest
from ckpt_path.errors import StepError

__all__ = ["describe_exception", "directory_package", "load_converter_code"]

PACKAGE_PREFIX = "ckpt_path_converters_"
"""Prefix of the synthetic package of each converters directory."""

_modules: dict[tuple[str, str], ModuleType] = {}
"""Converter modules by (resolved file, digest)."""

_lock = threading.RLock()
"""Serialises executing converter files: the aliases live in the process-wide ``sys.modules``."""


def directory_package(directory: Path) -> ModuleType:
    """Return the synthetic package of a converters directory, creating it on first use."""
    resolved = directory.resolve()
    name = PACKAGE_PREFIX + hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    package = sys.modules.get(name)
    if package is None:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(resolved)]
        package = importlib.util.module_from_spec(spec)
        package.__doc__ = f"Converter files and helpers of {resolved} (made by ckpt-path)."
        sys.modules[name] = package
    return package


def _provided(directory: Path) -> frozenset[str]:
    """Top-level module names the directory provides: ``name.py`` and ``name/__init__.py``.

    A name of the standard library is left out: ``import copy`` never means a file of the
    directory, so the modules that torch and the standard library import stay theirs.
    """
    names = set()
    for entry in directory.iterdir():
        if entry.suffix == ".py" and entry.is_file():
            names.add(entry.stem)
        elif (entry / "__init__.py").is_file():
            names.add(entry.name)
    return frozenset(
        n for n in names if n.isidentifier() and not n.startswith("__") and n not in sys.stdlib_module_names
    )


class _Alias(importlib.abc.Loader):
    """Hand out an already imported module under another name, leaving its spec alone."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.spec = module.__spec__

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:  # noqa: ARG002
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec  # the import system set the alias's spec; restore the module's own


class _DirectoryFinder(importlib.abc.MetaPathFinder):
    """Resolve plain imports of a directory's modules to its synthetic package's submodules."""

    def __init__(self, package: ModuleType, provided: frozenset[str]) -> None:
        self.package = package
        self.provided = provided

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,  # noqa: ARG002
        target: ModuleType | None = None,  # noqa: ARG002
    ) -> importlib.machinery.ModuleSpec | None:
        top = fullname.partition(".")[0]
        if top not in self.provided:
            return None
        if "." in fullname and getattr(sys.modules.get(top), "__name__", None) != f"{self.package.__name__}.{top}":
            return None  # a submodule of a package that is not this directory's
        module = importlib.import_module(f"{self.package.__name__}.{fullname}")
        return importlib.util.spec_from_loader(fullname, _Alias(module))


@contextmanager
def _own_helpers(directory: Path, package: ModuleType) -> Iterator[None]:
    """While the block runs, plain imports of the directory's modules give its own helpers."""
    provided = _provided(directory)
    saved = {k: v for k, v in sys.modules.items() if k.partition(".")[0] in provided}
    for key in saved:
        if key.startswith("_"):  # another directory's helper, or a helper of the same name from elsewhere
            del sys.modules[key]
    finder = _DirectoryFinder(package, provided)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for key in [k for k in sys.modules if k.partition(".")[0] in provided]:
            if key not in saved:
                del sys.modules[key]
        sys.modules.update(saved)


def _module_name(package: ModuleType, path: Path) -> str:
    """``<package>.<stem>``, the stem made a safe module name that never collides with a helper."""
    stem = re.sub(r"\W", "_", path.stem)
    return f"{package.__name__}.{stem if stem[:1].isalnum() else 'converter' + stem}"


def load_converter_code(converter: Converter) -> ModuleType:
    """Import a converter file (once per file content) and return its module.

    The file is read once; its digest must still be the one the graph was built from, so a
    file edited between planning and running is refused rather than half-trusted.
    """
    source, target = str(converter.source), str(converter.target)
    if converter.file is None:
        raise StepError(source, target, converter.origin, "has no code")
    directory = Path(converter.file).parent.resolve()
    path = directory / Path(converter.file).name
    key = (str(path), converter.digest)
    with _lock:
        if key in _modules:
            return _modules[key]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StepError(source, target, converter.file, str(exc)) from None
        if file_digest(data) != converter.digest:
            raise StepError(
                source, target, converter.file, "the file changed after the graph was read; run the command again"
            )
        package = directory_package(directory)
        spec = importlib.util.spec_from_file_location(_module_name(package, path), path)
        if spec is None:  # pragma: no cover - a .py file always has a spec
            raise StepError(source, target, converter.file, "cannot be imported")
        module = importlib.util.module_from_spec(spec)
        previous = sys.modules.get(spec.name)
        sys.modules[spec.name] = module  # as an import does: dataclasses and pickle look it up
        try:
            with _own_helpers(directory, package):
                exec(compile(data, str(path), "exec"), module.__dict__)  # noqa: S102 - the user's own converter
        except (Exception, SystemExit) as exc:  # sys.exit() at import fails the step like any other error
            if previous is None:
                sys.modules.pop(spec.name, None)
            else:
                sys.modules[spec.name] = previous
            reason = f"importing the converter failed: {describe_exception(exc, converter.file)}"
            raise StepError(source, target, converter.file, reason) from exc
        _modules[key] = module
        return module


def describe_exception(exc: BaseException, file: str | None) -> str:
    """``ValueError: message (at converters/x.py:12)``, pointing into the converter file."""
    line = None
    if file is not None:
        for frame in traceback.extract_tb(exc.__traceback__):
            if Path(frame.filename).resolve() == Path(file).resolve():
                line = frame.lineno
    where = f" (at {file}:{line})" if line is not None else ""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {message}{where}" if message else f"{type(exc).__name__}{where}"
