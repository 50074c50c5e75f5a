"""Streaming maps: :func:`imap` reads its input lazily and keeps a bounded window of work in flight.

The input is cut into blocks; each block is one :meth:`Executor.start_map` run. At most
``blocks`` runs are out at once, so the client holds a bounded number of arguments and results
however long the input is (a generator of 10,000,000 items streams in constant memory). Blocks start
small, so that the first results come soon, and double up to a largest size that amortises a run's
overhead over many items.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError
from typing import Any, NamedTuple

from .core.work import MapRun
from .errors import ConfigurationError
from .executor import Executor, _iterate, _take

__all__ = ["Window", "imap", "window_for"]

_FIRST_BLOCK_ITEMS = 256  # calls in the first run: the first results come soon
_LARGEST_BLOCK_ITEMS = 4096  # calls per run once the stream is going: a run's overhead is then ~1% of tiny calls
_BLOCKS_PER_SLOT = 2  # runs in flight per task slot: one running, one queued behind it


class Window(NamedTuple):
    """How much of the input :func:`imap` keeps in flight: ``blocks`` runs, of ``first`` calls at first,
    doubling up to ``largest``."""

    first: int
    largest: int
    blocks: int

    @property
    def items(self) -> int:
        """The most input items read ahead of the consumer."""
        return self.largest * self.blocks


def window_for(executor: Executor, chunksize: int | None = None) -> Window:
    """The window :func:`imap` uses on ``executor``: a few times its task slots."""
    first = max(_FIRST_BLOCK_ITEMS, chunksize or 0)
    return Window(first, max(first, _LARGEST_BLOCK_ITEMS), max(2, _BLOCKS_PER_SLOT * executor._job.slots))


def imap(
    fn: Callable[..., Any],
    *iterables: Iterable[Any],
    ordered: bool = True,
    chunksize: int | None = None,
    executor: Executor | None = None,
    **options: Any,
) -> Iterator[Any]:
    """Yield ``fn(*args)`` for each item of ``zip(*iterables)``, reading the input lazily.

    Results come in input order, or as they finish with ``ordered=False``. The input is read only a
    bounded window ahead (see :func:`window_for`), so memory does not grow with its length. An item's
    exception is raised when the iteration reaches it (at its position when ordered, when it finishes
    otherwise) and ends the stream: the work still in flight is cancelled. An exception raised by the input
    itself comes after the results of the items it gave before it. Closing the generator early
    (``break``) cancels the work in flight too. ``options`` go to :class:`Executor`, which is created
    for this call and shut down at its end; pass ``executor=`` instead to reuse one (it is left running).
    """
    if not iterables:
        raise TypeError("imap() needs at least one iterable of arguments")
    if executor is not None and options:
        raise ConfigurationError(
            f"imap() got executor= and Executor options {sorted(options)}; pass the options to that Executor instead"
        )
    if chunksize is not None and (isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1):
        raise ConfigurationError(f"chunksize={chunksize!r} must be a whole number ≥ 1, or None for automatic")
    own = executor is None
    ex = Executor(**options) if executor is None else executor
    return _stream(ex, own, _Blocks(ex, fn, zip(*iterables, strict=False), chunksize), ordered)


def _stream(ex: Executor, own: bool, blocks: _Blocks, ordered: bool) -> Iterator[Any]:
    """Drive ``blocks`` to the end; cancel what is left and release an owned executor however it ends."""
    finished = False
    try:
        yield from (_in_order(blocks) if ordered else _as_finished(blocks))
        finished = True
    finally:
        blocks.cancel()
        if own:
            if finished:
                ex.shutdown(wait=True)
            else:
                ex.terminate()


class _Blocks:
    """The runs in flight, topped up from the input as the consumer takes results."""

    def __init__(self, ex: Executor, fn: Callable[..., Any], calls: Iterator[tuple[Any, ...]], chunksize: int | None):
        self.ex, self.fn, self.calls, self.chunksize = ex, fn, calls, chunksize
        self.window = window_for(ex, chunksize)
        self.block = self.window.first  # calls in the next run
        self.runs: deque[MapRun] = deque()
        self.exhausted = False
        self.input_error: BaseException | None = None  # raised by the input; raised in turn after its items
        self.changed = threading.Condition()  # notified whenever any run in flight gets results

    def top_up(self) -> None:
        """Start runs until the window is full or the input is exhausted."""
        while not self.exhausted and len(self.runs) < self.window.blocks:
            block: list[tuple[Any, ...]] = []
            try:
                block.extend(itertools.islice(self.calls, self.block))  # keeps what it read if the input raises
            except Exception as exc:
                self.input_error = exc
            if len(block) < self.block:
                self.exhausted = True
            if block:
                self.runs.append(self._start(block))
            self.block = min(2 * self.block, self.window.largest)

    def _start(self, block: list[tuple[Any, ...]]) -> MapRun:
        run = self.ex.start_map(self.fn, *zip(*block, strict=True), chunksize=self.chunksize)
        advance = run.on_progress

        def progressed(count: int) -> None:
            if advance is not None:
                advance(count)
            with self.changed:
                self.changed.notify_all()

        run.on_progress = progressed
        return run

    def cancel(self) -> None:
        """Cancel every run in flight (its calls not yet started are never sent)."""
        for run in self.runs:
            run.cancel()


def _in_order(blocks: _Blocks) -> Iterator[Any]:
    blocks.top_up()
    while blocks.runs:
        yield from _iterate(blocks.runs[0], None)  # Executor.map's ordered iteration, one block at a time
        blocks.runs.popleft()
        blocks.top_up()
    _raise_input_error(blocks)


def _raise_input_error(blocks: _Blocks) -> None:
    """The input's own exception, once the results of the items it gave before it are out (as multiprocessing)."""
    if blocks.input_error is not None:
        error, blocks.input_error = blocks.input_error, None
        raise error


def _as_finished(blocks: _Blocks) -> Iterator[Any]:
    blocks.top_up()
    seen: dict[int, bytearray] = {}  # id(run) → positions already yielded
    while blocks.runs:
        ready = _collect_ready(blocks, seen)
        if not ready:
            with blocks.changed:
                if not any(_has_new(run, seen) for run in blocks.runs):
                    blocks.changed.wait(0.5)
            continue
        for run, pos in ready:
            error = run.errors.get(pos)
            if error is not None:
                raise error
            yield _take(run.values, pos)
        for run in [r for r in blocks.runs if seen[id(r)].count(1) == len(r)]:
            blocks.runs.remove(run)
            seen.pop(id(run), None)
        blocks.top_up()
    _raise_input_error(blocks)


def _collect_ready(blocks: _Blocks, seen: dict[int, bytearray]) -> list[tuple[MapRun, int]]:
    """Every (run, position) that has come back and was not yielded yet; marks them yielded."""
    ready: list[tuple[MapRun, int]] = []
    for run in blocks.runs:
        mine = seen.setdefault(id(run), bytearray(len(run)))
        with run.cond:
            if run.cancelled and run.done < len(run):
                raise CancelledError("imap: a block of items was cancelled")
            new = [pos for pos in range(len(run)) if run.filled[pos] and not mine[pos]]
        for pos in new:
            mine[pos] = 1
            ready.append((run, pos))
    return ready


def _has_new(run: MapRun, seen: dict[int, bytearray]) -> bool:
    mine = seen.get(id(run))
    return mine is None or run.done > mine.count(1)
