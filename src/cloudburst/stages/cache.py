"""The stage cache: results of stage calls kept across runs, found by the call's cache key.

::

    lookup(stage, key)   one read: entries/<stage slug>/<key>, a sealed manifest ─► ValueRef (or None: a miss)
    record(...)          on a writer thread: the ref's blobs copied into blobs/<sha256>, then the manifest
                         written once (create-if-absent), so a manifest never names a missing blob

Only the client writes the cache; workers cannot reach it. The cache's storage is the backend's
(``Backend.open_cache``: a folder here, ``cache/<namespace>/`` of the bucket on AWS). An entry that fails its
check (forged, altered, moved under another key, unreadable) is a miss: the call runs again, and the first
such entry of a run is named in one warning. Nothing from the cache is unpickled before its check, and a
blob is checked against its sha256 when it is read (``protocol.serialize.Unpacker``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from ..backends import Store, get_backend
from ..backends.cachebase import ENTRIES, CacheSite, stage_slug
from ..backends.cachebase import namespace as check_namespace
from ..backends.local import LocalStore
from ..config.userconfig import lookup as setting
from ..errors import PayloadAuthenticationError
from ..log import warn
from ..protocol.blobs import BlobRef
from .manifest import check_key, open_manifest, seal_manifest
from .refs import ValueRef
from .transfer import copy_blob

__all__ = ["StageCache", "entry_key", "open_cache"]

_WRITERS = 4


def entry_key(stage: str, key: str) -> str:
    """Where the manifest of call ``key`` of ``stage`` is, below the cache store's root."""
    return f"{ENTRIES}{stage_slug(stage)}/{check_key(key)}"


class StageCache:
    """One run's view of a namespace's stage cache (see the module docstring). Thread-safe."""

    def __init__(self, site: CacheSite, namespace: str, writers: int = _WRITERS) -> None:
        self.where = site.where
        self.store = site.store
        self.namespace = namespace
        #: entries of this run that failed their check (the first is named in a warning)
        self.bad: list[str] = []
        self._read_key = site.read_key
        self._key: bytes | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(writers, thread_name_prefix="cloudburst-cache")
        self._pending: set[Future[None]] = set()
        self._local = isinstance(self.store, LocalStore)  # entries written by the caller (see record)

    def _cache_key(self) -> bytes:
        """The cache key, read (or made) once, at the first lookup or record."""
        with self._lock:
            if self._key is None:
                self._key = self._read_key()
            return self._key

    def lookup(self, stage: str, key: str) -> ValueRef | None:
        """The result recorded for call ``key`` of ``stage``, or None (a miss: none, or one that fails its check)."""
        name = entry_key(stage, key)
        try:
            data = self.store.get(name)
        except FileNotFoundError:
            return None
        except Exception as exc:  # memoization only: a cache that cannot be read is a miss, not a failed run
            self._refuse(name, f"it could not be read ({type(exc).__name__}: {exc})")
            return None
        cache_key = self._cache_key()  # a damaged or unreachable key is an error of its own, with its fix
        try:
            return open_manifest(cache_key, self.namespace, stage, key, data)
        except (PayloadAuthenticationError, ValueError, KeyError, TypeError) as exc:
            self._refuse(name, str(exc) or type(exc).__name__)
            return None

    def blobs_of(self, name: str) -> tuple[BlobRef, ...] | None:
        """The blobs the entry stored under ``name`` (``entries/<slug>/<key>``) needs; None when it is gone or
        fails its check (for tools: ``cloudburst cache clear`` keeps the blobs of the entries it keeps)."""
        try:
            data = self.store.get(name)
            ref = open_manifest(self._cache_key(), self.namespace, None, name.rsplit("/", 1)[-1], data)
        except (FileNotFoundError, PayloadAuthenticationError, ValueError, KeyError, TypeError):
            return None
        return ref.blobs()

    def _refuse(self, name: str, why: str) -> None:
        with self._lock:
            self.bad.append(name)
            first = len(self.bad) == 1
        if first:
            warn(
                f"cloudburst: the stage cache entry {self.where.rstrip('/')}/{name} was not used: {why}. "
                "The call runs again; other bad entries of this run are not reported."
            )

    def record(self, stage: str, key: str, ref: ValueRef, src: Store) -> None:
        """Keep ``ref`` (whose blobs are in ``src``) as the result of call ``key`` of ``stage``: queued on a
        writer thread, which copies the blobs first and then writes the manifest once (an entry already there
        is kept). A write that fails is warned about and leaves no entry."""
        entry_key(stage, key)  # a bad key is the caller's error, raised here rather than on the writer
        if self._local:  # a few file operations: cheaper here than a hop to a writer thread, which competes
            future: Future[None] = Future()  # for the interpreter with the caller (measured: a cold chain of
            try:  # 1,000 stages runs 20-30% faster)
                self._write(stage, key, ref, src, time.time())
                future.set_result(None)
            except Exception as exc:
                future.set_exception(exc)
            self._done(future)
            return
        future = self._pool.submit(self._write, stage, key, ref, src, time.time())
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _write(self, stage: str, key: str, ref: ValueRef, src: Store, created: float) -> None:
        # Always copied, never skipped when present: the copy refreshes the blob's age, so a blob is never older
        # than the newest entry naming it, and expiring both by age (lifecycle, `cache clear`) breaks no entry.
        for blob in ref.blobs():
            if src is not self.store:
                copy_blob(src, blob.key, self.store, blob.key)
        manifest = seal_manifest(self._cache_key(), self.namespace, stage, key, ref, created)
        self.store.put_new(entry_key(stage, key), manifest)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)
        exc = future.exception()
        if exc is not None:
            warn(f"cloudburst: a stage result could not be kept in the cache {self.where}: {type(exc).__name__}: {exc}")

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record queued so far is written (or ``timeout`` seconds have passed)."""
        with self._lock:
            pending = set(self._pending)
        wait(pending, timeout)

    def close(self) -> None:
        """Write what is queued, then stop the writer threads."""
        self._pool.shutdown(wait=True)


def open_cache(backend: str, options: Mapping[str, Any], namespace: str | None = None) -> StageCache:
    """The stage cache of ``backend`` for ``namespace`` (None: the ``cache_namespace`` setting), from settings and
    ``options`` alone: no backend object is made and nothing is asked of the cloud until the cache is read."""
    if namespace is None:
        namespace = str(setting("cache_namespace").value)
    else:
        namespace = check_namespace("namespace", namespace)
    return StageCache(get_backend(backend).open_cache(options, namespace), namespace)
