"""Key templates: compile ``{name}``, ``{*name}`` and ``{i+1}``, match keys to bindings, fill bindings into keys.

Every op that names keys goes through here; glob patterns (``*``) are matched here too, for the
ops that take them. The syntax is described in the package docstring (:mod:`ckpt_path.ops`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

from ckpt_path.errors import OpError

_PLACEHOLDER = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?:([+-])([0-9]+))?\}")
_SEGMENT = r"[^.]+"
_INDEX = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True, slots=True)
class _Slot:
    """One placeholder of a template."""

    name: str
    star: bool = False
    offset: int | None = None
    """``{i+1}``: 1, ``{i-1}``: -1; None for a plain or star placeholder."""
    lead_dot: bool = False
    """A star placeholder at the end owns the dot before it (``a.{*p}`` matches ``a``)."""
    trail_dot: bool = False
    """A star placeholder owns the dot after it (``{*p}.x`` matches ``x``)."""

    def __str__(self) -> str:
        if self.offset is not None:
            return f"{{{self.name}{self.offset:+d}}}"
        return f"{{*{self.name}}}" if self.star else f"{{{self.name}}}"


@dataclass(frozen=True, slots=True)
class _Template:
    """A compiled key template: match keys to bindings, fill bindings into keys."""

    text: str
    parts: tuple[str | _Slot, ...]
    regex: re.Pattern[str]
    slots: tuple[_Slot, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Every placeholder name, in order of first appearance."""
        return tuple(dict.fromkeys(s.name for s in self.slots))

    def match(self, key: str) -> dict[str, str] | None:
        """Return the binding of ``key``, or None when it does not match."""
        found = self.regex.fullmatch(key)
        if found is None:
            return None
        binding: dict[str, str] = {}
        for index, slot in enumerate(self.slots):
            raw = found.group(f"g{index}") or ""
            if slot.offset is not None:
                number = int(raw) - slot.offset
                if number < 0:
                    return None
                raw = str(number)
            if binding.setdefault(slot.name, raw) != raw:
                return None
        return binding

    def fill(self, binding: Mapping[str, str]) -> str:
        """Return the key this template names under ``binding``."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            if part.name not in binding:
                raise OpError(f"template {self.text!r} uses {{{part.name}}}, which the source does not bind")
            value = binding[part.name]
            if part.offset is not None:
                if not _INDEX.fullmatch(value):
                    raise OpError(
                        f"template {self.text!r}: {{{part.name}}} is {value!r}, not a number, so {part} fails"
                    )
                number = int(value) + part.offset
                if number < 0:
                    raise OpError(f"template {self.text!r}: {{{part.name}}} is {value}, so {part} would be {number}")
                out.append(str(number))
            elif part.star:
                if value:
                    out.append(("." if part.lead_dot else "") + value + ("." if part.trail_dot else ""))
            elif not value:
                raise OpError(f"template {self.text!r}: {{{part.name}}} is empty here (bound by a {{*{part.name}}})")
            else:
                out.append(value)
        return "".join(out)


def _parse(text: str) -> list[str | _Slot]:
    parts: list[str | _Slot] = []
    position = 0
    for found in _PLACEHOLDER.finditer(text):
        if found.start() > position:
            parts.append(text[position : found.start()])
        star, name, sign, number = found.groups()
        if star and sign:
            raise OpError(f"template {text!r}: {{*{name}}} spans segments and cannot compute ({found.group()})")
        offset = None if sign is None else (int(number) if sign == "+" else -int(number))
        parts.append(_Slot(name, star=bool(star), offset=offset))
        position = found.end()
    if position < len(text):
        parts.append(text[position:])
    for part in parts:
        if isinstance(part, str) and ("{" in part or "}" in part):
            raise OpError(
                f"template {text!r}: a brace must open a placeholder such as {{name}}, {{*prefix}} or {{i+1}}",
            )
    return parts


def _own_dots(text: str, parts: list[str | _Slot]) -> list[str | _Slot]:
    """Let each star placeholder own one dot next to it, so it may match no segment at all."""
    for index, part in enumerate(parts):
        if not isinstance(part, _Slot) or not part.star:
            continue
        before = parts[index - 1] if index > 0 else None
        after = parts[index + 1] if index + 1 < len(parts) else None
        whole = "{*name} must span whole segments, between dots"
        if isinstance(before, _Slot) or isinstance(after, _Slot):
            raise OpError(f"template {text!r}: {part} touches another placeholder; {whole}")
        if (before is not None and not before.endswith(".")) or (after is not None and not after.startswith(".")):
            raise OpError(f"template {text!r}: {whole}")
        if after is not None:
            parts[index] = _Slot(part.name, star=True, trail_dot=True)
            parts[index + 1] = after[1:]
        elif before is not None:
            parts[index] = _Slot(part.name, star=True, lead_dot=True)
            parts[index - 1] = before[:-1]
    return [p for p in parts if p != ""]


@cache
def _compile(text: str) -> _Template:
    """Compile a key template (see the module docstring); raise OpError when it is malformed."""
    parts = _own_dots(text, _parse(text))
    regex = ""
    slots: list[_Slot] = []
    for part in parts:
        if isinstance(part, str):
            regex += re.escape(part)
            continue
        group = f"g{len(slots)}"
        slots.append(part)
        if part.star:
            body = f"(?P<{group}>{_SEGMENT}(?:\\.{_SEGMENT})*)"
            regex += f"(?:{body}\\.)?" if part.trail_dot else f"(?:\\.{body})?" if part.lead_dot else body
        elif part.offset is not None:
            regex += f"(?P<{group}>{_INDEX.pattern})"
        else:
            regex += f"(?P<{group}>{_SEGMENT})"
    return _Template(text, tuple(parts), re.compile(regex), tuple(slots))


def _check_template(text: str, op: str) -> _Template:
    if not isinstance(text, str):
        raise OpError(f"{op}: a key template must be a string, got {text!r}")
    try:
        return _compile(text)
    except OpError as exc:
        raise OpError(f"{op}: {exc}") from None


def _fill(template: str, binding: Mapping[str, str]) -> str:
    return _compile(template).fill(binding)


def _is_glob(template: str) -> bool:
    return "{" not in template and any(c in template for c in "*?[")


def _no_glob(template: str, op: str) -> None:
    if _is_glob(template):
        raise OpError(f"{op} takes key templates ({{name}} for a segment), not glob patterns: {template!r}")
    _check_template(template, op)


def _check_key(template: str, op: str) -> None:
    """Check a key that may be a template or a glob pattern."""
    if not _is_glob(template):
        _check_template(template, op)


def _matches(template: str, keys: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
    """Every key matching ``template`` (sorted), with its placeholder binding."""
    if _is_glob(template):
        return [(k, {}) for k in sorted(keys) if fnmatch.fnmatchcase(k, template)]
    compiled = _compile(template)
    found = []
    for key in sorted(keys):
        binding = compiled.match(key)
        if binding is not None:
            found.append((key, binding))
    return found


def _require(template: str, keys: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
    found = _matches(template, keys)
    if not found:
        raise OpError(f"no key matches {template!r}")
    return found


def _index_name(source: str, target: str, op: str) -> str:
    """Return the one placeholder ``source`` binds that ``target`` does not: the index Stack runs over."""
    src, tgt = _check_template(source, op), _check_template(target, op)
    extra = [n for n in src.names if n not in tgt.names]
    if len(extra) != 1:
        raise OpError(
            f"{op}: {source!r} must have exactly one placeholder that {target!r} lacks (the index), "
            f"found {len(extra)}: {', '.join('{' + n + '}' for n in extra) or 'none'}",
        )
    if any(s.star for s in src.slots if s.name == extra[0]):
        raise OpError(f"{op}: the index {{*{extra[0]}}} must be one segment, {{{extra[0]}}}")
    missing = [n for n in tgt.names if n not in src.names]
    if missing:
        raise OpError(f"{op}: {target!r} uses {{{missing[0]}}}, which {source!r} does not bind")
    return extra[0]


def keys_matching(template: str, keys: Sequence[str]) -> list[str]:
    """Return the keys a key template (or glob pattern) matches, sorted."""
    return [key for key, _ in _matches(template, keys)]
