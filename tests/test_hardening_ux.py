"""What a new user sees: the progress bar, settings checked where they are set, messages that say what is true,
and emulated jobs that stay in the emulator."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import cloudburst
from cloudburst.config import userconfig
from cloudburst.config.options import parse_memory
from cloudburst.core.words import plural
from cloudburst.detached import jobs_dir
from cloudburst.emulator import Emulator

from .conftest import _PRIVATE

# ---------------------------------------------------------------------------- the progress bar


class Terminal(io.StringIO):
    """stdout and stderr in one, as a terminal shows them."""

    def lines(self) -> list[str]:
        """The screen's lines: a carriage return goes back to the line's start and later text overwrites."""
        screen: list[str] = []
        line: list[str] = []
        column = 0
        for char in self.getvalue():
            if char == "\n":
                screen.append("".join(line).rstrip())
                line, column = [], 0
            elif char == "\r":
                column = 0
            else:
                if column < len(line):
                    line[column] = char
                else:
                    line.append(char)
                column += 1
        if line:
            screen.append("".join(line).rstrip())
        return screen


@contextlib.contextmanager
def terminal() -> Iterator[Terminal]:
    """Within the block, stdout and stderr go to one Terminal (set here: pytest resets them per phase)."""
    screen = Terminal()
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = screen
    try:
        yield screen
    finally:
        sys.stdout, sys.stderr = saved


def hello(x: int, nap: float = 0.0) -> int:
    time.sleep(nap)
    print(f"hello {x}")
    return x


def bar_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("cloudburst:") and "item" in line]


def test_a_quick_map_shows_no_bar_or_a_finished_one() -> None:
    with terminal() as screen:
        assert cloudburst.map(hello, range(4), workers=2, progress=True) == [0, 1, 2, 3]
        print("NEXT")
    lines = screen.lines()
    for x in range(4):
        assert f"[item {x}] hello {x}" in lines, lines  # each relayed line on a line of its own
    assert lines[-1] == "NEXT", lines
    for bar in bar_lines(lines):  # a slow machine may show one; then it ends finished, on its own line
        assert "4/4" in bar, lines


def test_relayed_output_goes_above_a_shown_bar_never_on_its_line() -> None:
    # The items print after 1.5 s, long after the bar appears (0.75 s after the work is submitted).
    with terminal() as screen:
        assert cloudburst.map(hello, range(2), [1.5] * 2, workers=2, chunksize=1, progress=True) == [0, 1]
        print("NEXT")
    raw, lines = screen.getvalue(), screen.lines()
    assert raw.index("cloudburst:") < raw.index("[item "), "the bar was not shown before the output came"
    assert {"[item 0] hello 0", "[item 1] hello 1"} <= set(lines), lines
    bars = bar_lines(lines)
    assert len(bars) == 1 and "2/2" in bars[0], lines  # redrawn below the output; left finished
    assert lines[-2:] == [bars[0], "NEXT"], lines


NOTEBOOK = """
import sys, time, types, warnings

class ZMQInteractiveShell:  # what IPython's get_ipython() returns in a Jupyter kernel
    config = {"IPKernelApp": {}}

ipython = types.ModuleType("IPython")
ipython.get_ipython = lambda: ZMQInteractiveShell()
sys.modules["IPython"] = ipython
for name in ("ipykernel", "ipykernel.zmqshell"):  # loaded in every Jupyter kernel
    sys.modules[name] = types.ModuleType(name)
sys.modules["ipywidgets"] = None  # not installed

from cloudburst.core.progress import Progress, wanted

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert wanted("auto")
    progress = Progress(0, enabled=True)
    progress.grow(3)
    deadline = time.monotonic() + 30
    while getattr(progress, "bar", None) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    print(type(getattr(progress, "bar", None)).__module__)
    progress.advance(3)
    progress.close()
