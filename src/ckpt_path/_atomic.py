"""Writes placed all at once: files, and whole directories, written to temporaries beside their targets.

One job: the atomic-write transaction every writer uses.

**Files.** A :class:`Transaction` hands out temporary files, each in the directory of the file
it will become (``.NAME.ckpt-path-XXXXXXXX.tmp``), flushed and fsynced when closed. When the
``with`` block ends without an error the temporaries are placed in the order they were opened
(so the last one, a sharded layout's index, is the one switch a reader sees), the directories
are fsynced, and only then are the files queued with :meth:`Transaction.remove` removed. On
any error, Ctrl-C or SIGTERM every temporary is removed and no target is touched.

What it guarantees:

- Without ``force`` an existing target is never replaced (each is placed with ``link()``,
  which refuses to clobber). A *fresh* target (a new shard name) must not exist even with
  ``force``; if placing a later file fails, the fresh files already placed are removed again.
- A file in ``protect`` (the input) is never written or removed: the transaction refuses,
  before any data is written, comparing real paths and inodes, so links and ``..`` do not fool it.
- A target that is a symbolic link is written through: the file it points to is replaced and
  the link is kept. A target that exists and is not a regular file (a directory, ``/dev/null``)
  is never replaced. A replaced file keeps its permission bits; a new one gets what ``open()``
  would give it under the current umask.
- SIGTERM during a write is handled like Ctrl-C: the temporaries are removed, then the signal
  is delivered again so the process ends with the status SIGTERM gives. During placement both
  signals wait until every file is in place.
- Temporaries of this tool that a SIGKILL left beside a target (same name pattern, owned by
  this user) are removed after a commit. Each temporary holds an advisory lock (``flock``)
  while it is written, and the kernel drops it when its process dies, however it dies: a
  temporary nobody holds is stale at once; on a file system without ``flock`` one not
  modified for :data:`STALE_AFTER` seconds is.

**Directories.** A directory written whole (a distributed checkpoint, whose files several
processes write) is made by :func:`temporary_directory` beside its target, removed by
:func:`removed_on_failure` on any error, Ctrl-C or SIGTERM (the signal is then delivered
again), and put in place by :func:`place_directory`: fsynced, given the permission bits
``mkdir()`` would give it, and renamed with ``renameat2``. Without ``force`` it never replaces
what is there (``RENAME_NOREPLACE``); with ``force`` it is swapped with it atomically
(``RENAME_EXCHANGE``) and the old one is removed; where the kernel or libc lacks
``renameat2`` the old one is moved aside first. Every process writing it holds a shared lock
on it, so :func:`remove_stale_directories` leaves it alone while any of them lives.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_path.errors import InputOverwriteError, OutputExistsError, SaveError

if TYPE_CHECKING:
    from types import FrameType

    from typing_extensions import Self

__all__ = [
    "STALE_AFTER",
    "TEMP_MARK",
    "Transaction",
    "check_target",
    "place_directory",
    "remove_directory",
    "remove_stale_directories",
    "remove_stale_temporaries",
    "removed_on_failure",
    "temporary_directory",
    "temporary_pattern",
]

TEMP_MARK = ".ckpt-path-"
"""Between a target's name and mkstemp's random part: ``.out.ckpt.ckpt-path-a1b2c3d4.tmp``."""

STALE_AFTER = 600.0
"""Seconds a temporary must have gone unmodified before it counts as left by a killed run."""

_RANDOM = r"[a-z0-9_]{8}"
"""What ``tempfile.mkstemp`` puts between prefix and suffix."""


def temporary_pattern(names: str) -> re.Pattern[str]:
    """Return the regex of this tool's temporaries for targets whose names match the regex ``names``."""
    return re.compile(rf"\.(?:{names}){re.escape(TEMP_MARK)}{_RANDOM}\.tmp")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "it is a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "it is a device, not a regular file"
    if stat.S_ISFIFO(mode):
        return "it is a FIFO, not a regular file"
    if stat.S_ISSOCK(mode):
        return "it is a socket, not a regular file"
    return "it is not a regular file"


def check_target(path: Path) -> os.stat_result | None:
    """Return the status of the file a write to ``path`` would replace, or None when there is none.

    Refuses (:class:`SaveError`) anything but a regular file or a symbolic link to one.
    """
    try:
        status = path.stat()  # follows links: a link is written through
    except FileNotFoundError:
        return None  # nothing there, or a dangling link whose target will be created
    except OSError as exc:
        raise SaveError(str(path), exc.strerror or str(exc)) from None
    if not stat.S_ISREG(status.st_mode):
        raise SaveError(str(path), _kind(status.st_mode))
    return status


def _written_path(target: Path) -> Path:
    """Return the file that writing ``target`` replaces: the target, or where its link leads."""
    return Path(os.path.realpath(target)) if target.is_symlink() else target


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except (OSError, ValueError):
        return None
    return status.st_dev, status.st_ino


