"""Tensors that read their data only when a value is needed, and defer what steps compute from them.

A distributed checkpoint is loaded as :class:`LazyTensor` objects: a shape and a dtype, and where
the data lies. Steps see them as tensors (``shape``, ``dtype``, ``numel()``; renames move the
objects, so nothing is read). An operation on one is *deferred*: its result's shape and dtype
come from running it on meta tensors, and the result is another lazy tensor that remembers the
operation. Only a writer asks for values (:func:`evaluate`), one output tensor at a time, so a
step that casts every tensor reads each input tensor once, when its output is written, and
never holds more than one of them; and each process of a distributed conversion computes only
the output tensors it writes.

What cannot be deferred runs at once on real values, with the same result as on plain tensors:

- an operation whose result is not a tensor (``item()``, ``torch.equal``) or whose shape depends
  on the data (``nonzero``), or one that draws random numbers;
- an in-place operation: first every deferred tensor that reads the storage it writes is
  computed and kept, so it sees the values from before the write, then the written storage is
  read and kept, and the operation runs on it (later views see the new values).

A plain tensor handed to a deferred operation must not change afterwards; if it did, computing
the deferred result fails with an error (its ``_version`` counter says so) rather than giving
other values than the step meant.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch.utils import _pytree as pytree

from ckpt_path.errors import LazyTensorError

__all__ = ["LazyTensor", "Source", "eager", "evaluate", "is_lazy", "stored"]


class Source(Protocol):
    """Where stored tensors come from: :meth:`read` returns one tensor's values, by key."""

    def read(self, key: str) -> torch.Tensor:
        """Return the tensor stored under ``key`` (read now, owned by the caller)."""
        ...


@dataclass(frozen=True, slots=True)
class Stored:
    """A tensor as the input holds it: ``key`` of ``source``."""

    source: Source
    key: str


@dataclass(frozen=True, slots=True)
class Deferred:
    """The ``index``-th tensor output of ``func(*args, **kwargs)``, not computed yet.

    ``reads`` holds the ids of every lazy tensor it depends on; ``versions`` the ``_version``
    of each plain tensor argument when the operation was recorded.
    """

    func: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    index: int
    view: bool
    reads: frozenset[int]
    versions: tuple[tuple[torch.Tensor, int], ...]


@dataclass(frozen=True, slots=True)
class Real:
    """A lazy tensor whose values were computed and kept (an in-place operation needed them)."""

    tensor: torch.Tensor


Node = Stored | Deferred | Real

_EAGER: contextvars.ContextVar[bool] = contextvars.ContextVar("ckpt_path_lazy_eager", default=False)
_LIVE: weakref.WeakSet[LazyTensor] = weakref.WeakSet()
_ORDER = itertools.count()
_SCALAR_OPS = frozenset({"aten::_local_scalar_dense", "aten::equal", "aten::is_nonzero", "aten::allclose"})


class LazyTensor(torch.Tensor):
    """A tensor whose values are read or computed only when needed (see the module's docstring)."""

    _node: Node
    _order: int
    __torch_function__: ClassVar[Any] = torch._C._disabled_torch_function_impl  # noqa: SLF001

    @staticmethod
    def __new__(cls: type[LazyTensor], meta: torch.Tensor, node: Node) -> LazyTensor:  # noqa: PYI034
        """Make a lazy tensor of ``meta``'s shape, strides and dtype (on the CPU) that is ``node``."""
        made: LazyTensor = torch.Tensor._make_wrapper_subclass(  # noqa: SLF001
            cls,
            meta.shape,
            strides=meta.stride(),
            storage_offset=meta.storage_offset(),
            dtype=meta.dtype,
            device=torch.device("cpu"),
            requires_grad=False,
        )
        made._node = node
        made._order = next(_ORDER)
        _LIVE.add(made)
        return made

    def __init__(self, meta: torch.Tensor, node: Node) -> None:  # noqa: ARG002 - __new__ takes them
        super().__init__()

    def __repr__(self, *, tensor_contents: object = None) -> str:  # type: ignore[override]
        node = self._node
        where = f"{node.key!r}" if isinstance(node, Stored) else "computed" if isinstance(node, Real) else "deferred"
        return f"LazyTensor({list(self.shape)}, {self.dtype}, {where})"

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Pickle (``torch.save``, ``copy.deepcopy``) the values, as a plain tensor."""
        return evaluate(self).__reduce_ex__(protocol)

    def __deepcopy__(self, memo: dict[int, Any]) -> torch.Tensor:
        return evaluate(self).clone()  # type: ignore[no-any-return]

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Defer ``func``, or run it now on real values (see the module's docstring)."""
        kwargs = kwargs or {}
        schema = func._schema  # noqa: SLF001
        if schema.is_mutable and not _EAGER.get():
            _before_write(args, kwargs)
            return func(*_map(_materialize, args), **_map(_materialize, kwargs))
        now = _EAGER.get() or schema.name in _SCALAR_OPS or torch.Tag.nondeterministic_seeded in func.tags
        out = None if now else _on_meta(func, args, kwargs)
        if out is None:
            return func(*_map(evaluate, args), **_map(evaluate, kwargs))
        leaves, spec = pytree.tree_flatten(out)
        if all(leaf.device.type == "meta" for leaf in leaves) and _wants_meta(args, kwargs):
            return out  # ``.to("meta")``: the shapes are all that was asked for
        reads = frozenset(itertools.chain.from_iterable(_reads(a) for a in _lazy_in(args, kwargs)))
        versions = tuple(
            (t, t._version)  # noqa: SLF001
            for t in pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor) and not isinstance(t, LazyTensor)
        )
        view = bool(func.is_view)
        wrapped = [
            LazyTensor(leaf, Deferred(func, args, kwargs, index, view, reads, versions))
            for index, leaf in enumerate(leaves)
        ]
        return pytree.tree_unflatten(wrapped, spec)


