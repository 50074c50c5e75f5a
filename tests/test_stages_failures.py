"""The failure table of pipelines: each way a compute can go wrong, the error the user gets, and that it
comes before money is spent when it can (nothing runs), or after the rest of the pipeline finished."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import cloudburst as cb
from cloudburst.errors import ConfigurationError, PicklingError, StageError, StageHashError, UnknownParameterError

LOCK = threading.Lock()  # a global no cache key can hold


@cb.stage
def marker(folder: str, name: str) -> str:
    Path(folder, name).touch()
    return name


@cb.stage
def reads_a_lock(x: int) -> bool:
    return LOCK.locked() or x > 0


@cb.stage
def returns_a_lock(x: int) -> Any:
    return threading.Lock()


@cb.stage
def not_a_list(x: int) -> int:
    return x


@cb.stage
def double(x: int) -> int:
    return 2 * x


def unhashable_global(folder: str) -> list[Any]:
    return [marker(folder, "sibling"), reads_a_lock(1)]


def unpicklable_result(folder: str) -> list[Any]:
    return [marker(folder, "sibling"), returns_a_lock(1)]


def misspelled_stage_option(folder: str) -> list[Any]:
    return [marker(folder, "sibling"), double.options(idle_timout=5)(1)]


def fan_out_over_a_number(folder: str) -> list[Any]:
    return [marker(folder, "sibling"), double.map(not_a_list(3))]


# (name, pipeline, compute options, error type, words in the message, whether the sibling ran)
ROWS: list[tuple[str, Callable[[str], list[Any]], dict[str, Any], type[BaseException], str, bool]] = [
    ("unhashable global", unhashable_global, {}, StageHashError, "LOCK", False),
    ("unpicklable result", unpicklable_result, {}, StageError, "cannot be pickled", True),
    ("fan-out over a value that is not a list", fan_out_over_a_number, {}, StageError, "not a list", True),
    ("unknown option", unhashable_global, {"cpus": 2}, UnknownParameterError, "cpus", False),
    ("unknown stage option", misspelled_stage_option, {}, UnknownParameterError, "idle_timeout", False),
    ("bad errors=", unhashable_global, {"errors": "ignore"}, ConfigurationError, "errors=", False),
]


@pytest.mark.parametrize(
    ("name", "pipeline", "options", "error", "words", "sibling_ran"), ROWS, ids=[row[0] for row in ROWS]
)
def test_failure_table(
    name: str,
    pipeline: Callable[[str], list[Any]],
    options: dict[str, Any],
    error: type[BaseException],
    words: str,
    sibling_ran: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOUDBURST_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(error, match=words):
        cb.compute(*pipeline(str(tmp_path)), backend="local", workers=2, **options)
    assert (tmp_path / "sibling").exists() == sibling_ran, name


def test_bad_stage_options_fail_where_the_stage_is_written() -> None:
    with pytest.raises(ConfigurationError, match="cpu"):
        cb.stage(cpu=-1)(double)
    with pytest.raises(TypeError):
        double(1, 2)  # the call is checked against the signature when it is written


def test_an_unpicklable_result_names_the_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDBURST_CACHE_DIR", str(tmp_path))
    with pytest.raises(StageError) as caught:
        cb.compute(returns_a_lock(1), backend="inline")
    assert "returns_a_lock" in caught.value.stage and isinstance(caught.value.__cause__, PicklingError)


@cb.stage(spot=True, image="python:3.11", memory="1GB")
def portable(x: int) -> int:
    return x + 1


def test_cloud_only_options_are_ignored_on_this_machine_and_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CLOUDBURST_CACHE_DIR", str(tmp_path))
    assert cb.compute(portable(1), portable(2), backend="local", spot=False) == (2, 3)
    said = [r.getMessage() for r in caplog.records if "no 'spot' option" in r.getMessage()]
    assert len(said) == 1 and "portable" in said[0]
