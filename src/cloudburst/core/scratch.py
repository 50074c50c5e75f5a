"""Scratch folders: the temporary folders of clients and workers on a machine, and their removal.

::

    $TMPDIR/cloudburst-<uid>/        0700, this user's; refused if someone else made it
        <pid>/                       one per process: a client, a worker, a supervisor
            .lock                    held (flock) for the process's life
            blobs-…/ j…/ …           what that process keeps: blobs, a local job's store and logs

A process removes its folder as it exits: at interpreter exit, and a worker also on SIGTERM
and before each ``os._exit``. A folder whose lock nobody holds and whose process is gone was
left by a process killed outright: :func:`sweep` removes it. A client sweeps after one of its
workers dies, and every process sweeps as it makes its folder (the next run).

A client also starts a reaper (this file run as a script, standard library only): it waits on a
pipe that only the client writes to, so it wakes the moment the client ends, however it ends
(SIGTERM, SIGKILL, a crash); it removes the client's folder, then sweeps the folders of the
client's workers, which the kernel kills with the client.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["make", "own", "remove_own", "root", "sweep"]

_LOCK = ".lock"


@dataclass
class _Own:
    """This process's folder. A forked child sees its parent's (``pid`` differs) and makes its own."""

    pid: int
    folder: Path
    lock_fd: int
    reaper: bool = False  # started (or tried)


_mutex = threading.Lock()
_own: _Own | None = None
_root: list[Path] = []  # this process's answer of root()
_reapers: list[subprocess.Popen[bytes]] = []  # referenced until this process ends: the pipe stays open
_exit_hooked = False


def root() -> Path:
    """This user's cloudburst folder below the temporary directory: made private (0700) if new.

    One found there that is not a private folder of this user (a link, someone else's, open to
    others) is not used: this process then works in a fresh private folder of its own."""
    if _root:
        return _root[0]
    base = Path(tempfile.gettempdir()) / f"cloudburst-{os.geteuid()}"
    try:
        base.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(base)
    if not (stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o077):
        logging.getLogger("cloudburst").warning(f"{base} is not a private folder of this user; not using it")
        base = Path(tempfile.mkdtemp(prefix=f"cloudburst-{os.geteuid()}-"))
    _root.append(base)
    return base


def own(*, reaper: bool = True) -> Path:
    """This process's folder, made (and older leftovers swept) on first use.

    ``reaper``: also start the process that removes it when this one dies (clients; a worker
    cleans up after itself and is swept by its client)."""
    global _own
    with _mutex:
        if _own is None or _own.pid != os.getpid():
            _own = _make_own()
        if reaper and not _own.reaper:
            _own.reaper = True
            _start_reaper(_own.folder)
        return _own.folder


def make(prefix: str, *, reaper: bool = True) -> Path:
    """A new folder inside this process's folder (removed with it)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=own(reaper=reaper)))


def remove_own() -> None:
    """Remove this process's folder now (at exit; before ``os._exit``; on SIGTERM)."""
    global _own
    mine, _own = _own, None
    if mine is not None and mine.pid == os.getpid():
        shutil.rmtree(mine.folder, ignore_errors=True)
        os.close(mine.lock_fd)


def sweep(base: Path | None = None) -> int:
    """Remove the folders of processes that are gone (killed before they could clean up); how many."""
    base = root() if base is None else base
    mine = _own.folder if _own is not None else None
    removed = 0
    try:
        entries = list(os.scandir(base))
    except OSError:
        return 0
    for entry in entries:
        path = Path(entry.path)
        if path == mine or not entry.is_dir(follow_symlinks=False):
            continue
        if _claim(path):
            removed += 1
    return removed


def _make_own() -> _Own:
    global _exit_hooked
    base = root()
    sweep()
    folder = base / str(os.getpid())
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:  # a dead process's with the same number (swept unless in use), or another pid namespace's
        folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=base))
    fd = os.open(folder / _LOCK, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without locks: a sweep goes by the process number alone
        pass
    if not _exit_hooked:
        _exit_hooked = True
        atexit.register(remove_own)
    return _Own(os.getpid(), folder, fd)


def _claim(path: Path) -> bool:
    """Remove ``path`` if its process is gone and nobody holds its lock."""
    pid_text = path.name.split("-", 1)[0]
    if not pid_text.isdigit() or _alive(int(pid_text)):
        return False  # a process of that number runs: perhaps the owner (or a reused number: swept later)
    try:
        fd = os.open(path / _LOCK, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1  # made, then killed before it took its lock
    except OSError:
        return False
    try:
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # held: a live process (another pid namespace, or a fork of the owner)
        shutil.rmtree(path, ignore_errors=True)
        return True
    finally:
        if fd >= 0:
            os.close(fd)


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _start_reaper(folder: Path) -> None:
    """A process that waits for the end of a pipe only this process writes to, then removes ``folder``.

    The pipe ends when this process ends, however it ends. The reaper has its own session, so
    Ctrl-C in a terminal, which this process may survive, does not reach it."""
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", __file__, "--reap", str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        logging.getLogger("cloudburst").warning(f"no cleanup process for {folder} ({exc}); a later run removes it")
        return
    _reapers.append(proc)  # its stdin, the pipe's writing end, stays open until this process ends


def _reap(folder: Path) -> None:
    """The reaper's life: wait until the client ends, remove its folder, sweep what its workers left."""
    import signal
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.read(0, 1)  # end of file: the client has ended
    except BaseException:
        pass
    shutil.rmtree(folder, ignore_errors=True)
    for pause in (0.5, 2.0):  # the kernel kills the client's workers with it; their folders go once they have
        time.sleep(pause)
        sweep(folder.parent)


if __name__ == "__main__" and sys.argv[1:2] == ["--reap"]:
    _reap(Path(sys.argv[2]))
