"""Run reports of pipelines (issue 12, points 8 and 10): why each call ran, the records kept on disk,
``cloudburst cache why``, the timeline, the progress line. Pure and fast: no executor runs here.

Fingerprints are made by ``stages.keys.fingerprint`` from small user modules written to a temporary
directory, edited and reloaded between the "previous" and the "new" run, as in test_stage_keys.py.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from cloudburst.errors import ConfigurationError
from cloudburst.stages import keys, report
from cloudburst.stages.report import RunReport, StageRecord

from .test_stage_keys import UserModules

CALL = "pipe:stage()#0"


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[UserModules]:
    folder = tmp_path / "modules"
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a .pyc of the same second would hide an edit
    yield UserModules(folder)
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(folder)):
            del sys.modules[name]


@pytest.fixture(autouse=True)
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run records in a folder of this test's own; this process's last run forgotten afterwards."""
    monkeypatch.setenv("CLOUDBURST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(report, "_last", None)
    return tmp_path / "cache" / "stages" / "runs"


def ran(fp: keys.Fingerprint | None, *, call: str = CALL, name: str = "pipe:stage", **fields: Any) -> StageRecord:
    fingerprint = None if fp is None else fp.to_json()
    key = None if fp is None else fp.key()
    values: dict[str, Any] = {"status": "ran", "key": key, "fingerprint": fingerprint, **fields}
    return StageRecord(name=name, call=call, **values)


def run_of(*records: StageRecord, name: str = "pipe", cost: float = 0.0) -> RunReport:
    start = 1_700_000_000.0
    return RunReport(name=name, backend="local", started=start, ended=start + 3, stages=list(records), cost=cost)


def explained(new: keys.Fingerprint, old: keys.Fingerprint) -> str:
    """The explain line of a call whose fingerprint went from ``old`` to ``new``, both runs saved and loaded."""
    report.save_run(run_of(ran(old)))
    previous = report.load_run("pipe")
    current = RunReport.from_json(json.loads(json.dumps(run_of(ran(new)).to_json())))
    report.explain_changes(current, previous)
    return current.explain()


# ---------------------------------------------------------------------------- why did it run


SOURCE = """
    import click

    N = 1000

    def helper(x):
        return x + 1

    def stage(x):
        return helper(x) * N
    """


Make = Callable[[Callable[..., Any]], keys.Fingerprint]


def edit(user: UserModules, old: str, new: str, make: Make) -> tuple[keys.Fingerprint, keys.Fingerprint]:
    """The fingerprints ``make`` gives of the stage before and after replacing ``old`` by ``new`` in its code
    (each taken while its code is the module's: the code is read from the file)."""
    user.write("pipe", SOURCE)
    before = make(user.load("pipe").stage)
    user.write("pipe", SOURCE.replace(old, new))
    return make(user.load("pipe").stage), before


def edit_code(user: UserModules, make: Make) -> tuple[keys.Fingerprint, keys.Fingerprint]:
    return edit(user, "x + 1", "x + 2", make)


def test_why_code_changed(user: UserModules) -> None:
    line = explained(*edit_code(user, lambda stage: keys.fingerprint(stage, (3,))))
    assert line == "stage: ran: code of pipe.helper changed (used by pipe.stage)"


def test_why_a_global_changed(user: UserModules) -> None:
    line = explained(*edit(user, "N = 1000", "N = 2000", lambda stage: keys.fingerprint(stage, (3,))))
    assert line == "stage: ran: global pipe.N changed (1000 → 2000)"


def test_why_an_input_changed(user: UserModules) -> None:
    user.write("pipe", SOURCE)
    stage = user.load("pipe").stage
    line = explained(keys.fingerprint(stage, (4,)), keys.fingerprint(stage, (3,)))
    assert line == "stage: ran: input x changed (3 → 4)"


def test_why_a_package_changed(user: UserModules) -> None:
    user.write("pipe", SOURCE.replace("return helper(x) * N", "return click.style(str(helper(x) * N))"))
    new = keys.fingerprint(user.load("pipe").stage, (3,))
    installed = metadata.version("click")
    assert new.packages.get("click") == installed
    old = keys.Fingerprint.from_json({**new.to_json(), "packages": {**new.packages, "click": "7.0"}})  # an upgrade
    assert explained(new, old) == f"stage: ran: package click 7.0 → {installed}"


def test_why_the_seed_changed(user: UserModules) -> None:
    user.write("pipe", SOURCE)
    stage = user.load("pipe").stage
    line = explained(keys.fingerprint(stage, (3,), seed=f"2/{CALL}"), keys.fingerprint(stage, (3,), seed=f"1/{CALL}"))
    assert line == f"stage: ran: seed 1/{CALL} → 2/{CALL}"


def test_why_the_version_changed(user: UserModules) -> None:
    versions = iter(["1", "2"])  # the code changes too: with version= it does not count
    line = explained(*edit_code(user, lambda stage: keys.fingerprint(stage, (3,), version=next(versions))))
    assert line == "stage: ran: version '1' → '2'"


def test_several_changes_are_one_line(user: UserModules) -> None:
    arguments = iter([3, 4])
    line = explained(*edit_code(user, lambda stage: keys.fingerprint(stage, (next(arguments),))))
    assert line == "stage: ran: code of pipe.helper changed (used by pipe.stage); input x changed (3 → 4)"


def test_why_without_a_change_to_show(user: UserModules) -> None:
    user.write("pipe", SOURCE)
    fp = keys.fingerprint(user.load("pipe").stage, (3,))
    first = run_of(ran(fp), ran(None, call="pipe:other()#0", name="pipe:other"))
    report.explain_changes(first, None)
    assert first.explain().splitlines() == [
        "stage: ran: no previous run of this call recorded",
        "other: ran: cache off",
    ]
    again = run_of(ran(fp))
    report.explain_changes(again, first)  # same key: the entry went missing
    assert again.stages[0].why == ["nothing changed; its cache entry was missing (cleared, expired or unreadable)"]
    report.explain_changes(again, run_of(ran(fp, status="failed", error="ValueError: x")))
    assert again.stages[0].why == ["nothing changed; the previous run of this call failed"]


def test_explain_lines_of_each_status() -> None:
    traceback = 'Traceback (most recent call last):\n  File "p.py", line 3, in x\nValueError: no data\n'
    run = run_of(
        StageRecord("pipe:get_data_y", "pipe:get_data_y()#0", "cached", key="k"),
        StageRecord("pipe:x", "pipe:x()#0", "failed", error=traceback),
        StageRecord("pipe:y", "pipe:y()#0", "skipped", why=["get_data_x failed"]),
        StageRecord("pipe:z", "pipe:z()#0", "cancelled"),
        StageRecord("pipe:fit", "pipe:fit()#0", "ran", key="k1", why=["input x added"]),
        StageRecord("other:fit", "other:fit()#0", "ran", key="k2"),
    )
    report.explain_changes(run, None)  # keys but no fingerprints: nothing to fill
    assert run.explain().splitlines() == [
        "get_data_y: cached",
        "x: failed: ValueError: no data",
        "y: skipped (get_data_x failed)",
        "z: cancelled",
        "fit #1: ran: input x added",
        "fit #2: ran",
    ]


def test_summary_progress_and_html() -> None:
    records = [StageRecord(f"pipe:s{i}", f"pipe:s{i}()#0", "cached") for i in range(9)]
    records += [StageRecord("pipe:<b>", f"pipe:<b>()#{i}", "ran", seconds=1.5, cost=0.01) for i in range(3)]
    run = run_of(*records, cost=0.04)
    assert run.summary() == "12 stages: 9 cached, 3 ran, 0 failed, $0.04"
    assert report.progress_text(23, 40, 3, 14, 1, 0.04) == "stages 23/40 · 3 running · 14 cached · 1 failed · $0.04"
    assert report.progress_text(1, 2, 1, 0, 0, None) == "stages 1/2 · 1 running · 0 cached · 0 failed"
    table = run._repr_html_()
    assert table.count("<tr>") == 13 and "&lt;b&gt; #3" in table and "<b>" not in table


# ---------------------------------------------------------------------------- records on disk


def test_records_round_trip(runs: Path) -> None:
    run = run_of(
        StageRecord("pipe:a", "pipe:a()#0", "ran", key="k" * 64, started=1.0, ended=2.5, worker="w-1",
                    shape={"cpu": 2, "memory": "4GB"}, seconds=1.5, cost=0.001, nbytes=12, why=["input x added"],
                    fingerprint={"stage": "pipe:a", "inputs": {"x": "d"}}),
        StageRecord("pipe:b", "pipe:b(pipe:a()#0)#0", "failed", error="ValueError: bad"),
        name="my pipeline/v2",
        cost=0.25,
    )  # fmt: skip
    run.job_ids.append("job-1")
    path = report.save_run(run)
    assert path.parent == runs and path.name.startswith("my-pipeline-v2-")
    assert report.load_run("my pipeline/v2") == run
    assert report.load_run("my-pipeline-v2") is None  # a name that slugs alike has a record of its own
    assert report.saved_names() == ["my pipeline/v2"]
    assert not [p for p in runs.iterdir() if p.suffix != ".json"]  # no temporary file left behind


def test_last_run_is_this_process_s_then_the_saved_one() -> None:
    assert report.last_run() is None
    saved, mine = run_of(name="saved"), run_of(name="mine")
    report.save_run(saved)
    report.set_last_run(mine)
    assert report.last_run() is mine and report.last_run("mine") is mine
    assert report.last_run("saved") == saved
    assert report.last_run("never") is None


BROKEN_RECORDS = [
    ("not JSON", lambda run: "{"),
    ("not an object", lambda run: "[1, 2]"),
    ("another format", lambda run: json.dumps({**run.to_json(), "format": 99})),
    ("a field missing", lambda run: json.dumps({k: v for k, v in run.to_json().items() if k != "started"})),
    ("another pipeline's", lambda run: json.dumps({**run.to_json(), "name": "other"})),
]


@pytest.mark.parametrize(("case", "text"), BROKEN_RECORDS, ids=[row[0] for row in BROKEN_RECORDS])
def test_an_unreadable_record_is_no_record(case: str, text: Callable[[RunReport], str], runs: Path) -> None:
    run = run_of(StageRecord("pipe:a", "pipe:a()#0", "cached"))
    path = report.save_run(run)
    path.write_text(text(run))
    assert report.load_run("pipe") is None
    report.save_run(run)  # the next run replaces it
    assert report.load_run("pipe") == run


def test_explain_saved(user: UserModules) -> None:
    new, old = edit_code(user, lambda stage: keys.fingerprint(stage, (3,)))
    report.save_run(run_of(ran(old)))
    run = run_of(ran(new), StageRecord("pipe:load", "pipe:load()#0", "cached"))
    report.explain_changes(run, report.load_run("pipe"))
    report.save_run(run)
    text = report.explain_saved("pipe")
    assert text.splitlines()[0].startswith("pipe on local, ")
    assert text.splitlines()[1:] == ["stage: ran: code of pipe.helper changed (used by pipe.stage)", "load: cached"]
    assert report.explain_saved("pipe", stage="pipe:load").splitlines()[1:] == ["load: cached"]
    data = json.loads(report.explain_saved("pipe", stage="stage", as_json=True))
    assert [s["why"] for s in data["stages"]] == [["code of pipe.helper changed (used by pipe.stage)"]]
    assert data["name"] == "pipe" and "fingerprint" not in data["stages"][0]


def test_explain_saved_errors() -> None:
    with pytest.raises(ConfigurationError, match=r"`cloudburst cache why NAME`.*recorded names: none yet"):
        report.explain_saved("pipe")
    report.save_run(run_of(StageRecord("pipe:load", "pipe:load()#0", "cached"), name="alpha"))
    report.save_run(run_of(name="beta"))
    with pytest.raises(ConfigurationError, match=r"no run of pipeline 'pipe'.*recorded names: alpha, beta$"):
        report.explain_saved("pipe")
    with pytest.raises(ConfigurationError, match=r"no call of stage 'fit'; its stages: pipe:load$"):
        report.explain_saved("alpha", stage="fit")


# ---------------------------------------------------------------------------- timeline and data frame


def timed_run() -> RunReport:
    start = time.time()
    return RunReport(
        name="pipe",
        backend="local",
        started=start,
        ended=start + 4,
        stages=[
            StageRecord("pipe:get_data_x", "x()#0", "ran", started=start + 0.5, ended=start + 1.5, worker="w-1"),
            StageRecord("pipe:get_data_y", "y()#0", "cached", started=start, ended=start + 0.05),
            StageRecord("pipe:build_model", "m()#0", "failed", started=start + 1.6, ended=start + 3.9, worker="w-2"),
            StageRecord("pipe:report", "r()#0", "skipped", why=["build_model failed"]),
        ],
    )


def test_text_timeline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as when matplotlib is not installed
    text = timed_run().timeline(tmp_path / "timeline.txt")
    assert isinstance(text, str) and (tmp_path / "timeline.txt").read_text() == text + "\n"
    lines = text.splitlines()
    assert lines[0] == "pipe on local: 4 stages: 1 cached, 1 ran, 1 failed, 1 skipped, $0.00"
    for stage, status in [("get_data_x", "ran"), ("get_data_y", "cached"), ("build_model", "failed")]:
        (line,) = [line for line in lines if line.startswith(stage)]
        assert f"| {status} " in line
    assert lines[-1].startswith("report ") and lines[-1].endswith("| skipped")  # untimed: last, no bar
    bars = [line.split("|")[1] for line in lines[2:4]]
    assert lines[2].startswith("get_data_y") and bars[0].startswith("·")  # in start order: at the very start
    assert lines[3].startswith("get_data_x") and bars[1].startswith(" ") and "█" in bars[1]  # a little later


def test_matplotlib_timeline(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    figure = timed_run().timeline(tmp_path / "timeline.png")
    assert (tmp_path / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (axes,) = figure.axes
    assert [label.get_text() for label in axes.get_yticklabels()] == ["w-1", "w-2", "client"]
    assert len(axes.patches) == 3  # the skipped call has no bar


def test_to_dataframe() -> None:
    pytest.importorskip("pandas")
    frame = timed_run().to_dataframe()
    assert list(frame.columns) == [
        "label", "name", "call", "status", "started", "ended", "seconds", "worker", "shape", "cost", "nbytes",
        "key", "why", "error",
    ]  # fmt: skip
    assert list(frame["status"]) == ["ran", "cached", "failed", "skipped"]
    assert str(frame["started"].dtype).startswith("datetime64") and frame["why"].iloc[3] == "build_model failed"


def test_to_dataframe_without_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="needs pandas: pip install pandas"):
        timed_run().to_dataframe()


LIMIT = 10


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
    assert missing.exit_code != 0 and "nightly" in missing.output
