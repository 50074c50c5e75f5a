"""cloudburst.streaming.imap: order, laziness, early stop, errors and bounded client memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import cloudburst
from cloudburst.errors import ConfigurationError
from cloudburst.streaming import imap, window_for

from .conftest import process_gone, wait_until


def square(x: int) -> int:
    return x * x


def slow_first(x: int) -> int:
    time.sleep(2.0 if x == 0 else 0.0)  # the first item finishes after others, on the other worker
    return x


def fail_on_five(x: int) -> int:
    if x == 5:
        raise KeyError(f"item {x}")
    return x


def pid_after(x: float) -> int:
    time.sleep(x)
    return os.getpid()


@pytest.fixture(scope="module")
def ex() -> Iterator[cloudburst.Executor]:
    with cloudburst.Executor(workers=2) as executor:
        yield executor


class Recorder:
    """A generator of ``n`` items that records how many the consumer has pulled."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.pulled = i + 1
            yield i


def test_ordered_results_in_input_order(ex: cloudburst.Executor) -> None:
    assert list(imap(square, range(2000), executor=ex)) == [i * i for i in range(2000)]


def test_several_iterables_stop_at_the_shortest(ex: cloudburst.Executor) -> None:
    assert list(imap(pow, range(10), [2] * 7, executor=ex)) == [i**2 for i in range(7)]


def test_unordered_completes_every_item_and_yields_the_first_to_finish_first(ex: cloudburst.Executor) -> None:
    results = list(imap(slow_first, range(8), ordered=False, chunksize=1, executor=ex))
    assert sorted(results) == list(range(8))
    assert results[0] != 0, f"the slow item came first: {results}"


def test_input_is_read_at_most_a_window_ahead(ex: cloudburst.Executor) -> None:
    for ordered in (True, False):
        source = Recorder(20_000)
        limit = window_for(ex).items
        taken = 0
        for _ in imap(square, source, ordered=ordered, executor=ex):
            taken += 1
            assert source.pulled - taken <= limit, f"read {source.pulled} items with {taken} taken (ordered={ordered})"
        assert taken == 20_000 and limit < 20_000


def test_an_items_exception_is_raised_at_its_position_when_ordered(ex: cloudburst.Executor) -> None:
    seen: list[int] = []
    with pytest.raises(KeyError, match="item 5"):
        for value in imap(fail_on_five, range(600), executor=ex):
            seen.append(value)
    assert seen == [0, 1, 2, 3, 4]


def test_an_items_exception_is_raised_when_unordered(ex: cloudburst.Executor) -> None:
    with pytest.raises(KeyError, match="item 5"):
        list(imap(fail_on_five, range(600), ordered=False, executor=ex))
    assert list(imap(square, range(3), executor=ex)) == [0, 1, 4], "the shared executor is still usable"


def test_early_break_stops_the_workers_of_its_own_executor() -> None:
    pids: set[int] = set()
    stream = imap(pid_after, [0.0] * 4 + [0.5] * 200, workers=2, chunksize=1)
    for pid in stream:
        pids.add(pid)
        if len(pids) == 2:
            break
    stream.close()  # what a ``break`` out of a ``for`` loop over the generator does once it is dropped
    assert len(pids) == 2
    assert wait_until(lambda: all(process_gone(p) for p in pids), timeout=20), f"workers still running: {pids}"


def test_early_break_cancels_the_rest_on_a_shared_executor(ex: cloudburst.Executor) -> None:
    source = Recorder(100_000)
    stream = imap(pid_after, (0.3 for _ in source), chunksize=1, executor=ex)
    next(stream)
    stream.close()
    assert source.pulled <= window_for(ex, 1).items
    # Uncancelled, the window's hundreds of 0.3 s calls would keep both workers busy for over a minute.
    assert wait_until(lambda: not ex._job.busy(), timeout=15), "the calls in flight were not cancelled"
    assert list(imap(square, range(3), executor=ex)) == [0, 1, 4]


def test_executor_and_options_together_are_refused(ex: cloudburst.Executor) -> None:
    with pytest.raises(ConfigurationError, match="executor="):
        imap(square, range(3), executor=ex, workers=2)
    with pytest.raises(TypeError, match="at least one iterable"):
        imap(square)


# Measured in a fresh interpreter: tracemalloc counts every thread of the process, and the test
# process also runs the emulator's in-process server and other modules' background threads.
_MEMORY_PROBE = """
import json, sys, tracemalloc
import cloudburst
from cloudburst.streaming import imap
from tests.test_streaming import square

n = int(sys.argv[1])
with cloudburst.Executor(workers=2) as ex:
    sum(imap(square, range(n // 10), executor=ex))  # warm up: lazy imports, worker start
    tracemalloc.start()
    total = sum(imap(square, range(n), executor=ex))
    _, streamed = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    results = [i * i for i in range(n)]
    _, as_list = tracemalloc.get_traced_memory()
    tracemalloc.stop()
print(json.dumps({"ok": total == sum(results), "streamed": streamed, "as_list": as_list}))
"""


def test_client_memory_is_bounded_by_the_window_not_the_input() -> None:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, "500000"], capture_output=True, text=True, env=env, cwd=root, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["ok"], "imap's results summed differently from the list's"
    streamed, as_list = probe["streamed"], probe["as_list"]
    assert streamed < as_list / 4, f"streaming peaked at {streamed} bytes, a list of the results at {as_list}"
