"""A progress bar (tqdm) that shows itself only when a person is watching and the work takes a while.

::

    grow(n) ──► work pending: a timer starts ──(0.75 s, work still pending)──► the bar appears
    advance(n) ──► counted; drawn once the bar is shown
    close() ──► a shown bar draws its final frame and a newline; a bar never shown prints nothing
    above_progress() ──► output written inside it goes above a shown bar, never on its line

The bar is made only when it is shown, so quick work prints nothing at all (tqdm's own ``delay``
cannot promise this: a forced refresh draws a bar whose ``close`` then leaves it unfinished).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Progress", "above_progress", "wanted"]

_DELAY_SECONDS = 0.75
# One lock for the screen: every bar's drawing and every relayed write take it, so they never interleave.
_SCREEN = threading.RLock()
_SHOWN: list[Progress] = []  # bars on the screen now, guarded by _SCREEN


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


def _bar_class() -> Any:
    """tqdm's notebook widget in a notebook with ipywidgets; its text bar everywhere else, silently.

    ``tqdm.auto`` would warn (TqdmWarning) in a notebook without ipywidgets before falling back to text.
    """
    if _in_notebook():
        try:
            from tqdm.notebook import IProgress, tqdm_notebook

            if IProgress is not None:
                return tqdm_notebook
        except ImportError:
            pass
    from tqdm.std import tqdm

    return tqdm


@contextlib.contextmanager
def above_progress() -> Iterator[None]:
    """Within the block, what is written to the terminal goes above any progress bar shown, not on its line."""
    with _SCREEN:
        shown = list(_SHOWN)
        for progress in shown:
            progress.bar.clear()
        try:
            yield
        finally:
            for progress in shown:
                progress.bar.refresh()


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
        self.enabled = enabled
        self.bar: Any = None
        self._total = total
        self._done = 0
        self._description = description
        self._postfix = postfix  # e.g. the cost so far, refreshed at most once a second
        self._next_postfix = 0.0
        self._pending_since: float | None = None
        self._timer: threading.Timer | None = None
        self._closed = False
        if total:
            self._arm()

    def _arm(self) -> None:
        """Work is pending: show the bar if it still is after the delay. Called with _SCREEN held, or in __init__."""
        if not self.enabled or self._closed or self.bar is not None or self._timer is not None:
            return
        self._pending_since = time.monotonic()
        self._timer = threading.Timer(_DELAY_SECONDS, self._show)
        self._timer.daemon = True
        self._timer.start()

    def _show(self) -> None:
        with _SCREEN:
            self._timer = None
            if self._closed or self.bar is not None or self._done >= self._total:
                return  # finished within the delay: nothing is shown (a later grow arms the timer again)
            self.bar = _bar_class()(
                total=self._total, initial=self._done, desc=self._description, unit="item", smoothing=0.1
            )
            # The elapsed time counts from when the work was submitted, not from when the bar appeared.
            self.bar.start_t -= time.monotonic() - (self._pending_since or time.monotonic())
            self.bar.refresh()
            _SHOWN.append(self)

    def advance(self, count: int) -> None:
        """``count`` more items have finished."""
        if not self.enabled:
            return
        postfix = None
        if self._postfix is not None and self.bar is not None and time.monotonic() >= self._next_postfix:
            self._next_postfix = time.monotonic() + 1.0
            postfix = self._postfix()  # outside the screen lock: it may ask the cloud
        with _SCREEN:
            self._done += count
            if self.bar is None:
                return
            if postfix is not None:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(count)

    def grow(self, count: int) -> None:
        """``count`` more items were submitted."""
        if not self.enabled:
            return
        with _SCREEN:
            self._total += count
            if self.bar is None:
                self._arm()
            else:
                self.bar.total = self._total
                self.bar.refresh()

    def close(self) -> None:
        """Stop; a shown bar is left on the screen at its final count, followed by a newline. Idempotent."""
        with _SCREEN:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self.bar is not None:
                _SHOWN.remove(self)
                self.bar.n = self._done
                self.bar.close()  # its last frame, then a newline
                self.bar = None
