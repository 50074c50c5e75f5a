"""Cache keys of stage calls (issue 12, point 7): for each case, what must change a key and what must not.

The user's modules are written into a temporary directory and imported; a test edits a file, reloads the
module and compares the keys of the old and the new code. The peers' failures each case guards against:
joblib.Memory misses a changed helper (joblib#1621) and reruns on an edited print (joblib#1710); redun
misses a changed module constant (insitro/redun#99); Prefect misses nested code (PrefectHQ/prefect#16925)
and gives identical bodies with different closures one key (PrefectHQ/prefect#23062).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudburst.errors import StageHashError
from cloudburst.stages import keys
from cloudburst.stages.codehash import CodeHasher, is_user_module
from cloudburst.stages.valuehash import digest


class UserModules:
    """Writes the user's modules into ``root`` (on ``sys.path``), imports and reloads them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._clock = time.time_ns()

    def write(self, name: str, source: str) -> Path:
        path = self.root / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        # A later mtime on every write, however fast the test: an edit is never taken for the old file.
        self._clock += 2_000_000_000
        os.utime(path, ns=(self._clock, self._clock))
        importlib.invalidate_caches()
        return path

    def load(self, *names: str) -> types.ModuleType:
        """Imports (or reloads) ``names`` in order; returns the last. Reload a helper before its users."""
        module = None
        for name in names:
            module = importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
        assert module is not None
        return module


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[UserModules]:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a .pyc of the same second would hide an edit
    yield UserModules(tmp_path)
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def key(fn: Callable[..., Any], *args: Any, version: str | None = None, **kwargs: Any) -> str:
    """The key of ``fn(*args, **kwargs)``, hashed afresh (one hasher per compute, one compute per key)."""
    return keys.fingerprint(fn, args, kwargs, version=version).key()


def why(new: Callable[..., Any], old: keys.Fingerprint, *args: Any) -> list[str]:
    return [str(change) for change in keys.fingerprint(new, args).diff(old)]


# ---------------------------------------------------------------------------- joblib#1621: a changed helper


def test_a_changed_helper_changes_the_key(user: UserModules) -> None:
    source = """
        def helper(x):
            return x + 1

        def unused(x):
            return x - 1

        def stage(x):
            return helper(x) * 2
        """
    user.write("pipe_helper", source)
    mod = user.load("pipe_helper")
    before, fp = key(mod.stage, 3), keys.fingerprint(mod.stage, (3,))
    assert "pipe_helper:helper" in fp.code

    user.write("pipe_helper", source.replace("return x - 1", "return x - 2"))  # code the stage never reaches
    assert key(user.load("pipe_helper").stage, 3) == before

    user.write("pipe_helper", source.replace("return x + 1", "return x + 2"))
    mod = user.load("pipe_helper")
    assert key(mod.stage, 3) != before
    assert why(mod.stage, fp, 3) == ["code of pipe_helper.helper changed (used by pipe_helper.stage)"]


# ---------------------------------------------------------------------------- joblib#1710: edited prints


DEBUGGED = '''
    import logging
    log = logging.getLogger(__name__)

    def stage(xs):
        """Sum the items."""
        print("summing", len(xs), "items")
        log.info("got %d items", len(xs))
        total = sum(xs)  # the result
        return total
    '''

NOT_COUNTED = {
    "comment": DEBUGGED.replace("# the result", "# what we return"),
    "blank lines": DEBUGGED.replace("total = sum(xs)  # the result", "\n\n        total = sum(xs)  # the result\n"),
    "formatting": DEBUGGED.replace("total = sum(xs)", "total = sum(\n            xs,\n        )"),
    "docstring": DEBUGGED.replace('"""Sum the items."""', '"""Add the items up (a longer docstring)."""'),
    "print message": DEBUGGED.replace('"summing", len(xs), "items"', 'f"adding {len(xs)} items", flush=True'),
    "log message": DEBUGGED.replace('"got %d items"', '"received %d items"'),
    "print removed": DEBUGGED.replace('print("summing", len(xs), "items")', ""),
}
COUNTED = {
    "body": DEBUGGED.replace("total = sum(xs)", "total = sum(xs) + 1"),
    "print that changes the data": DEBUGGED.replace('print("summing", len(xs), "items")', "print(xs.pop())"),
    "print to a file": DEBUGGED.replace('"summing", len(xs), "items"', '"summing", file=open("log.txt", "a")'),
    "log call that calls code": DEBUGGED.replace('"got %d items", len(xs)', '"got %d items", xs.pop()'),
}