def _on_meta(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``func`` on meta tensors; None when it cannot be deferred (no meta kernel, data-dependent, not tensors)."""
    try:
        out = func(*_map(_meta, args), **_map(_meta, kwargs))
    except Exception:  # noqa: BLE001 - no meta kernel, or a shape that depends on the data
        return None
    leaves = pytree.tree_leaves(out)
    if not leaves or not all(isinstance(leaf, torch.Tensor) for leaf in leaves):
        return None
    return out


def stored(source: Source, key: str, shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> LazyTensor:
    """Return a lazy tensor of ``shape`` and ``dtype`` whose values are ``source.read(key)``."""
    return LazyTensor(torch.empty(shape, dtype=dtype, device="meta"), Stored(source, key))


def is_lazy(value: object) -> bool:
    """Whether ``value`` is a :class:`LazyTensor`."""
    return isinstance(value, LazyTensor)


def node_of(tensor: LazyTensor) -> Node:
    """Return what a lazy tensor is: stored in the input, deferred, or computed and kept."""
    return tensor._node  # noqa: SLF001


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Within the block every operation on a lazy tensor runs at once and returns plain tensors."""
    token = _EAGER.set(True)
    try:
        yield
    finally:
        _EAGER.reset(token)


def evaluate(value: Any) -> Any:
    """Return the values of a lazy tensor as a plain tensor (read or computed now; not kept)."""
    if not isinstance(value, LazyTensor):
        return value
    node = value._node  # noqa: SLF001
    if isinstance(node, Real):
        return node.tensor
    if isinstance(node, Stored):
        tensor = node.source.read(node.key)
        if tensor.shape != value.shape or tensor.dtype != value.dtype:
            raise LazyTensorError(
                node.key,
                f"the data holds {list(tensor.shape)} {tensor.dtype}, "
                f"but the metadata says {list(value.shape)} {value.dtype}",
            )
        return tensor
    return _compute(node, evaluate)


def _compute(node: Deferred, get: Callable[[Any], Any]) -> torch.Tensor:
    for tensor, version in node.versions:
        if tensor._version != version:  # noqa: SLF001
            raise LazyTensorError(
                None,
                f"a converter changed a tensor in place after using it in {node.func}; "
                "copy it (.clone()) before changing it",
            )
    with eager():
        out = node.func(*_map(get, node.args), **_map(get, node.kwargs))
    result: torch.Tensor = pytree.tree_leaves(out)[node.index]
    return result


def _materialize(value: Any) -> Any:
    """Compute a lazy tensor's values and keep them in it (its views then share them)."""
    if not isinstance(value, LazyTensor):
        return value
    node = value._node  # noqa: SLF001
    if isinstance(node, Real):
        return node.tensor
    tensor = evaluate(value) if isinstance(node, Stored) else _compute(node, _materialize)
    value._node = Real(tensor)  # noqa: SLF001
    return tensor


def _storage_roots(value: LazyTensor) -> set[int]:
    """Return the lazy tensors whose storage ``value`` shares (itself, or the bases of a view)."""
    node = value._node  # noqa: SLF001
    if isinstance(node, Deferred) and node.view:
        roots: set[int] = set()
        for arg in pytree.tree_leaves((node.args, node.kwargs)):
            if isinstance(arg, LazyTensor):
                roots |= _storage_roots(arg)
        return roots
    return {id(value)}


def _before_write(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Before an in-place operation: compute and keep whatever reads the storage it may write."""
    roots: set[int] = set()
    for arg in _lazy_in(args, kwargs):
        roots |= _storage_roots(arg)
    if not roots:
        return
    live = sorted(_LIVE, key=lambda t: t._order)  # noqa: SLF001
    for tensor in live:
        if id(tensor) in roots:
            _materialize(tensor)
    for tensor in live:
        node = tensor._node  # noqa: SLF001
        if isinstance(node, Deferred) and node.reads & roots:
            _materialize(tensor)


def _reads(value: LazyTensor) -> frozenset[int]:
    node = value._node  # noqa: SLF001
    own = frozenset({id(value)})
    return own | node.reads if isinstance(node, Deferred) else own


def _lazy_in(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[LazyTensor]:
    return [leaf for leaf in pytree.tree_leaves((args, kwargs)) if isinstance(leaf, LazyTensor)]


def _meta(value: Any) -> Any:
    if isinstance(value, LazyTensor):
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
    return value


def _wants_meta(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    device = kwargs.get("device")
    if device is None:
        device = next((a for a in args if isinstance(a, torch.device | str)), None)
    try:
        return device is not None and torch.device(device).type == "meta"
    except (RuntimeError, TypeError):
        return False


def _map(function: Callable[[Any], Any], tree: Any) -> Any:
    return pytree.tree_map(function, tree)
