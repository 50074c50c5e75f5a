"""How a worker runs the calls of one task: each call's result or error in its own place, each call knowing
its item, on the fast path (no seed, positional arguments) and the one-call-at-a-time path (seeded, keywords)."""

from __future__ import annotations

import sys

import pytest

import cloudburst


def item_or_fail(x: int) -> tuple[int, int | None]:
    if x % 3 == 0:
        raise ValueError(f"bad item {x}")
    print(f"says {x}")
    return x, cloudburst.current_item()


def exits_on_four(x: int) -> int:
    if x == 4:
        sys.exit(3)
    return x


@pytest.mark.parametrize("seed", [None, 7], ids=["fast path", "seeded"])
def test_failures_inside_one_chunk_keep_their_places_and_every_call_knows_its_item(
    seed: int | None, capsys: pytest.CaptureFixture[str]
) -> None:
    results = cloudburst.map(
        item_or_fail, range(20), workers=1, chunksize=20, seed=seed, errors="return", keep_warm=0, progress=False
    )
    for x, result in enumerate(results):
        if x % 3 == 0:
            assert isinstance(result, ValueError) and str(result) == f"bad item {x}", (x, result)
        else:
            assert result == (x, x), f"item {x} came back as {result!r}"
    out = capsys.readouterr().out
    assert all(f"[item {x}] says {x}" in out for x in range(20) if x % 3), out


def test_a_call_that_exits_fails_alone_and_the_rest_of_its_chunk_runs() -> None:
    results = cloudburst.map(exits_on_four, range(8), workers=1, chunksize=8, errors="return", keep_warm=0)
    assert [r for i, r in enumerate(results) if i != 4] == [0, 1, 2, 3, 5, 6, 7]
    assert isinstance(results[4], cloudburst.TaskExitError) and "sys.exit(3)" in str(results[4])


def test_a_traceback_starts_in_the_users_function_on_the_fast_path() -> None:
    with cloudburst.Executor(workers=1) as ex, pytest.raises(ValueError, match="bad item 0") as info:
        list(ex.map(item_or_fail, range(6), chunksize=6))
    remote = [str(entry.path) for entry in info.traceback]
    assert remote[-1].endswith("test_worker_calls.py"), f"the last frame is not the user's function: {remote}"
    assert not any(name.endswith("execute.py") for name in remote), f"the worker's own frames are shown: {remote}"