def test_an_edited_message_comment_docstring_or_formatting_keeps_the_key(user: UserModules) -> None:
    user.write("pipe_debug", DEBUGGED)
    before = key(user.load("pipe_debug").stage, [1, 2, 3])
    for what, source in NOT_COUNTED.items():
        user.write("pipe_debug", source)
        assert key(user.load("pipe_debug").stage, [1, 2, 3]) == before, what
    for what, source in COUNTED.items():
        user.write("pipe_debug", source)
        assert key(user.load("pipe_debug").stage, [1, 2, 3]) != before, what


def test_a_print_of_a_global_does_not_make_it_count(user: UserModules) -> None:
    source = """
        LABEL = "run 1"

        def stage(x):
            print("stage", LABEL, x)
            return x
        """
    user.write("pipe_label", source)
    mod = user.load("pipe_label")
    assert "pipe_label:LABEL" not in keys.fingerprint(mod.stage, (1,)).globals
    before = key(mod.stage, 1)
    user.write("pipe_label", source.replace("run 1", "run 2"))
    assert key(user.load("pipe_label").stage, 1) == before


# ---------------------------------------------------------------------------- redun#99: module constants


def test_a_changed_module_constant_changes_the_key(user: UserModules) -> None:
    user.write("pipe_cfg", "N = 10\nOTHER = 1\n")
    source = """
        import pipe_cfg

        num_observations = 1000
        UNUSED = "a"

        def stage(x):
            return x * num_observations + pipe_cfg.N
        """
    user.write("pipe_consts", source)
    mod = user.load("pipe_cfg", "pipe_consts")
    before, fp = key(mod.stage, 1), keys.fingerprint(mod.stage, (1,))

    user.write("pipe_consts", source.replace('UNUSED = "a"', 'UNUSED = "b"'))
    user.write("pipe_cfg", "N = 10\nOTHER = 2\n")  # attributes of the module the stage does not read
    assert key(user.load("pipe_cfg", "pipe_consts").stage, 1) == before

    user.write("pipe_consts", source.replace("= 1000", "= 2000"))
    mod = user.load("pipe_consts")
    assert key(mod.stage, 1) != before
    assert why(mod.stage, fp, 1) == ["global pipe_consts.num_observations changed (1000 → 2000)"]

    user.write("pipe_consts", source)
    user.write("pipe_cfg", "N = 11\nOTHER = 1\n")
    mod = user.load("pipe_cfg", "pipe_consts")
    assert key(mod.stage, 1) != before
    assert why(mod.stage, fp, 1) == ["global pipe_cfg.N changed (10 → 11)"]


# ---------------------------------------------------------------------------- Prefect#16925: nested code


NESTED = """
    import pipe_lib

    class Model:
        scale = 2

        def fit(self, x):
            return x * self.scale

    def stage(x):
        def inner(y):
            return y + 1
        return pipe_lib.prepare(Model().fit(inner(x)))
    """


def test_nested_code_changes_the_key(user: UserModules) -> None:
    """A function defined inside the stage, a method of a user class, a helper of a helper in another
    user module: each edit reruns; an edit of code none of them reaches does not."""
    deep = "def clean(x):\n    return abs(x)\n\ndef unused():\n    return 0\n"
    user.write("pipe_deep", deep)
    user.write("pipe_lib", "from pipe_deep import clean\n\ndef prepare(x):\n    return clean(x) + 0\n")
    user.write("pipe_nested", NESTED)
    mod = user.load("pipe_deep", "pipe_lib", "pipe_nested")
    before, fp = key(mod.stage, 1), keys.fingerprint(mod.stage, (1,))
    assert {"pipe_nested:Model", "pipe_nested:Model.fit", "pipe_lib:prepare", "pipe_deep:clean"} <= set(fp.code)

    user.write("pipe_deep", deep.replace("return 0", "return 1"))
    assert key(user.load("pipe_deep", "pipe_lib", "pipe_nested").stage, 1) == before

    edits = {
        "pipe_nested.stage": NESTED.replace("return y + 1", "return y + 2"),
        "pipe_nested.Model.fit": NESTED.replace("x * self.scale", "x * self.scale * 1"),
        "pipe_nested.Model": NESTED.replace("scale = 2", "scale = 3"),
    }
    for what, source in edits.items():
        user.write("pipe_nested", source)
        mod = user.load("pipe_nested")
        assert key(mod.stage, 1) != before, what
        assert any(what in line for line in why(mod.stage, fp, 1)), what
    user.write("pipe_nested", NESTED)
    user.write("pipe_deep", deep.replace("abs(x)", "abs(x) + 1"))
    mod = user.load("pipe_deep", "pipe_lib", "pipe_nested")
    assert why(mod.stage, fp, 1) == ["code of pipe_deep.clean changed (used by pipe_nested.stage)"]


