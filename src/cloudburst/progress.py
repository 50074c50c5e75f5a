"""A progress bar (tqdm) that shows itself only when a person is watching and the work takes a while."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Progress", "wanted"]

_DELAY_SECONDS = 0.75


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def wanted(progress: bool | str) -> bool:
    """``"auto"``: show in terminals and notebooks; True/False force it."""
    if progress == "auto":
        return _in_notebook() or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return bool(progress)


class Progress:
    """Counts finished items. The bar appears after a short delay, so quick work stays quiet."""

    def __init__(
        self,
        total: int,
        *,
        enabled: bool,
        description: str = "cloudburst",
        postfix: Callable[[], str] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._bar: Any = None
        self._postfix = postfix  # e.g. the cost so far, refreshed at most once a second
        self._next_postfix = 0.0
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=description, unit="item", delay=_DELAY_SECONDS, smoothing=0.1)

    def advance(self, count: int) -> None:
        if self._bar is not None:
            with self._lock:
                if self._postfix is not None and time.monotonic() >= self._next_postfix:
                    self._next_postfix = time.monotonic() + 1.0
                    self._bar.set_postfix_str(self._postfix(), refresh=False)
                self._bar.update(count)

    def grow(self, count: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.total = (self._bar.total or 0) + count
                self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.close()
                self._bar = None
