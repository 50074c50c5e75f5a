"""An example backend, written only against the documented contract (``cloudburst.backends.base``).

Workers are ``python -m cloudburst.worker`` subprocesses; blobs live in a directory, and each queue is a
directory of files leased by atomic rename. Importing this package registers it as ``backend="dirqueue"``::

    import dirqueue_backend  # noqa: F401
    import cloudburst

    cloudburst.map(abs, [-1, -2], backend="dirqueue")
"""

from __future__ import annotations

import cloudburst.backends

from .backend import DirQueue, DirQueueBackend, DirStore, ProcessLauncher

__all__ = ["DirQueue", "DirQueueBackend", "DirStore", "ProcessLauncher"]

cloudburst.backends.register("dirqueue", "dirqueue_backend.backend:DirQueueBackend")
