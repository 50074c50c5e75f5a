"""The stage cache's storage contract, one for every backend: a ``Store`` that can also create an entry only
if none is there, list what it holds, and delete by key.

::

    cache store (below its root)
      blobs/<sha256>                value blobs, the same keys as in job stores
      entries/<stage slug>/<key>    sealed manifests, written once (``put_new``)

``Backend.open_cache(options, namespace)`` returns a ``CacheSite``: the store, where it is (for messages),
and how to get the long-lived cache key that seals its manifests.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..errors import ConfigurationError
from .base import Store

__all__ = ["ENTRIES", "CacheObject", "CacheSite", "CacheStore", "namespace", "stage_slug"]

#: where manifests live below a cache store's root (blobs are at ``blobs/<sha256>``, as in job stores)
ENTRIES = "entries/"
_SLUG_MAX = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_NAMESPACE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}$")


def namespace(name: str, value: object) -> str:
    """A cache namespace (the ``cache_namespace`` setting): letters, digits, ``_ . -``, not starting with a dot,
    at most 100 characters; it names a folder and an S3 prefix."""
    if not isinstance(value, str) or not _NAMESPACE.match(value):
        raise ConfigurationError(
            f"{name}={value!r} is not a cache namespace: use letters, digits, '_', '.' and '-' (not starting "
            "with '.'), at most 100 characters, e.g. 'default' or 'team-a'"
        )
    return value


def stage_slug(stage: str) -> str:
    """A stage's name as one safe path segment: ``module:qualname`` as ``module.qualname``, other characters than
    letters, digits, ``_ . -`` as ``_``, at most 100 characters (a longer name keeps its start and a hash of the
    whole). Two names that meet in one slug share a folder, nothing more: an entry's key covers its stage."""
    slug = _UNSAFE.sub("_", stage.replace(":", ".")).lstrip(".") or "_"
    if len(slug) > _SLUG_MAX:
        slug = f"{slug[: _SLUG_MAX - 13]}-{hashlib.sha256(stage.encode()).hexdigest()[:12]}"
    return slug


@dataclass(frozen=True)
class CacheObject:
    """One object of a cache store: its key below the store's root, size in bytes, last change (epoch seconds)."""

    key: str
    size: int
    modified: float


@runtime_checkable
class CacheStore(Store, Protocol):
    """A ``Store`` that also writes once, lists and deletes by key. Every method may run in several threads and
    several processes at once."""

    def put_new(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` unless something is there already, atomically: True when this call wrote
        it, False when an entry was there (it is kept, unchanged). Two racing calls: exactly one gets True."""
        ...

    def list(self, prefix: str) -> Iterator[CacheObject]:
        """Every object whose key starts with ``prefix``, in no particular order."""
        ...

    def delete(self, keys: Sequence[str]) -> None:
        """Delete these objects; a key that is not there is not an error."""
        ...


@dataclass(frozen=True)
class CacheSite:
    """A backend's stage cache: its store, where it is (``s3://bucket/cache/default/`` or a folder), and the
    reader of its cache key (HMAC key of manifests; it may make one the first time, and is called once)."""

    store: CacheStore
    where: str
    read_key: Callable[[], bytes]
