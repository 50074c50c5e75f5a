"""What cloudburst says goes through the ``cloudburst`` logger: printed as before by default, silenced
by its level, captured by a handler of one's own."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

import cloudburst

from .test_hardening_core import die_once

LOGGER = logging.getLogger("cloudburst")


@pytest.fixture
def restored_logger() -> Iterator[logging.Logger]:
    level, handlers = LOGGER.level, list(LOGGER.handlers)
    yield LOGGER
    LOGGER.setLevel(level)
    LOGGER.handlers[:] = handlers


def _run_a_task_whose_worker_dies(tmp_path: Path) -> int:
    with cloudburst.Executor(1) as ex:
        return int(ex.submit(die_once, 5, str(tmp_path / "died")).result(timeout=60))


def test_by_default_it_prints_a_line_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restored_logger: logging.Logger
) -> None:
    assert _run_a_task_whose_worker_dies(tmp_path) == 5
    err = capsys.readouterr().err
    assert "cloudburst: worker " in err and "died" in err, err


def test_its_level_silences_it_and_a_handler_of_ones_own_gets_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restored_logger: logging.Logger
) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    restored_logger.handlers[:] = [handler]
    assert _run_a_task_whose_worker_dies(tmp_path) == 5
    assert any("died" in r.getMessage() and r.levelno == logging.INFO for r in records), records
    assert "cloudburst: worker" not in capsys.readouterr().err  # the default handler was replaced

    records.clear()
    restored_logger.setLevel(logging.WARNING)
    (tmp_path / "again").mkdir()
    assert _run_a_task_whose_worker_dies(tmp_path / "again") == 5
    assert not [r for r in records if r.levelno < logging.WARNING], records
