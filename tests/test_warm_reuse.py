"""Warm reuse: consecutive ``cloudburst.map`` calls with the same settings run on the same workers, which stop
after ``keep_warm`` idle seconds; other settings, a broken executor, Ctrl-C or an edited module start afresh."""

from __future__ import annotations

import _thread
import importlib
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cloudburst
from cloudburst import warm

from .conftest import process_gone, wait_until, worker_pids
from .test_hardening_ux import bar_lines, terminal


def pid(_: object) -> int:
    return os.getpid()


def draw(_: int) -> float:
    return float(cloudburst.rng().random())


def nap(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


def cloudburst_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("cloudburst")}


def idle_pids() -> set[int]:
    ex = warm.idle_executor()
    assert ex is not None, "no executor was kept warm"
    return set(worker_pids(ex).values())


def test_a_second_map_runs_on_the_same_workers() -> None:
    first = set(cloudburst.map(pid, range(20), workers=2, progress=False))
    workers = idle_pids()
    assert first <= workers and os.getpid() not in workers
    ex = warm.idle_executor()
    second = set(cloudburst.map(pid, range(20), workers=2, progress=False))
    assert second <= workers
    assert warm.idle_executor() is ex


@pytest.mark.parametrize("other", [{"env": {"WARM_TEST": "1"}}, {"cpu": 2}, {"workers": 1}], ids=str)
def test_other_settings_start_new_workers_and_stop_the_old(other: dict[str, object]) -> None:
    cloudburst.map(pid, range(4), workers=2, progress=False)
    old = idle_pids()
    settings: dict[str, object] = {"workers": 2, **other}
    new = set(cloudburst.map(pid, range(4), progress=False, **settings))  # type: ignore[arg-type]
    assert not new & old
    assert wait_until(lambda: all(process_gone(p) for p in old), timeout=30), old


def test_a_changed_environment_variable_starts_new_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    first = set(cloudburst.map(pid, range(4), workers=1, progress=False))
    monkeypatch.setenv("CLOUDBURST_WARM_TEST", "changed")  # local workers inherit the client's environment
    assert not set(cloudburst.map(pid, range(4), workers=1, progress=False)) & first


def test_idle_workers_stop_after_keep_warm_and_leave_nothing() -> None:
    before = cloudburst_threads()
    cloudburst.map(pid, range(4), workers=2, progress=False, keep_warm=0.5)
    pids = idle_pids()
    assert wait_until(lambda: warm.idle_executor() is None, timeout=30)
    assert wait_until(lambda: all(process_gone(p) for p in pids), timeout=30), pids
    assert wait_until(lambda: not cloudburst_threads() - before, timeout=30), cloudburst_threads() - before


def test_keep_warm_zero_stops_the_workers_on_return() -> None:
    pids = set(cloudburst.map(pid, range(4), workers=1, progress=False, keep_warm=0))
    assert warm.idle_executor() is None
    assert wait_until(lambda: all(process_gone(p) for p in pids), timeout=30), pids


def test_a_seeded_map_gives_the_same_results_on_warm_workers() -> None:
    first = cloudburst.map(draw, range(30), workers=2, seed=5, progress=False)
    ex = warm.idle_executor()
    second = cloudburst.map(draw, range(30), workers=2, seed=5, progress=False)
    assert warm.idle_executor() is ex  # the second ran warm
    assert first == second and len(set(first)) == 30
    children = np.random.SeedSequence(5).spawn(30)
    assert first == [float(np.random.default_rng(c).random()) for c in children]  # counted from 0 both times


def test_an_executor_broken_while_idle_is_replaced() -> None:
    from cloudburst.core.collect import MAX_FORGED_MESSAGES
    from cloudburst.protocol.task import encode

    cloudburst.map(pid, range(4), workers=1, progress=False)
    ex = warm.idle_executor()
    assert ex is not None
    old = idle_pids()
    forged = [encode(os.urandom(32), b"R", n, "junk", job=ex._job.tag) for n in range(MAX_FORGED_MESSAGES)]
    ex._job.resources.results.send_batch(forged)  # someone who can write to its queue: the executor breaks
    assert wait_until(lambda: all(process_gone(p) for p in old), timeout=30), old  # it stopped its workers
    with pytest.raises(cloudburst.BrokenExecutorError):
        ex.submit(abs, 1)
    assert set(cloudburst.map(pid, range(4), workers=1, progress=False)) & old == set()
    assert warm.idle_executor() is not ex


