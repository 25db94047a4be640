"""Run folders that never lose work: one run per folder, a lock held by the writing process, and
the leftovers of interrupted writes cleaned up.

- :class:`RunLock` — an exclusive ``flock`` on ``RUN_DIR/.lock``, held while a process writes the
  folder. The kernel releases it when the process dies (``kill -9`` included), so a crash never
  leaves a stale lock; a second writer fails at once with a message naming the holder.
- :func:`claim` — what ``fusion run`` does before writing: a folder that already holds
  checkpoints belongs to another run (use ``fusion resume`` or another ``run_dir``); with
  ``overwrite`` the whole run is moved aside into ``RUN_DIR/previous-<time>/`` — a complete run
  folder that ``fusion resume`` and ``fusion sample`` still read — never deleted.
- :func:`start_fresh` — a run that (re)starts from step 0 in a folder with history (every
  checkpoint failed verification, or a crash before the first checkpoint) moves that history
  aside the same way, so old and new checkpoints and metrics never mix.
- :func:`clean_leftovers` — the temporaries of writes a kill interrupted, and nothing else: only
  names :func:`fusion_core.storage.is_ours` recognises are deleted.
- :func:`refuse_links` — a run folder holds no symbolic link where fusion-core writes: a planted
  ``.lock``, ``train.log`` or ``checkpoints`` link is refused in one line, never written through.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
from datetime import datetime
from pathlib import Path

from ..storage import is_ours, refuse_link, remove_ours

log = logging.getLogger("fusion_core")

LOCK_NAME = ".lock"
HISTORY = ("checkpoints", "metrics.jsonl", "model", "train_time.json")  # train.log stays: it is a log


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (in use, or holding another run)."""


_HELD: set[int] = set()  # descriptors of the locks this process holds


def _close_inherited() -> None:
    """In a forked child (a data-loading worker): drop the copies of the parent's lock
    descriptors, so the lock dies with the process that took it, not with its last child."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):  # already closed in this child
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited)


class RunLock:
    """An exclusive lock on a run folder for the life of this process (or until :meth:`release`).
    Children the process forks (data-loading workers) do not keep it alive.

    Raises:
        RunFolderError: another live process holds it (the message names its pid, host, command
            and start time).
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd = None
        if Path(run_dir).is_symlink() and not Path(run_dir).exists():
            raise RunFolderError(f"{run_dir} is a symbolic link to nothing; give an existing or new folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        refuse_links(self.path.parent)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            self._fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:  # planted between the check and the open
                refuse_link(self.path, "the run's lock file")
            raise
        try:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no flock (Windows): no protection, but say so
            log.warning("no file locking on this platform: nothing stops two runs writing %s", self.path.parent)
        except OSError:
            holder = os.pread(self._fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            self._fd = None
            raise RunFolderError(f"{self.path.parent} is in use by {holder}; wait for it to finish, or use "
                                 "another run_dir") from None
        info = (f"pid {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv[:4])}, "
                f"since {datetime.now():%Y-%m-%d %H:%M:%S})")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, info.encode(), 0)
        _HELD.add(self._fd)

    def release(self) -> None:
        if self._fd is not None:
            _HELD.discard(self._fd)
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def has_history(run_dir: Path) -> bool:
    """Whether a folder holds another run's training history (checkpoints or metrics)."""
    ck = Path(run_dir) / "checkpoints"
    return (ck.is_dir() and any(p.name.startswith("step_") for p in ck.iterdir())) or \
        (Path(run_dir) / "metrics.jsonl").is_file()


def move_aside(run_dir: Path, reason: str, whole: bool = False) -> Path | None:
    """Move the folder's training history (``whole``: everything but its lock and earlier
    ``previous-*`` folders, so the moved run stays a complete run folder) into
    ``run_dir/previous-<time>/``; returns it."""
    run_dir = Path(run_dir)
    if whole:
        present = [p for p in run_dir.iterdir() if p.name != LOCK_NAME and not p.name.startswith("previous-")]
    else:
        present = [run_dir / n for n in HISTORY if (run_dir / n).exists() or (run_dir / n).is_symlink()]
    if not present:
        return None
    aside = run_dir / f"previous-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    aside.mkdir()
    for p in present:
        os.replace(p, aside / p.name)
    log.warning("%s: %s; the earlier %s is kept in %s", run_dir, reason, "run" if whole else "history", aside)
    return aside


def refuse_links(run_dir: Path) -> None:
    """Refuse a run folder that holds a symbolic link where fusion-core writes (its top level,
    ``checkpoints/`` and ``model/``): the library never writes through a link it did not create.

    Raises:
        LinkRefused: names the first link found.
    """
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "model"):
        if folder != run_dir and folder.is_symlink():
            refuse_link(folder, "inside a run folder")
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.is_symlink():
                refuse_link(p, "inside a run folder")


def claim(run_dir: Path, overwrite: bool = False) -> None:
    """Before ``fusion run`` writes a folder: refuse one that holds another run's checkpoints
    (``overwrite`` moves them aside instead).

    Raises:
        RunFolderError: the folder holds checkpoints and ``overwrite`` is off.
    """
    if not has_history(run_dir):
        return
    if not overwrite:
        raise RunFolderError(f"{run_dir} already holds a run (checkpoints or metrics): continue it with "
                             f"`fusion resume {run_dir}`, choose another run_dir, or pass --overwrite "
                             "(the old run is moved aside, not deleted)")
    move_aside(run_dir, "--overwrite: a new run starts here", whole=True)


def start_fresh(run_dir: Path) -> None:
    """A run restarting from step 0 in a folder with history: move the history aside."""
    if has_history(run_dir):
        move_aside(run_dir, "no usable checkpoint, training starts again from step 0")


def clean_leftovers(run_dir: Path) -> list[Path]:
    """Remove what interrupted writes leave — the temporaries fusion-core names (``.fusion-tmp-*``,
    ``.fusion-old-*`` and the names earlier releases used), and nothing else; returns what went.

    Raises:
        LinkRefused: a symbolic link carries such a name (the library never creates links).
    """
    gone = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for p in folder.iterdir():
            if p.name == LOCK_NAME or not is_ours(p.name):
                continue
            refuse_link(p, "named like a temporary of an interrupted write")
            remove_ours(p)
            gone.append(p)
    if gone:
        log.info("removed %d leftovers of interrupted writes in %s", len(gone), run_dir)
    return gone
