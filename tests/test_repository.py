"""The repository keeps its promises: the public API is complete, and CI runs the README's test command."""

from __future__ import annotations

import re
import types
from pathlib import Path

import cloudburst
import cloudburst.errors

ROOT = Path(__file__).resolve().parent.parent


def test_all_lists_every_public_name() -> None:
    public = {name for name in vars(cloudburst) if not name.startswith("_") and name not in {"annotations"}}
    # submodules are attributes of the package once imported; they are not names of its API
    modules = {name for name, value in vars(cloudburst).items() if isinstance(value, types.ModuleType)}
    assert set(cloudburst.__all__) == public - modules | {"errors", "__version__"}


def test_every_error_is_exported_and_drawn_in_the_hierarchy() -> None:
    doc = cloudburst.errors.__doc__ or ""
    for name in cloudburst.errors.__all__:
        assert name in cloudburst.__all__, name
        assert name in doc, f"{name} is missing from the hierarchy drawn in errors.py"
        assert issubclass(getattr(cloudburst.errors, name), cloudburst.CloudburstError)


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_readme_gives_exactly_two_commands_and_ci_runs_the_test_one() -> None:
    commands = readme_commands()
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert "examples/monte_carlo.py" in main_job
    assert "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()