class _Protected:
    """Files that must never be written or removed, by real path and by inode."""

    def __init__(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        self._entries: list[tuple[str, str, tuple[int, int] | None]] = []
        for path in paths:
            self._entries.append((os.fspath(path), os.path.realpath(path), _inode(Path(path))))

    def find(self, path: Path) -> str | None:
        """Return the protected file that ``path`` is (or leads to), or None."""
        if not self._entries:
            return None
        real = os.path.realpath(path)
        inode = _inode(path)
        for shown, protected_real, protected_inode in self._entries:
            if real == protected_real or (inode is not None and inode == protected_inode):
                return shown
        return None


class _Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives during a write (of files or of a directory)."""


class Transaction:
    """Temporary files beside their targets: all placed on success, all removed otherwise.

    See the module's docstring for what it guarantees.
    """

    def __init__(self, *, force: bool, protect: Iterable[str | os.PathLike[str]] = ()) -> None:
        self.force = force
        self._protected = _Protected(protect)
        self._files: list[tuple[Path, Path, bool]] = []
        """(temporary, target, fresh) in the order they were opened."""
        self._removals: list[Path] = []
        self._stale: list[tuple[Path, str]] = []
        self._previous_term: Any = None
        self._terminated = False
        self._defer = False
        self._interrupted = False

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._previous_term = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self._defer = True  # from here on SIGTERM waits until the files are placed or removed
        try:
            if kind is None and not self._terminated:
                self._commit()
        finally:
            for tmp, _target, _fresh in self._files:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
            if self._previous_term is not None:
                signal.signal(signal.SIGTERM, self._previous_term)
                if self._terminated:
                    signal.raise_signal(signal.SIGTERM)  # ends the process as SIGTERM would have
        if self._interrupted:
            raise KeyboardInterrupt

    def _on_sigterm(self, _signum: int, _frame: FrameType | None) -> None:
        self._terminated = True
        if not self._defer:
            raise _Terminated

    def _on_sigint(self, _signum: int, _frame: FrameType | None) -> None:
        self._interrupted = True

    def guard(self, path: Path, action: str = "replace") -> None:
        """Refuse (:class:`InputOverwriteError`) when ``path`` is, or leads to, a protected file."""
        found = self._protected.find(path)
        if found is not None:
            raise InputOverwriteError(str(path), found, action)

    def remove(self, path: Path) -> None:
        """Remove ``path`` once every file is in place (refused now if it is protected)."""
        self.guard(path, "remove")
        self._removals.append(path)

    def clean_stale(self, directory: Path, names: str) -> None:
        """After the commit, remove old temporaries of this tool for targets in ``directory`` named like ``names``."""
        self._stale.append((directory, names))

    @contextlib.contextmanager
    def open(self, target: Path, *, fresh: bool = False) -> Iterator[Any]:
        """Open a temporary binary file that becomes ``target`` when the transaction commits.

        A ``fresh`` target must not exist when it is placed, even with ``force``.
        """
        self.guard(target)
        real = _written_path(target)
        if real != target:
            self.guard(real)
        existing = check_target(real)
        if existing is not None and (fresh or not self.force):
            raise OutputExistsError(str(target))
        # mkstemp makes the file private (0600): give it the replaced file's mode, or open()'s.
        mode = stat.S_IMODE(existing.st_mode) if existing is not None else 0o666 & ~_umask()
        fd, name = tempfile.mkstemp(prefix=f".{real.name}{TEMP_MARK}", suffix=".tmp", dir=real.parent)
        tmp = Path(name)
        self._files.append((tmp, real, fresh))
        with contextlib.suppress(OSError):  # held until this process closes it or dies
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())

    def _commit(self) -> None:
        previous_int = None
        if self._previous_term is not None and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous_int = signal.signal(signal.SIGINT, self._on_sigint)  # Ctrl-C waits for the placement
        try:
            self._place_all()
        finally:
            if previous_int is not None:
                signal.signal(signal.SIGINT, previous_int)

    def _place_all(self) -> None:
        if not self.force:
            for _tmp, target, _fresh in self._files:
                if target.exists():
                    raise OutputExistsError(str(target))
        self._place_or_undo()
        for directory in {target.parent for _tmp, target, _fresh in self._files}:
            _fsync_directory(directory)
        for path in self._removals:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        stale = [(target.parent, re.escape(target.name)) for _tmp, target, _fresh in self._files]
        for directory, names in [*stale, *self._stale]:
            remove_stale_temporaries(directory, names)

    def _place_or_undo(self) -> None:
        """Place every file in order; if one fails, remove the ones this placed by link()."""
        placed: list[Path] = []
        try:
            for tmp, target, fresh in self._files:
                _place(tmp, target, replace=self.force and not fresh)
                if fresh or not self.force:
                    placed.append(target)
        except BaseException:
            for target in placed:  # created by link() just now: nobody else's file
                with contextlib.suppress(OSError):
                    target.unlink()
            raise


_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}
"""What link() says on a file system that has no hard links."""


def _place(tmp: Path, target: Path, *, replace: bool) -> None:
    if replace:
        tmp.replace(target)
        return
    try:
        os.link(tmp, target)  # refuses to replace a file that appeared meanwhile
    except FileExistsError:
        raise OutputExistsError(str(target)) from None
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        if os.path.lexists(target):  # a file system without hard links: check, then rename
            raise OutputExistsError(str(target)) from None
        tmp.replace(target)


def remove_stale_temporaries(
    directory: Path, names: str, *, older_than: float = STALE_AFTER, directories: bool = False
) -> list[Path]:
    """Remove this tool's temporaries in ``directory`` for targets named like the regex ``names``.

    Only regular files owned by this user that no running process is writing: a writer holds
    an advisory lock on its temporary until it ends (the kernel drops it even after SIGKILL);
    where the file system has no such locks, only files not modified for ``older_than``
    seconds. A conversion still running never loses its file. With ``directories`` the
    temporaries are directories (a distributed checkpoint written whole), removed with their
    contents. Returns what was removed.
    """
    pattern = temporary_pattern(names)
    now = time.time()
    removed = []
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if not pattern.fullmatch(entry.name):
                continue
            with contextlib.suppress(OSError):
                status = entry.stat(follow_symlinks=False)
                kind = stat.S_ISDIR if directories else stat.S_ISREG
                if not kind(status.st_mode) or status.st_uid != os.getuid():
                    continue
                if _abandoned(Path(entry.path), old=now - status.st_mtime > older_than):
                    if directories:
                        shutil.rmtree(entry.path)
                    else:
                        Path(entry.path).unlink()
                    removed.append(Path(entry.path))
    return removed


def _abandoned(path: Path, *, old: bool) -> bool:
    """Whether no process holds the temporary's lock (or, without locks, it is old)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its writer is alive
    except OSError:
        return old  # no locks on this file system: fall back to age
    else:
        return True
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- whole directories ----------------------------------------------------------------------------


def temporary_directory(path: Path) -> Path:
    """Make the directory an output directory is written into, beside ``path`` (``.NAME.ckpt-path-XXXXXXXX.tmp``)."""
    return Path(tempfile.mkdtemp(prefix=f".{path.name}{TEMP_MARK}", suffix=".tmp", dir=path.parent))


def remove_directory(path: Path) -> None:
    """Remove a temporary output directory (never anything else)."""
    with contextlib.suppress(OSError):
        shutil.rmtree(path)


@contextlib.contextmanager
def removed_on_failure(temporary: Path) -> Iterator[None]:
    """Remove ``temporary`` on any error, Ctrl-C or SIGTERM (then SIGTERM is delivered again)."""
    previous: Any = None
    terminated = False

    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        nonlocal terminated
        terminated = True
        raise _Terminated

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    lock = os.open(temporary, os.O_RDONLY | os.O_DIRECTORY)
    with contextlib.suppress(OSError):  # shared by every process writing it; the kernel drops it when they die
        fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    try:
        yield
    except BaseException:
        remove_directory(temporary)
        if terminated:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
        raise
    finally:
        os.close(lock)
        if previous is not None and not terminated:
            signal.signal(signal.SIGTERM, previous)


def place_directory(temporary: Path, path: Path, *, force: bool) -> None:
    """Put the written directory at ``path``: a rename, or an atomic swap with what is there (``force``).

    ``temporary`` is fsynced first and given the permission bits ``mkdir`` would give it
    (``mkdtemp`` made it private).
    """
    _fsync_directory(temporary)
    temporary.chmod(0o777 & ~_umask())
    if not os.path.lexists(path):
        if _renameat2(temporary, path, _RENAME_NOREPLACE) is False:
            if os.path.lexists(path):
                raise OutputExistsError(str(path))
            temporary.rename(path)
        _fsync_directory(path.parent)
        return
    if not force:
        raise OutputExistsError(str(path))
    if _renameat2(temporary, path, _RENAME_EXCHANGE) is not False:
        _fsync_directory(path.parent)
        remove_directory(temporary)  # it now holds what was at ``path``
        return
    aside = temporary_directory(path)
    aside.rmdir()
    path.rename(aside)
    try:
        temporary.rename(path)
    except BaseException:
        aside.rename(path)
        raise
    _fsync_directory(path.parent)
    remove_directory(aside)


_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(source: Path, target: Path, flags: int) -> bool | None:
    """``renameat2(2)``; False where the kernel or libc lacks it, so the caller falls back."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return False
    at_fdcwd = -100
    result = function(at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(target), flags)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}:
        return False
    if code == errno.EEXIST:
        raise OutputExistsError(str(target))
    raise OSError(code, os.strerror(code), str(target))


def remove_stale_directories(path: Path, *, older_than: float = STALE_AFTER) -> None:
    """Remove temporary directories for ``path`` that a killed run left (see :func:`remove_stale_temporaries`)."""
    remove_stale_temporaries(path.parent, re.escape(path.name), older_than=older_than, directories=True)
