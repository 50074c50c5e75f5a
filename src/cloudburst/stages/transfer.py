"""Copying a blob from one store to another, server-side when the stores allow it.

A stage's value is made in the store of its executor's job; its consumers may run on other executors (other
shapes), and the cache keeps its own store. ``copy_blob`` moves a blob between them without bringing it to
the client when it can: a store that offers ``copy_from`` (see ``backends.base.Store``) copies from a store
it can reach (S3: CopyObject within a bucket; local: a hard link). Otherwise the bytes pass through here.
"""

from __future__ import annotations

from collections.abc import Callable

from ..backends.base import Store

__all__ = ["copy_blob"]


def copy_blob(src: Store, src_key: str, dst: Store, dst_key: str) -> None:
    """Copy the blob ``src_key`` of ``src`` to ``dst_key`` of ``dst``; raises ``FileNotFoundError`` when it is
    not in ``src``. Always copies, even when ``dst`` has it already: a copy refreshes its age (lifecycle rules,
    ``cache clear --older-than``), and asking first would cost a request as well."""
    if src is dst and src_key == dst_key:
        return  # already where it is needed
    copy_from: Callable[[Store, str, str], bool] | None = getattr(dst, "copy_from", None)
    if copy_from is not None and copy_from(src, src_key, dst_key):
        return
    dst.put(dst_key, src.get(src_key))