MEMBERS = """
    import functools

    class Series:
        def __init__(self, values):
            self.values = values

        @property
        def total(self):
            return sum(self.values)

        @functools.cached_property
        def mean(self):
            return self.total / len(self.values)

        @staticmethod
        def zero():
            return 0

        @classmethod
        def empty(cls):
            return cls([cls.zero()])

    def stage(values):
        return Series(values).mean, Series.empty().total
    """


def test_every_kind_of_method_counts(user: UserModules) -> None:
    user.write("pipe_members", MEMBERS)
    before = key(user.load("pipe_members").stage, [1, 2])
    edits = {
        "property": MEMBERS.replace("sum(self.values)", "sum(self.values) + 0"),
        "cached_property": MEMBERS.replace("self.total / len", "self.total // len"),
        "staticmethod": MEMBERS.replace("return 0", "return 1"),
        "classmethod": MEMBERS.replace("cls([cls.zero()])", "cls([])"),
    }
    for what, source in edits.items():
        user.write("pipe_members", source)
        assert key(user.load("pipe_members").stage, [1, 2]) != before, what


def test_imports_inside_the_stage_are_followed(user: UserModules) -> None:
    user.write("pipe_inlib", "def helper(x):\n    return x + 1\n")
    source = """
        def stage(x):
            import pipe_inlib
            from pipe_inlib import helper
            return pipe_inlib.helper(x) + helper(x)
        """
    user.write("pipe_inside", source)
    mod = user.load("pipe_inside")
    before = key(mod.stage, 1)
    user.write("pipe_inlib", "def helper(x):\n    return x + 2\n")
    assert key(user.load("pipe_inlib", "pipe_inside").stage, 1) != before

    user.write("pipe_rel.__init__", "")
    user.write("pipe_rel.tools", "def clean(x):\n    return x\n")
    user.write("pipe_rel.run", "def stage(x):\n    from .tools import clean\n    return clean(x)\n")
    before = key(user.load("pipe_rel.tools", "pipe_rel.run").stage, 1)
    user.write("pipe_rel.tools", "def clean(x):\n    return -x\n")
    assert key(user.load("pipe_rel.tools", "pipe_rel.run").stage, 1) != before


def test_a_module_used_whole_counts_whole_as_loaded(user: UserModules) -> None:
    source = "def helper(x):\n    return x + 1\n\nLIMIT = 5\n"
    user.write("pipe_whole_lib", source)
    user.write("pipe_whole", "import pipe_whole_lib as lib\n\ndef stage(x):\n    return getattr(lib, 'helper')(x)\n")
    mod = user.load("pipe_whole_lib", "pipe_whole")
    before = key(mod.stage, 1)
    user.write("pipe_whole_lib", source.replace("x + 1", "x + 2"))
    stale = key(mod.stage, 1)  # edited, not reloaded: the loaded code, by its bytecode
    user.load("pipe_whole_lib")
    assert key(mod.stage, 1) not in (before, stale)
    user.write("pipe_whole_lib", source.replace("LIMIT = 5", "LIMIT = 6"))
    user.load("pipe_whole_lib")
    assert key(mod.stage, 1) != before


