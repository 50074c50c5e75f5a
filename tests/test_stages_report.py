"""Run reports of stages: why each call ran, kept across processes, and drawn as a timeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudburst.errors import ConfigurationError
from cloudburst.stages import report as reports
from cloudburst.stages.keys import fingerprint
from cloudburst.stages.report import RunReport, StageRecord

LIMIT = 10


def scaled(x: int) -> int:
    return x * LIMIT


def scaled_more(x: int) -> int:
    return x * LIMIT + 1


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDBURST_CACHE_DIR", str(tmp_path))


def record(status: str = "ran", call: str = "scaled()#0", **kw: object) -> StageRecord:
    return StageRecord(name="tests:scaled", call=call, status=status, **kw)  # type: ignore[arg-type]


def run(*records: StageRecord, name: str = "r") -> RunReport:
    return RunReport(name=name, backend="local", started=100.0, ended=110.0, stages=list(records), cost=0.5)


def test_why_names_the_changed_input_and_the_changed_global() -> None:
    global LIMIT
    before = fingerprint(scaled, (1,))
    LIMIT = 20
    try:
        after = fingerprint(scaled, (2,))
    finally:
        LIMIT = 10
    old = run(record(key=before.key(), fingerprint=before.to_json()))
    new = run(record(key=after.key(), fingerprint=after.to_json()))
    reports.explain_changes(new, old)
    why = " | ".join(new.stages[0].why)
    assert "LIMIT" in why and "10 → 20" in why, why
    assert "input x changed" in why and "1 → 2" in why, why


def test_why_for_a_first_run_and_for_cache_off() -> None:
    print_ = fingerprint(scaled, (1,))
    new = run(record(key=print_.key(), fingerprint=print_.to_json()), record(call="other#0"))
    reports.explain_changes(new, None)
    assert new.stages[0].why == ["no previous run of this call recorded"]
    assert new.stages[1].why == ["cache off"]


def test_reports_are_kept_and_explained_by_name() -> None:
    kept = run(record(status="cached"), record(status="failed", call="x#0", error="ValueError: bad"), name="nightly")
    reports.save_run(kept)
    loaded = reports.last_run("nightly")
    assert loaded is not None and loaded.to_json() == kept.to_json()
    text = reports.explain_saved("nightly")
    assert "scaled: cached" in text and "scaled: failed: ValueError: bad" in text
    assert "1 cached" in text and "1 failed" in text
    assert '"status": "cached"' in reports.explain_saved("nightly", as_json=True)
    with pytest.raises(ConfigurationError, match=r"no run named 'weekly'.*known runs: nightly"):
        reports.explain_saved("weekly")


def test_last_run_is_this_process_s_last_report() -> None:
    first, second = run(name="a"), run(name="b")
    reports.set_last_run(first)
    reports.set_last_run(second)
    assert reports.last_run() is second


def test_the_timeline_shows_every_call(tmp_path: Path) -> None:
    report = run(
        record(started=101.0, ended=105.0, worker="w1", seconds=4.0),
        record(status="cached", call="y#0"),
    )
    assert report._text_timeline().count("scaled") == 2
    picture = tmp_path / "timeline.png"
    drawn = report.timeline(picture)
    assert picture.exists() and picture.stat().st_size > 0
    assert drawn is not None


def test_summary_dataframe_and_html() -> None:
    report = run(record(seconds=2.0), record(status="cached", call="y#0"))
    assert report.summary().startswith("2 stages: 1 cached, 1 ran, 0 failed, $0.50")
    assert "<table>" in report._repr_html_()
    pandas = pytest.importorskip("pandas")
    frame = report.to_dataframe()
    assert isinstance(frame, pandas.DataFrame) and list(frame["status"]) == ["ran", "cached"]


def test_progress_text() -> None:
    assert reports.progress_text(23, 40, 3, 14, 1, 0.04) == "stages 23/40 · 3 running · 14 cached · 1 failed · $0.04"


def test_cache_why_explains_the_last_run_of_a_name() -> None:
    from click.testing import CliRunner

    import cloudburst as cb
    from cloudburst.cli import main

    @cb.stage
    def grow(x: int) -> int:
        return x + LIMIT

    cb.compute(grow(1), backend="inline", name="nightly")
    cb.compute(grow(2), backend="inline", name="nightly")
    result = CliRunner().invoke(main, ["cache", "why", "nightly"])
    assert result.exit_code == 0, result.output
    assert "grow: ran: input x changed (1 → 2)" in result.output, result.output
    missing = CliRunner().invoke(main, ["cache", "why", "weekly"])
    assert missing.exit_code != 0 and "known runs: nightly" in missing.output