def test_a_map_whose_executor_broke_is_not_kept() -> None:
    with pytest.raises(cloudburst.WorkerDiedError, match=r"keep failing before they run anything"):
        cloudburst.map(abs, [-1], workers=1, env={"PYTHONHOME": "/nonexistent"}, progress=False)
    assert warm.idle_executor() is None
    returned = cloudburst.map(abs, [-1], workers=1, env={"PYTHONHOME": "/nonexistent"}, errors="return")
    assert isinstance(returned[0], cloudburst.WorkerDiedError)
    assert warm.idle_executor() is None


def test_an_error_in_a_map_keeps_the_workers_once_every_item_is_back() -> None:
    cloudburst.map(pid, range(4), workers=1, progress=False)
    workers = idle_pids()
    with pytest.raises(ZeroDivisionError):
        cloudburst.map(lambda x: 1 / x, [0], workers=1, progress=False)
    assert idle_pids() == workers


def test_ctrl_c_in_a_map_stops_its_workers_and_the_next_map_works() -> None:
    cloudburst.map(pid, range(2), workers=2, progress=False)
    pids = idle_pids()
    timer = threading.Timer(1.0, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            cloudburst.map(nap, range(4), [30] * 4, workers=2, chunksize=1, progress=False)
    finally:
        timer.cancel()
    assert warm.idle_executor() is None
    assert wait_until(lambda: all(process_gone(p) for p in pids), timeout=30), pids
    assert cloudburst.map(abs, [-3], workers=2, progress=False) == [3]


def test_maps_from_several_threads_each_get_workers_and_one_executor_is_kept() -> None:
    seen: list[set[int]] = []
    failures: list[BaseException] = []

    def one() -> None:
        try:
            out = cloudburst.map(nap, range(6), [0.05] * 6, workers=1, progress=False)
            assert out == list(range(6))
            seen.append(set(cloudburst.map(pid, range(3), workers=1, progress=False)))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    kept = idle_pids()
    others = set().union(*seen) - kept
    assert wait_until(lambda: all(process_gone(p) for p in others), timeout=30), others


def test_each_map_has_a_progress_bar_of_its_own() -> None:
    cloudburst.map(pid, range(7), workers=2, progress=False)
    with terminal() as screen:
        assert cloudburst.map(nap, range(3), [0.6] * 3, workers=2, chunksize=1, progress=True) == [0, 1, 2]
    bars = bar_lines(screen.lines())
    assert bars and all("3/3" in bar for bar in bars), screen.lines()  # not 10/10: the first map is not counted


def test_an_edited_module_starts_new_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "warm_edited_module.py"
    source.write_text("import os\n\ndef where(_):\n    return os.getpid(), 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the workers import it by name
    module = importlib.import_module("warm_edited_module")
    try:
        first = cloudburst.map(module.where, range(2), workers=1, progress=False)
        assert {v for _, v in first} == {1}
        source.write_text("import os\n\ndef where(_):\n    return os.getpid(), 2\n")
        os.utime(source, ns=(time.time_ns(), time.time_ns() + 10**9))
        module = importlib.reload(module)
        second = cloudburst.map(module.where, range(2), workers=1, progress=False)
        assert {v for _, v in second} == {2}  # the new code, on a worker that imported it fresh
        assert not {p for p, _ in second} & {p for p, _ in first}
    finally:
        sys.modules.pop("warm_edited_module", None)


def test_bad_keep_warm_is_refused() -> None:
    with pytest.raises(cloudburst.ConfigurationError, match=r"keep_warm=-1 must be a finite number of seconds"):
        cloudburst.map(abs, [1], keep_warm=-1)


def test_warm_workers_of_an_emulated_cloud_stop_with_it() -> None:
    """A map on emulated Fargate keeps its workers warm; when the emulator stops, they stop first, so nothing
    is left to be closed (at exit, say) against a cloud that is gone."""
    from cloudburst.emulator import Emulator

    with Emulator(verbose=False, light=True):
        assert cloudburst.map(abs, [-1, -2], backend="fargate", workers=1, progress=False) == [1, 2]
        assert warm.idle_executor() is not None
    assert warm.idle_executor() is None
