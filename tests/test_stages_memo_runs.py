"""Memoization seen from runs: a pipeline in a module of the user's, edited between two computes and
reloaded, reruns exactly what the edit changed (the key-level cases are in test_stage_keys.py)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import cloudburst as cb

PIPELINE = """
import cloudburst as cb

SCALE = 2


def helper(x):
    return x * SCALE


@cb.stage
def source(n):
    return list(range(n))


@cb.stage
def middle(values):
    return sum(values) % 7


@cb.stage(cpu=1)
def final(value):
    return helper(value)


def pipeline(n):
    return final(middle(source(n)))
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    monkeypatch.setenv("CLOUDBURST_CACHE_DIR", str(tmp_path / "cache"))
    name = f"userpipe_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "src" / f"{name}.py"
    path.parent.mkdir()
    path.write_text(PIPELINE)
    monkeypatch.syspath_prepend(str(path.parent))
    yield path, name
    sys.modules.pop(name, None)


def load(path: Path, name: str, text: str | None = None) -> ModuleType:
    if text is not None:
        path.write_text(text)
    importlib.invalidate_caches()
    if name in sys.modules:
        return importlib.reload(sys.modules[name])
    return importlib.import_module(name)


def statuses(module: ModuleType, n: int = 10) -> dict[str, str]:
    _, report = cb.compute(module.pipeline(n), backend="local", workers=2, report=True)
    return {record.name.split(":")[-1]: record.status for record in report.stages}


def test_formatting_and_comments_do_not_rerun(user_module: tuple[Path, str]) -> None:
    path, name = user_module
    assert set(statuses(load(path, name)).values()) == {"ran"}
    edited = PIPELINE.replace("def helper(x):\n", "def helper(x):  # doubles\n    '''Doubles.'''\n\n")
    edited = edited.replace("return sum(values) % 7", "return (\n        sum(values)\n        % 7\n    )")
    assert set(statuses(load(path, name, edited)).values()) == {"cached"}


EDITS = [
    # an edited helper reruns only the stage that calls it (joblib#1621)
    ("return x * SCALE", "return x * SCALE + 1", {"source": "cached", "middle": "cached", "final": "ran"}),
    # a changed module constant reruns its readers (redun#99)
    ("SCALE = 2", "SCALE = 3", {"source": "cached", "middle": "cached", "final": "ran"}),
    # early cutoff: middle's code changes but it returns the same number, so final does not rerun
    (
        "return sum(values) % 7",
        "return sum(v for v in values) % 7",
        {"source": "cached", "middle": "ran", "final": "cached"},
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), EDITS, ids=["helper", "module-constant", "early-cutoff"])
def test_an_edit_reruns_what_it_changed(
    user_module: tuple[Path, str], old: str, new: str, expected: dict[str, str]
) -> None:
    path, name = user_module
    statuses(load(path, name))
    assert statuses(load(path, name, PIPELINE.replace(old, new))) == expected


def test_resources_are_not_in_the_key_and_version_replaces_code(user_module: tuple[Path, str]) -> None:
    path, name = user_module
    statuses(load(path, name))
    assert set(statuses(load(path, name, PIPELINE.replace("@cb.stage(cpu=1)", "@cb.stage(cpu=2)"))).values()) == {
        "cached"
    }
    versioned = PIPELINE.replace("@cb.stage(cpu=1)", '@cb.stage(cpu=1, version="1")')
    assert statuses(load(path, name, versioned))["final"] == "ran"
    edited = versioned.replace("return helper(value)", "return helper(value) + 0")
    assert statuses(load(path, name, edited))["final"] == "cached"  # version= stands in for the code
    assert statuses(load(path, name, edited.replace('version="1"', 'version="2"')))["final"] == "ran"


def test_explain_says_what_changed(user_module: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    path, name = user_module
    cb.compute(load(path, name).pipeline(10), backend="local", name="explained")
    module = load(path, name, PIPELINE.replace("SCALE = 2", "SCALE = 5"))
    cb.compute(module.pipeline(10), backend="local", name="explained", explain=True)
    printed = capsys.readouterr().out
    assert "SCALE" in printed and "2 → 5" in printed, printed
    assert "cached" in printed


def test_concurrent_runs_share_one_cache(user_module: tuple[Path, str], tmp_path: Path) -> None:
    path, name = user_module
    script = textwrap.dedent(
        f"""
        import cloudburst as cb, {name} as m
        print(cb.compute(m.pipeline(50), backend="local", workers=1))
        """
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(path.parent)}
    runs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [run.communicate(timeout=180)[0].strip() for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    expected = str(sum(range(50)) % 7 * 2)
    assert outputs == [expected, expected]
    assert set(statuses(load(path, name), 50).values()) == {"cached"}