def test_a_changed_dataclass_default_changes_the_key(user: UserModules) -> None:
    source = """
        from dataclasses import dataclass

        @dataclass
        class Settings:
            rate: float = 0.5

        def stage(x):
            return x * Settings().rate
        """
    user.write("pipe_dc", source)
    before = key(user.load("pipe_dc").stage, 1)
    user.write("pipe_dc", source.replace("# nothing", ""))
    assert key(user.load("pipe_dc").stage, 1) == before  # reloading alone changes nothing
    user.write("pipe_dc", source.replace("0.5", "0.25"))
    assert key(user.load("pipe_dc").stage, 1) != before


def test_mutual_recursion_and_enums_are_hashed(user: UserModules) -> None:
    source = """
        import enum

        class Color(enum.Enum):
            RED = 1
            BLUE = 2

        def even(n):
            return n == 0 or odd(n - 1)

        def odd(n):
            return n != 0 and even(n - 1)

        def stage(n):
            return even(n), Color.RED
        """
    user.write("pipe_rec", source)
    before = key(user.load("pipe_rec").stage, 4)
    assert key(user.load("pipe_rec").stage, 4) == before
    user.write("pipe_rec", source.replace("RED = 1", "RED = 3"))
    assert key(user.load("pipe_rec").stage, 4) != before
    user.write("pipe_rec", source.replace("n != 0 and", "n > 0 and"))
    assert key(user.load("pipe_rec").stage, 4) != before


def test_code_inside_values_counts(user: UserModules) -> None:
    """A global holding an instance of a user class, or user functions in a dict, and an argument that is
    such an instance: the code of their methods and functions counts."""
    source = """
        class Scaler:
            def __init__(self, k):
                self.k = k

            def apply(self, x):
                return x * self.k

        def double(x):
            return 2 * x

        SCALER = Scaler(3)
        STEPS = {"double": double}

        def stage(x, extra):
            return STEPS["double"](SCALER.apply(x)) + extra.apply(x)
        """
    user.write("pipe_values", source)
    mod = user.load("pipe_values")
    before, fp = key(mod.stage, 1, mod.Scaler(2)), keys.fingerprint(mod.stage, (1, mod.Scaler(2)))
    assert {"pipe_values:Scaler.apply", "pipe_values:double"} <= set(fp.code)
    assert key(mod.stage, 1, mod.Scaler(2)) == before

    user.write("pipe_values", source.replace("return 2 * x", "return x + x + 1"))
    mod = user.load("pipe_values")
    assert why(mod.stage, fp, 1, mod.Scaler(2)) == ["code of pipe_values.double changed (used by pipe_values.stage)"]
    user.write("pipe_values", source.replace("x * self.k", "x * self.k + 1"))
    mod = user.load("pipe_values")
    assert "input extra changed" in why(mod.stage, fp, 1, mod.Scaler(2))
    assert key(mod.stage, 1, mod.Scaler(2)) != before


def test_keys_do_not_depend_on_what_ran_before(user: UserModules) -> None:
    """Pickling an instance caches ``__slotnames__`` on its class: that must not change the class's digest."""
    source = """
        class Point:
            __slots__ = ("x", "y")

            def __init__(self, x, y):
                self.x, self.y = x, y

        def stage(n):
            return Point(n, n)
        """
    user.write("pipe_slots", source)
    mod = user.load("pipe_slots")
    before = key(mod.stage, 1)
    digest(mod.Point(1, 2))  # pickles an instance
    assert "__slotnames__" in vars(mod.Point)
    assert key(mod.stage, 1) == before


KEY_IN_A_PROCESS = """
import sys
sys.path.insert(0, sys.argv[1])
import pipe_stable
from cloudburst.stages import keys
print(keys.fingerprint(pipe_stable.stage, ({"b", "a", "c"},)).key())
"""