print([f"{w.category.__name__}: {w.message}" for w in caught])
"""


def test_in_a_notebook_without_ipywidgets_the_bar_is_text_and_nothing_warns(tmp_path: Path) -> None:
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["tqdm.std", "[]"], done.stdout  # the text bar, and no warning
    assert "3/3" in done.stderr and done.stderr.endswith("\n"), done.stderr


# ---------------------------------------------------------------------------- settings checked where they are set


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CLOUDBURST_CONFIG_DIR", str(tmp_path))
    return tmp_path


def test_config_set_refuses_a_cpu_that_fargate_does_not_offer(config_dir: Path) -> None:
    with pytest.raises(cloudburst.ConfigurationError, match=r"cpu='3' .*0\.25, 0\.5, 1, 2, 4, 8, 16"):
        userconfig.set_value("cpu", "3")
    assert not (config_dir / "config.toml").exists()
    assert userconfig.set_value("cpu", "0.5") == 0.5


def test_a_misspelt_setting_is_refused_with_the_one_meant(config_dir: Path) -> None:
    with pytest.raises(cloudburst.ConfigurationError, match=r"unknown setting 'memmory' \(did you mean 'memory'\?\)"):
        userconfig.set_value("memmory", "2GB")
    with pytest.raises(cloudburst.ConfigurationError, match=r"unknown setting 'wokers' \(did you mean 'workers'\?\)"):
        userconfig.unset_value("wokers")


def test_a_bad_value_in_the_file_names_its_fix_and_unset_removes_it(config_dir: Path) -> None:
    (config_dir / "config.toml").write_text("[defaults]\ncpu = 32\nworkers = 4\n")
    with pytest.raises(cloudburst.ConfigurationError, match=r"cpu.*`cloudburst config unset cpu`"):
        userconfig.load()
    userconfig.unset_value("cpu")
    assert userconfig.load() == {"workers": 4}


@pytest.mark.parametrize("value", [2048, "2048", 1500.0])
def test_a_bare_memory_number_above_1024_gib_is_refused_as_meant_in_mib(value: object, config_dir: Path) -> None:
    with pytest.raises(cloudburst.ConfigurationError, match=r"bare number means GiB.*did you mean memory='\d+MB'"):
        parse_memory(value)
    with pytest.raises(cloudburst.ConfigurationError, match=r"bare number means GiB"):
        userconfig.set_value("memory", str(value))


def test_memory_2048_in_the_python_api_suggests_2048mb_and_2gb() -> None:
    with pytest.raises(cloudburst.ConfigurationError) as caught:
        cloudburst.Executor(1, memory=2048)
    assert "'2048MB'" in str(caught.value) and "'2GB'" in str(caught.value)
    assert parse_memory(1024) == 1024 * 1024  # the largest bare number still taken as GiB
    assert parse_memory(4) == 4096


# ---------------------------------------------------------------------------- messages say what is true


def test_numbers_meet_their_nouns_in_the_right_number() -> None:
    assert plural(1, "worker") == "1 worker"
    assert plural(2, "worker") == "2 workers"
    assert plural(0, "worker") == "0 workers"
    assert plural(1.0, "vCPU") == "1 vCPU"
    assert plural(0.5, "vCPU") == "0.5 vCPUs"
    assert plural(10_000, "item") == "10,000 items"


def test_a_one_worker_fargate_run_says_1_worker_and_that_its_prices_are_emulated(
    emulator: Emulator, capfd: pytest.CaptureFixture[str]
) -> None:
    assert cloudburst.map(abs, [-1, -2], workers=1, backend="fargate", progress=False) == [1, 2]
    announced = [line for line in capfd.readouterr().err.splitlines() if "≈ $" in line]
    assert announced and "starting 1 worker ×" in announced[0], announced
    assert "prices: EMULATED: the emulator's Price List stub" in announced[0], announced


def test_an_estimate_under_the_emulator_says_its_prices_are_the_emulators(emulator: Emulator) -> None:
    found = cloudburst.estimate(abs, [1, 2, 3], workers=1)
    assert "EMULATED" in found.prices_source
    assert "3 items" in str(found) and "on 1 worker " in str(found) and "EMULATED" in str(found)


# ---------------------------------------------------------------------------- emulated runs stay emulated


def test_a_detached_job_made_under_the_emulator_is_recorded_in_the_emulators_folder(emulator: Emulator) -> None:
    assert jobs_dir() == emulator.folder / "jobs"
    job_id = cloudburst.submit_job(abs, [-1, -2, -3], workers=1)
    assert (emulator.folder / "jobs" / job_id / "job.json").exists()
    assert not (_PRIVATE / "jobs" / job_id).exists(), "recorded among the user's own jobs"
    assert job_id in {job.job_id for job in cloudburst.jobs()}
    assert cloudburst.attach(job_id).results(timeout=90) == [1, 2, 3]


def test_the_emulator_keeps_settings_records_and_caches_in_its_folder_and_removes_it(emulator: Emulator) -> None:
    for name, sub in (("CLOUDBURST_CONFIG_DIR", "config"), ("CLOUDBURST_JOBS_DIR", "jobs")):
        assert os.environ[name] == str(emulator.folder / sub)
        assert emulator.environment[name] == str(emulator.folder / sub)
    assert userconfig.config_path().is_relative_to(emulator.folder)
