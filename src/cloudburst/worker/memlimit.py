"""How a local worker's ``memory=`` limit is enforced: by the kernel where it can be.

Strongest first; the worker logs which one applies (``memory limit ... enforced by ...``):

1. **cgroup v2** ``memory.max``: the launcher makes one cgroup per worker (no swap) beside the
   client's own, where this user may (as root, or in a cgroup systemd delegated to the user),
   and the worker moves itself in as it starts. The kernel kills it at the limit; the launcher
   finds the kill in ``memory.events`` and reports it as out of memory (exit code 137).
2. **RLIMIT_DATA**, set by the worker on itself: its private writable memory (heap, ``mmap``,
   thread stacks, arrays it receives copy-on-write) cannot pass the limit, so an allocation past
   it fails at once. A ``MemoryError`` that escapes a task then ends the worker as out of memory.
   Not RLIMIT_AS: it counts address space merely reserved (glibc's per-thread arenas, OpenBLAS
   buffers), so numpy fails to import or start threads well below the limit.
3. A **poll** of the worker's resident memory every 50 ms, where neither applies (not Linux).
   A single large allocation in C can pass the limit before the poll sees it.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
from pathlib import Path

__all__ = ["CGROUP", "POLL", "RLIMIT", "cgroup_base", "limit_self", "make_cgroup", "oom_kills", "remove_cgroup"]

CGROUP, RLIMIT, POLL = "a cgroup v2 memory.max", "RLIMIT_DATA", "a poll of its resident memory"
_PREFIX = "cloudburst-"
_base: list[Path | None] = []  # cached answer of cgroup_base()


def _own_cgroup() -> tuple[Path, Path] | None:
    """(cgroup v2 mount point, this process's cgroup folder), or None without cgroup v2."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    relative = next((line[3:] for line in lines if line.startswith("0::")), None)
    for line in mounts:
        fields, _, fs = line.partition(" - ")
        if relative is None or not fs.startswith("cgroup2 "):
            continue
        mount_root, mount_point = fields.split()[3:5]
        if mount_root != "/" and not relative.startswith(mount_root):
            continue
        inside = relative[len(mount_root) :] if mount_root != "/" else relative
        return Path(mount_point), Path(mount_point) / inside.lstrip("/")
    return None


def cgroup_base() -> Path | None:
    """Where worker cgroups with a memory limit can be made: beside this process's cgroup (or below
    it, if it is the root of the hierarchy), when the memory controller is on there and this user may
    write it. None otherwise."""
    if not _base:
        _base.append(_find_base())
    return _base[0]


def _find_base() -> Path | None:
    found = _own_cgroup()
    if found is None:
        return None
    mount, here = found
    base = here if here == mount else here.parent
    try:
        controllers = (base / "cgroup.subtree_control").read_text().split()
    except OSError:
        return None
    if "memory" not in controllers or not os.access(base, os.W_OK) or not os.access(base / "cgroup.procs", os.W_OK):
        return None
    return base


def make_cgroup(name: str, limit_bytes: int) -> Path | None:
    """A cgroup for one worker with ``memory.max`` = ``limit_bytes`` and no swap; None if it cannot be made."""
    base = cgroup_base()
    if base is None:
        return None
    try:  # the client's pid first, for sweep_cgroups; unique, as two executors may both name a worker w1
        path = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-{name}-", dir=base))
    except OSError as exc:
        print(f"cloudburst: could not make a memory cgroup in {base}: {exc}", file=sys.stderr)
        return None
    try:
        (path / "memory.max").write_text(str(limit_bytes))
        for setting, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            if (path / setting).exists():
                (path / setting).write_text(value)
    except OSError as exc:
        print(f"cloudburst: could not make a memory cgroup in {base}: {exc}", file=sys.stderr)
        remove_cgroup(path)
        return None
    return path


def remove_cgroup(path: Path) -> None:
    """Remove an empty worker cgroup (its processes have ended)."""
    try:
        path.rmdir()
    except OSError:
        pass


def sweep_cgroups() -> None:
    """Remove the empty worker cgroups of clients that are gone (killed before they could)."""
    base = cgroup_base()
    if base is None:
        return
    for path in base.glob(f"{_PREFIX}*-*"):
        pid = path.name[len(_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove_cgroup(path)


def oom_kills(cgroup: Path | None = None) -> int:
    """How many processes the kernel killed for memory in ``cgroup`` (default: this process's own,
    cgroup v2 or v1, as in a container); 0 when unknown."""
    if cgroup is None:
        found = _own_cgroup()
        candidates = [found[1] / "memory.events"] if found else []
        candidates += [Path("/sys/fs/cgroup/memory") / v1.lstrip("/") / "memory.oom_control" for v1 in _v1_memory()]
    else:
        candidates = [cgroup / "memory.events"]
    for events in candidates:
        try:
            for line in events.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return 0


def _v1_memory() -> list[str]:
    """This process's cgroup v1 memory path, if it has one."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    return [line.split(":", 2)[2] for line in lines if line.split(":", 2)[1:2] == ["memory"]]


def peak_bytes(cgroup: Path) -> int | None:
    """The most memory the cgroup's processes held at once (``memory.peak``, Linux 5.19+)."""
    try:
        return int((cgroup / "memory.peak").read_text())
    except (OSError, ValueError):
        return None


def limit_self(limit_bytes: int, cgroup: str = "") -> str:
    """Put this worker process under its memory limit (in ``cgroup`` when the launcher made one); returns which
    mechanism applies."""
    if cgroup:
        try:
            (Path(cgroup) / "cgroup.procs").write_text(str(os.getpid()))
            return CGROUP
        except OSError as exc:
            print(f"cloudburst-worker: could not join the memory cgroup {cgroup}: {exc}", file=sys.stderr)
    if sys.platform.startswith("linux"):
        try:
            _, hard = resource.getrlimit(resource.RLIMIT_DATA)
            if hard == resource.RLIM_INFINITY or hard >= limit_bytes:
                resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, hard))
                return RLIMIT
        except (OSError, ValueError) as exc:
            print(f"cloudburst-worker: could not set RLIMIT_DATA: {exc}", file=sys.stderr)
    return POLL


def data_bytes() -> int:
    """This process's private writable memory now (what RLIMIT_DATA counts); 0 when unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