def test_a_key_is_the_same_in_every_process(user: UserModules) -> None:
    """The cache outlives the process: string hashing, object ids and import order must not reach a key."""
    user.write("pipe_stable", """
        import enum
        import numpy as np
        import pandas as pd

        class Kind(enum.Enum):
            A = "a"

        class Holder:
            def __init__(self):
                self.items = {"x", "y", "z"}

        TABLE = pd.DataFrame({"name": ["p", "q"], "value": [1.5, 2.5]})
        ARRAY = np.arange(12.0).reshape(3, 4)
        HOLDER = Holder()
        TAGS = frozenset({"red", "green", "blue"})

        def stage(labels):
            return TABLE, ARRAY.sum(), HOLDER.items, TAGS, Kind.A, sorted(labels)
        """)  # fmt: skip
    found = {key(user.load("pipe_stable").stage, {"a", "b", "c"})}
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        cmd = [sys.executable, "-c", KEY_IN_A_PROCESS, str(user.root)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        found.add(out.stdout.strip())
    assert len(found) == 1


# ---------------------------------------------------------------------------- closures (Prefect#23062)


def test_closures_count_by_value(user: UserModules) -> None:
    source = """
        def make(k, offset=0):
            def stage(x, shift=offset):
                return x * k + shift
            return stage
        """
    user.write("pipe_closure", source)
    mod = user.load("pipe_closure")
    one, fp = key(mod.make(1), 5), keys.fingerprint(mod.make(1), (5,))
    assert key(mod.make(1), 5) == one  # same body, same closure: the same call
    assert key(mod.make(2), 5) != one  # same body, another closure: another call
    assert why(mod.make(2), fp, 5) == ["closure variable k of pipe_closure.make.<locals>.stage changed (1 → 2)"]
    assert key(mod.make(1, offset=3), 5) != one  # a default of the stage, from the closure

    user.write("pipe_closure", source.replace("x * k", "x * k * 1"))
    assert key(user.load("pipe_closure").make(1), 5) != one


# ---------------------------------------------------------------------------- installed packages


def test_an_installed_package_counts_by_version_not_by_code(user: UserModules) -> None:
    site = user.root / "site-packages"
    package = site / "cbfakepkg"
    package.mkdir(parents=True)
    jit = "class Dispatcher:\n    def __init__(self, fn):\n        self.py_func, self.__name__ = fn, fn.__name__\n\n" \
          "    def __call__(self, *args):\n        return self.py_func(*args)\n"  # fmt: skip
    (package / "__init__.py").write_text("def scale(x):\n    return x * 2\n")
    (package / "jit.py").write_text(jit)
    info = site / "cbfakepkg-1.0.dist-info"
    info.mkdir()
    (info / "top_level.txt").write_text("cbfakepkg\n")

    def release(version: str) -> None:
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: cbfakepkg\nVersion: {version}\n")
        importlib.invalidate_caches()

    release("1.0")
    sys.path.insert(0, str(site))
    try:
        user.write("pipe_pkg", "import cbfakepkg\nfrom cbfakepkg import scale\n\ndef stage(x):\n"
                               "    return cbfakepkg.scale(x) + scale(x)\n")  # fmt: skip
        mod = user.load("pipe_pkg")
        fp = keys.fingerprint(mod.stage, (1,))
        assert fp.packages.get("cbfakepkg") == "1.0" and not any("cbfakepkg" in unit for unit in fp.code)

        (package / "__init__.py").write_text("def scale(x):\n    return x * 3\n")
        mod = user.load("cbfakepkg", "pipe_pkg")
        assert key(mod.stage, 1) == fp.key()  # its code changed, its version did not

        release("1.1")
        assert key(mod.stage, 1) != fp.key()
        assert why(mod.stage, fp, 1) == ["package cbfakepkg 1.0 → 1.1"]

        # the user's function inside a package's object (a JIT dispatcher keeping it) is still the user's code
        jitted = "from cbfakepkg.jit import Dispatcher\n\n@Dispatcher\ndef helper(x):\n    return x + 1\n\n" \
                 "def stage(x):\n    return helper(x)\n"  # fmt: skip
        user.write("pipe_jit", jitted)
        before = key(user.load("pipe_jit").stage, 1)
        user.write("pipe_jit", jitted.replace("x + 1", "x + 2"))
        assert key(user.load("pipe_jit").stage, 1) != before
    finally:
        sys.path.remove(str(site))
        for name in ("cbfakepkg", "cbfakepkg.jit"):
            sys.modules.pop(name, None)


def test_the_standard_library_counts_by_the_python_version(user: UserModules) -> None:
    user.write("pipe_std", "import json\n\ndef stage(x):\n    return json.dumps(x)\n")
    fp = keys.fingerprint(user.load("pipe_std").stage, (1,))
    assert set(fp.packages) == {"python"} and set(fp.code) == {"pipe_std:stage"}
    assert is_user_module("pipe_std") and not is_user_module("json") and not is_user_module("numpy")


def test_a_user_module_named_like_the_standard_library_is_the_users(user: UserModules) -> None:
    assert "sndhdr" in sys.stdlib_module_names and "sndhdr" not in sys.modules
    user.write("sndhdr", "def helper(x):\n    return x + 1\n")
    user.write("pipe_shadow", "import sndhdr\n\ndef stage(x):\n    return sndhdr.helper(x)\n")
    mod = user.load("sndhdr", "pipe_shadow")
    assert not is_user_module("json") and is_user_module("sndhdr")
    before = key(mod.stage, 1)
    user.write("sndhdr", "def helper(x):\n    return x + 2\n")
    assert key(user.load("sndhdr", "pipe_shadow").stage, 1) != before


# ---------------------------------------------------------------------------- version=


def test_version_replaces_code_hashing(user: UserModules) -> None:
    source = """
        N = 1

        def helper(x):
            return x + N

        def stage(x):
            return helper(x)
        """
    user.write("pipe_version", source)
    mod = user.load("pipe_version")
    v1, fp = key(mod.stage, 1, version="1"), keys.fingerprint(mod.stage, (1,), version="1")
    assert not (fp.code or fp.globals or fp.closure or fp.packages)
    for edit in (source.replace("x + N", "x - N"), source.replace("N = 1", "N = 2")):
        user.write("pipe_version", edit)
        assert key(user.load("pipe_version").stage, 1, version="1") == v1
    mod = user.load("pipe_version")
    assert key(mod.stage, 1, version="2") != v1
    assert key(mod.stage, 2, version="1") != v1  # the arguments still count
    assert [str(c) for c in keys.fingerprint(mod.stage, (1,), version="2").diff(fp)] == ["version '1' → '2'"]


# ---------------------------------------------------------------------------- arguments


def test_arguments_count_by_content(user: UserModules) -> None:
    user.write("pipe_args", "def stage(data, factor=2, *rest, **options):\n    return data\n")
    stage = user.load("pipe_args").stage
    before = key(stage, [1, 2, {"a": 3}])
    assert key(stage, [1, 2, {"a": 3}]) == before  # equal content, other objects
    assert key(stage, [1, 2, {"a": 3}], 2) == before  # the default, passed or not
    assert key(stage, data=[1, 2, {"a": 3}]) == before  # by keyword
    assert key(stage, [1, 2, {"a": 4}]) != before
    assert key(stage, [1, 2, {"a": 3}], 3) != before
    assert key(stage, [1, 2, {"a": 3}], 2, "more") != before
    s = "shared"
    assert digest([s, s]) == digest(["shared", "".join(["sha", "red"])])  # sharing does not count, content does
    loop: list[Any] = [1]
    loop.append(loop)
    other: list[Any] = [1]
    other.append(other)
    assert digest(loop) == digest(other) != digest([1, [1]])  # a cyclic value is hashed too


def test_set_order_does_not_count_across_processes() -> None:
    code = (
        "from cloudburst.stages.valuehash import digest;"
        "print(digest([{'alpha', 'beta', 'gamma', 'delta'}, frozenset({('x', 1), ('y', 2.5)})]))"
    )
    digests = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        digests.add(out.stdout.strip())
    assert len(digests) == 1
    assert digest({"alpha", "beta"}) != digest({"alpha", "gamma"})


def test_upstream_nodes_count_by_the_digest_of_their_result(user: UserModules) -> None:
    class Node:  # stands in for an upstream node: its value is known by digest only
        def __init__(self, result_digest: str) -> None:
            self.result_digest = result_digest

    def substitute(obj: object) -> str | None:
        return obj.result_digest if isinstance(obj, Node) else None

    user.write("pipe_up", "def stage(data, options):\n    return data\n")
    stage = user.load("pipe_up").stage

    def fp(node: Node) -> keys.Fingerprint:
        return keys.fingerprint(stage, (node, {"n": [node]}), hasher=CodeHasher(substitute=substitute),
                                upstream={"data": "load()#0"})  # fmt: skip

    assert fp(Node("d1")).key() == fp(Node("d1")).key()  # a rerun upstream with identical bytes: cut off
    assert fp(Node("d2")).key() != fp(Node("d1")).key()
    assert [str(c) for c in fp(Node("d2")).diff(fp(Node("d1")))] == [
        "input data changed (load()#0 returned different data)",
        "input options changed",
    ]


def test_a_fingerprint_survives_json_and_explains_environment_and_seed(user: UserModules) -> None:
    user.write("pipe_json", "N = 3\n\ndef stage(x):\n    return x * N\n")
    stage = user.load("pipe_json").stage
    fp = keys.fingerprint(stage, (1,), environment="local-py3.11", seed="7/stage()#0")
    again = keys.Fingerprint.from_json(json.loads(json.dumps(fp.to_json())))
    assert again == fp and again.key() == fp.key() and again.diff(fp) == []
    moved = keys.fingerprint(stage, (1,), environment="image:abc", seed="8/stage()#0")
    assert [str(c) for c in moved.diff(fp)] == [
        "environment local-py3.11 → image:abc",
        "seed 7/stage()#0 → 8/stage()#0",
    ]
    assert moved.key() != fp.key()
    produced = keys.fingerprint(stage, (1,), environment="local-py3.11", seed="7/stage()#0", upstream={"x": "o()#0"})
    assert produced.key() == fp.key()  # who produced an input explains a change; it is not in the key


# ---------------------------------------------------------------------------- code that is not on disk


def test_a_file_edited_without_reload_keys_the_loaded_code(user: UserModules) -> None:
    source = "def stage(x):\n    return x + 1  # one\n"
    path = user.write("pipe_stale", source)
    mod = user.load("pipe_stale")
    loaded = key(mod.stage, 1)

    user.write("pipe_stale", source.replace("# one", "# a comment only"))
    assert key(mod.stage, 1) == loaded  # the text still compiles to the code that runs

    user.write("pipe_stale", source.replace("x + 1", "x + 2"))
    stale = key(mod.stage, 1)  # the file says x + 2; what runs is x + 1
    assert stale != key(user.load("pipe_stale").stage, 1)  # never the key of code that does not run
    assert path.exists()


def test_code_without_source_is_hashed_by_its_bytecode() -> None:
    def run(source: str) -> Callable[..., Any]:
        namespace: dict[str, Any] = {"__name__": "cb_exec_cell"}
        exec(compile(textwrap.dedent(source), "<cell>", "exec"), namespace)
        return namespace["stage"]  # type: ignore[no-any-return]

    source = '''
        K = 3

        def stage(x):
            """Docstring."""
            return x * K
        '''
    before = key(run(source), 1)
    assert keys.fingerprint(run(source), (1,)).code["cb_exec_cell:stage"]
    assert key(run(source.replace("Docstring.", "Another docstring.")), 1) == before
    assert key(run(source.replace("# nothing", "")), 1) == before
    assert key(run(source.replace("x * K", "x * K + 1")), 1) != before
    assert key(run(source.replace("K = 3", "K = 4")), 1) != before
    assert key(run("stage = lambda x: x + 1"), 1) != key(run("stage = lambda x: x + 2"), 1)


# ---------------------------------------------------------------------------- failures


HASH_FAILURES = [
    ("global", "LOCK = threading.Lock()\n\ndef stage(x):\n    return LOCK, x\n", (1,),
     r"global `LOCK` of module `pipe_fail`.*create it inside the stage, or give the stage a version="),
    ("closure", "import threading\n\ndef make(lock):\n    def stage(x):\n        return lock, x\n    return stage\n",
     (1,), r"closure variable `lock` of `pipe_fail.make.<locals>.stage`"),
    ("argument", "def stage(x):\n    return x\n", (threading.Lock(),),
     r"argument `x` of stage `pipe_fail.stage`.*pass a picklable value, or set cache=False"),
]  # fmt: skip


@pytest.mark.parametrize(("where", "source", "args", "message"), HASH_FAILURES, ids=[row[0] for row in HASH_FAILURES])
def test_a_value_that_cannot_be_hashed_is_named(
    user: UserModules, where: str, source: str, args: tuple[Any, ...], message: str
) -> None:
    user.write("pipe_fail", "import threading\n" + source)
    mod = user.load("pipe_fail")
    stage = mod.make(threading.Lock()) if where == "closure" else mod.stage
    with pytest.raises(StageHashError, match=message):
        keys.fingerprint(stage, args)
    if where != "argument":
        assert key(stage, 1, version="1")  # version= is the way out: the code's values are not hashed
