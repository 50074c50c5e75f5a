"""The stage cache in a folder on this machine: ``<cache dir>/stages/<namespace>/``, and its key file.

Entries are written once: a temporary file is hard-linked to the entry's name, which fails when the name
exists, so of two racing writers exactly one wins and a reader never sees half an entry. The cache key
(``.key``, 0600 in a 0700 folder) is made the same way the first time, and read by every later run.
"""

from __future__ import annotations

import itertools
import os
import secrets
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..config.userconfig import cache_dir
from ..errors import ConfigurationError
from .cachebase import CacheObject, CacheSite
from .local import LocalStore

__all__ = ["KEY_FILE", "LocalCacheStore", "open_local_cache", "read_key_file"]

KEY_FILE = ".key"
_TEMP = ".put-"  # LocalStore's temporary files, and ours: never listed
_serial = itertools.count()


class LocalCacheStore(LocalStore):
    """A ``CacheStore`` in a folder: ``LocalStore`` plus write-once entries, listing and deletion."""

    def put_new(self, key: str, data: bytes) -> bool:
        """Write ``data`` under ``key`` unless a file is there: True when this call made it."""
        path = self._path(key)
        if os.path.exists(path):  # the common case of a rerun's write: nothing to do
            return False
        # A name of our own (process, thread, counter) opened with O_EXCL: cheaper than mkstemp's random
        # names, as safe, since no one else makes names with this process's id.
        tmp = path.parent / f"{_TEMP}{os.getpid()}-{threading.get_ident()}-{next(_serial)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.link(tmp, path)  # atomic, and refused when the name exists: the first writer wins
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[CacheObject]:
        """Every file whose key starts with ``prefix`` (temporary files and the key file left out)."""
        root = self.root.resolve()
        start = self._path(prefix.rsplit("/", 1)[0]) if "/" in prefix else root
        for folder, _, names in os.walk(start):
            for name in names:
                if name.startswith((_TEMP, KEY_FILE)):
                    continue
                path = Path(folder) / name
                key = path.relative_to(root).as_posix()
                if key.startswith(prefix):
                    try:
                        stat = path.stat()
                    except FileNotFoundError:  # deleted by another process meanwhile
                        continue
                    yield CacheObject(key, stat.st_size, stat.st_mtime)

    def delete(self, keys: Sequence[str]) -> None:
        """Delete these files; one already gone is not an error."""
        for key in keys:
            self._path(key).unlink(missing_ok=True)


def read_key_file(folder: Path) -> bytes:
    """The cache key in ``folder/.key``, made (32 random bytes, hex, mode 0600; the folder 0700) when missing."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)  # also when an older run made it with the default mode
    path = folder / KEY_FILE
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_TEMP)  # mkstemp makes it 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            Path(tmp).unlink(missing_ok=True)
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigurationError(
            f"the stage cache key {path} is damaged; delete that file (the entries it sealed will be recomputed)"
        )
    return key


def open_local_cache(namespace: str) -> CacheSite:
    """The stage cache of this machine for ``namespace``: ``<cache dir>/stages/<namespace>/``."""
    folder = cache_dir() / "stages" / namespace
    return CacheSite(LocalCacheStore(folder), str(folder), lambda: read_key_file(folder))
