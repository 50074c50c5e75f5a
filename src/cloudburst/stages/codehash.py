"""What of a stage's code enters its cache key: code units, followed transitively, and packages by version.

A **code unit** is one of the user's own functions or classes ("module:qualname"). From the stage's
function, the walk follows what each unit uses::

    unit ──names it loads (globals, `mod.attr` chains, imports in its body)──▶ objects
      ├─ user function        → a unit (its own code: codenorm), its closure cells and defaults by value
      ├─ user class           → a unit: bases, every member (methods as units, attributes by value),
      │                         dataclass fields; generated methods skipped
      ├─ user module          → only the attributes reached through it (used whole: all it holds)
      ├─ installed package    → packages[distribution] = version (its code does not count: its version does)
      ├─ standard library     → packages["python"] = the Python version
      └─ anything else        → globals["module:name"] = content digest (valuehash)

Wrappers (bound methods, ``functools.partial``, ``__wrapped__`` chains such as ``lru_cache`` or a stage)
count both layers. "User's own" means ``__main__``, a notebook, or a module whose file lies outside the
standard library and site-packages (an editable install of the user's project is the user's).

Each unit's digest covers its own code plus the *names* of what it uses, so mutual recursion is fine: the
fingerprint is the set of reachable units' digests (``CodePrint.code``), and a changed helper shows as its
own entry. Not covered (the escape hatches are ``version=`` and ``cache=False``): code reached only
dynamically (``importlib``, ``eval``, names built at run time on objects other than modules), files and
environment variables a stage reads, C extensions built in the user's tree.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import sysconfig
import types
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..version import __version__
from .codenorm import Ref, own_code, references
from .valuehash import HINT, Substitute, ValueHasher, preview

__all__ = ["CodeHasher", "CodePrint", "fingerprint_code", "is_user_module", "module_kind"]

_OWN = frozenset({"cloudburst", "cloudpickle"})  # cloudburst's own code counts by its version
_STDLIB_DIRS = (str(Path(os.__file__).resolve().parent) + "/",)  # the interpreter's own, even inside a venv
_INSTALLED_DIRS = _STDLIB_DIRS + tuple(
    {str(Path(p).resolve()) + "/" for k in ("purelib", "platlib") if (p := sysconfig.get_path(k))}
)
_CLASS_SKIP = frozenset(
    {
        "__dict__",
        "__weakref__",
        "__doc__",
        "__module__",
        "__qualname__",
        "__annotations__",
        "__firstlineno__",  # 3.13: a line number
        "__static_attributes__",
        "__orig_bases__",
        "__parameters__",
        "__abstractmethods__",
        "_abc_impl",  # ABC bookkeeping, not picklable
        "__slotnames__",  # cached by copyreg once an instance was pickled: would depend on what ran before
    }
)
_DESCRIPTORS = (types.MemberDescriptorType, types.GetSetDescriptorType)
_UNBOUND = object()  # a name the code loads that is bound nowhere (yet)
_DISTS: dict[str, list[str]] = {}
_DISTS_MISSED: set[str] = set()


@dataclass(frozen=True)
class CodePrint:
    """The code part of a stage's fingerprint; every value is a digest or a short string.

    ``code``: unit → digest, the stage and all it reaches. ``globals``: "module:name" → value digest of
    each non-code global read. ``closure``: "unit:var" (cells) and "unit:var=" (defaults) → digest.
    ``packages``: distribution (or "python") → version. ``previews``: short reprs of small scalar values,
    for explanations only, keyed "globals/<label>" and "closure/<label>".
    """

    code: Mapping[str, str] = field(default_factory=dict)
    globals: Mapping[str, str] = field(default_factory=dict)
    closure: Mapping[str, str] = field(default_factory=dict)
    packages: Mapping[str, str] = field(default_factory=dict)
    previews: Mapping[str, str] = field(default_factory=dict)

    def digest(self) -> str:
        """One digest of everything but the previews."""
        body = [dict(self.code), dict(self.globals), dict(self.closure), dict(self.packages)]
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(b"cbc1" + text.encode()).hexdigest()


def module_kind(name: str | None) -> str:
    """Where a module's code comes from: "user", "stdlib", "builtin" or "package"."""
    if not name or name == "__main__":
        return "user"
    top = name.partition(".")[0]
    if top == "builtins":
        return "builtin"
    if top in _OWN:
        return "package"
    paths = _module_paths(name, top)
    if paths is None:
        return "user"  # code made under a name no file has (exec): hashed by its code
    if top in sys.stdlib_module_names and all(_under(path, _STDLIB_DIRS) and not _in_site(path) for path in paths):
        return "stdlib"  # by name *and* place: a user's own `code.py` or `types.py` is the user's
    if not paths:
        return "package"  # compiled into the interpreter
    return "package" if any(_in_site(path) or _under(path, _INSTALLED_DIRS) for path in paths) else "user"


def _module_paths(name: str, top: str) -> list[str] | None:
    """The files (or package directories) of a module, loaded or not; ``None`` when no module has the name."""
    module = sys.modules.get(name) or sys.modules.get(top)
    if module is not None:
        filename = getattr(module, "__file__", None)
        return [str(filename)] if filename else [str(p) for p in getattr(module, "__path__", None) or []]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.has_location and spec.origin:
        return [spec.origin]
    return [str(p) for p in spec.submodule_search_locations or []]


def is_user_module(name: str | None) -> bool:
    """True when the module ``name`` is the user's own code (see the module docstring)."""
    return module_kind(name) == "user"


def _under(path: str, dirs: tuple[str, ...]) -> bool:
    return str(Path(path).resolve()).startswith(dirs)


def _in_site(path: str) -> bool:
    parts = Path(path).resolve().parts
    return "site-packages" in parts or "dist-packages" in parts


def _distributions(top: str) -> list[str]:
    """The distributions providing the import name ``top`` (read once, again when a name is not found)."""
    if top not in _DISTS and top not in _DISTS_MISSED:
        _DISTS.update(importlib.metadata.packages_distributions())
        if top not in _DISTS:
            _DISTS_MISSED.add(top)
    return sorted(set(_DISTS.get(top, ())))


@dataclass(frozen=True)
class _Dep:
    label: str  # "module:name" for globals; the variable (cells) or "param=" (defaults) for closures
    obj: object
    bucket: str  # "globals" or "closure"


@dataclass(frozen=True)
class _Unit:
    digest: str  # the unit's own code
    deps: tuple[_Dep, ...]


class CodeHasher:
    """Fingerprints code for one compute: each unit is analysed once, each value hashed once. Not thread-safe.

    ``values`` is the ``ValueHasher`` that digests globals, closure variables and arguments; the user code
    it meets inside values is walked like the stage's own. ``substitute`` gives the digest of objects that
    stand for another value (upstream nodes).
    """

    def __init__(self, *, substitute: Substitute | None = None) -> None:
        self.values = ValueHasher(is_code=self.is_code, substitute=substitute)
        self._units: dict[int, tuple[object, _Unit]] = {}
        self._prints: dict[int, tuple[object, CodePrint]] = {}
        self._kinds: dict[str | None, str] = {}
        self._versions: dict[str, str | None] = {}

    def fingerprint(self, fn: object, *, version: str | None = None) -> CodePrint:
        """The ``CodePrint`` of ``fn`` and all it reaches; empty when ``version`` stands in for the code."""
        if version is not None:
            return CodePrint()
        seen = self._prints.get(id(fn))
        if seen is not None and seen[0] is fn:
            return seen[1]
        result = _Walk(self).run(fn)
        self._prints[id(fn)] = (fn, result)
        return result

    def value_digest(self, obj: object, *, where: str = "a value", hint: str = HINT) -> str:
        """The digest of a value (an argument, a result), the code of user functions and classes in it included."""
        digest, met = self.values.digest_code(obj, where=where, hint=hint)
        if not met:
            return digest
        prints = "".join(self.fingerprint(code).digest() for code in met)
        return hashlib.sha256(f"cbv1+code:{digest}:{prints}".encode()).hexdigest()

    def is_code(self, obj: object) -> bool:
        """True for the user's own functions and classes: code units."""
        return isinstance(obj, (types.FunctionType, type)) and self.kind(obj.__module__) == "user"

    def kind(self, module: str | None) -> str:
        """``module_kind``, memoized for this compute."""
        if module not in self._kinds:
            self._kinds[module] = module_kind(module)
        return self._kinds[module]

    def version(self, distribution: str) -> str | None:
        """The installed version of ``distribution``, memoized for this compute."""
        if distribution not in self._versions:
            try:
                self._versions[distribution] = importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                self._versions[distribution] = None
        return self._versions[distribution]

    def unit(self, obj: types.FunctionType | type) -> _Unit:
        """The analysis of one unit: its own digest and what it uses."""
        seen = self._units.get(id(obj))
        if seen is not None and seen[0] is obj:
            return seen[1]
        result = self._function(obj) if isinstance(obj, types.FunctionType) else self._class(obj)
        self._units[id(obj)] = (obj, result)
        return result

    def _function(self, fn: types.FunctionType) -> _Unit:
        code = fn.__code__
        own = own_code(fn)
        home = fn.__module__ or "?"
        deps: list[_Dep] = []
        for ref in references(code, fn.__globals__.get("__package__")):
            if own.names is not None and ref[0] == "global" and ref[1] not in own.names:
                continue  # used only in stripped debug output
            resolved = self._resolve(fn.__globals__, home, ref)
            if resolved is not None:
                deps.append(_Dep(resolved[0], resolved[1], "globals"))
        for var, cell in zip(code.co_freevars, fn.__closure__ or (), strict=True):
            try:
                deps.append(_Dep(var, cell.cell_contents, "closure"))
            except ValueError:  # an empty cell: bound later, or never
                deps.append(_Dep(var, _UNBOUND, "closure"))
        defaults = fn.__defaults__ or ()
        positional = code.co_varnames[: code.co_argcount]
        for var, value in zip(positional[len(positional) - len(defaults) :], defaults, strict=True):
            deps.append(_Dep(var + "=", value, "closure"))
        for var, value in sorted((fn.__kwdefaults__ or {}).items()):
            deps.append(_Dep(var + "=", value, "closure"))
        return _Unit(own.digest, tuple(deps))

    def _class(self, cls: type) -> _Unit:
        home, qualname = cls.__module__, cls.__qualname__
        generated = hasattr(cls, "__dataclass_fields__") or hasattr(cls, "__attrs_attrs__")
        parts: list[object] = ["class", qualname]
        deps = [_Dep(f"{home}:{qualname}.__bases__", base, "globals") for base in cls.__bases__]
        if type(cls) is not type:
            deps.append(_Dep(f"{home}:{qualname}.__class__", type(cls), "globals"))
        for name, member in sorted(vars(cls).items()):
            if name in _CLASS_SKIP or name.startswith("__dataclass") or isinstance(member, _DESCRIPTORS):
                continue
            if generated and _generated(member):
                continue  # written by dataclasses/attrs from the fields, which are hashed instead
            deps.append(_Dep(f"{home}:{qualname}.{name}", member, "globals"))
        for spec in getattr(cls, "__dataclass_fields__", {}).values():
            parts.append((spec.name, repr(spec.type), repr(getattr(spec, "_field_type", None))))
            for suffix, value in (("=", spec.default), ("=factory", spec.default_factory)):
                if value is not dataclasses.MISSING:
                    deps.append(_Dep(f"{home}:{qualname}.{spec.name}{suffix}", value, "globals"))
        parts.append(repr(getattr(cls, "__dataclass_params__", None)))
        return _Unit("class:" + hashlib.sha256(repr(parts).encode()).hexdigest(), tuple(deps))

    def _resolve(self, namespace: Mapping[str, object], home: str, ref: Ref) -> tuple[str, object] | None:
        """The object a reference names, following attributes through the user's modules only."""
        kind, name, chain = ref
        if kind == "global":
            label = f"{home}:{name}"
            if name in namespace:
                obj = namespace[name]
            elif hasattr(builtins, name):
                return None  # builtins count with the Python version, through the environment
            else:
                return label, _UNBOUND
        else:
            label, obj = name, self._module(name)
        for attr in chain:
            if not (isinstance(obj, types.ModuleType) and self.kind(obj.__name__) == "user"):
                break
            label = f"{obj.__name__}:{attr}"
            obj = getattr(obj, attr, _UNBOUND)
        return label, obj

    def _module(self, name: str) -> object:
        """A module an import in a function body names; imported when it is the user's and not loaded yet."""
        module = sys.modules.get(name)
        if module is None and self.kind(name) == "user":
            try:
                module = importlib.import_module(name)
            except Exception:  # it fails when the stage runs, too; until then the name is what counts
                return _UNBOUND
        return module if module is not None else _Installed(name)


@dataclass(frozen=True)
class _Installed:
    """A module of the standard library or an installed package, named by an import but not loaded."""

    name: str


class _Walk:
    """One fingerprint: the units reachable from a root, in a deterministic order."""

    def __init__(self, hasher: CodeHasher) -> None:
        self.hasher = hasher
        self.code: dict[str, str] = {}
        self.buckets: dict[str, dict[str, str]] = {"globals": {}, "closure": {}}
        self.packages: dict[str, str] = {}
        self.previews: dict[str, str] = {}
        self.names: dict[int, str] = {}  # unit object -> its name in `code`
        self.taken: set[str] = set()
        self.wrappers: set[int] = set()
        self.keep: list[object] = []  # the ids above stay valid while the walk lasts
        self.pending: deque[tuple[types.FunctionType | type, str]] = deque()

    def run(self, root: object) -> CodePrint:
        module = getattr(root, "__module__", None) or "?"
        self.reach(root, f"{module}:{getattr(root, '__qualname__', type(root).__qualname__)}", "globals")
        while self.pending:
            obj, name = self.pending.popleft()
            self.visit(obj, name)
        return CodePrint(self.code, self.buckets["globals"], self.buckets["closure"], self.packages, self.previews)

    def visit(self, obj: types.FunctionType | type, name: str) -> None:
        unit = self.hasher.unit(obj)
        parts: list[object] = [unit.digest]
        for dep in unit.deps:
            label = f"{name}:{dep.label}" if dep.bucket == "closure" else dep.label
            parts.append((dep.bucket, dep.label, self.reach(dep.obj, label, dep.bucket)))
        self.code[name] = hashlib.sha256(repr(parts).encode()).hexdigest()

    def reach(self, obj: object, label: str, bucket: str) -> str:
        """Account for one object the code uses; returns what it is, for the user's digest."""
        if obj is _UNBOUND:
            self.buckets[bucket][label] = "unbound"
            return "unbound"
        if isinstance(obj, types.ModuleType):
            return self.module(obj)
        if isinstance(obj, _Installed):
            return self.package(obj.name)
        if isinstance(obj, (types.FunctionType, type)):
            if self.hasher.kind(obj.__module__) == "user":
                return "code:" + self.unit_name(obj)
            return self.package(obj.__module__)
        return self.wrapper(obj, label, bucket)

    def wrapper(self, obj: object, label: str, bucket: str) -> str:
        """Objects around code: both layers count. Anything else is a value."""
        if isinstance(obj, types.MethodType):
            self.reach(obj.__self__, label + ".__self__", bucket)
            return self.reach(obj.__func__, label, bucket)
        if isinstance(obj, functools.partial):
            self.value((obj.args, obj.keywords), label + ".partial", bucket)
            return self.reach(obj.func, label, bucket)
        if isinstance(obj, (staticmethod, classmethod)):
            return self.reach(obj.__func__, label, bucket)
        if isinstance(obj, functools.cached_property):  # holds a lock: never picklable as a value
            return self.reach(obj.func, label, bucket)
        if isinstance(obj, property):
            accessors = [f for f in (obj.fget, obj.fset, obj.fdel) if f is not None]
            return "property:" + ",".join(self.reach(f, label, bucket) for f in accessors)
        if isinstance(obj, types.BuiltinFunctionType):
            owner = obj.__self__
            if owner is not None and not isinstance(owner, types.ModuleType):
                self.value(owner, label + ".__self__", bucket)
            return self.package(obj.__module__ or type(owner).__module__)
        wrapped = _wrapped(obj)
        if wrapped is not None and id(obj) not in self.wrappers:
            self.wrappers.add(id(obj))  # a chain of wrappers that loops ends here
            self.keep.append(obj)
            return self.reach(type(obj), label, bucket) + "+" + self.reach(wrapped, label, bucket)
        named = callable(obj) and isinstance(getattr(obj, "__name__", None), str)
        if named and self.hasher.kind(type(obj).__module__) != "user":
            # a package's function object (numpy's ufuncs), or one made from the user's function (a JIT
            # dispatcher keeping it as an attribute): the package by version, the user's code as a unit
            inner = [v for v in getattr(obj, "__dict__", {}).values() if isinstance(v, types.FunctionType)]
            for code in inner:
                self.reach(code, label, bucket)
            return self.package(type(obj).__module__)
        return self.value(obj, label, bucket)

    def value(self, obj: object, label: str, bucket: str) -> str:
        """A value by content; the user code inside it (an instance's class, a function in a dict) as units."""
        digest, met = self.hasher.values.digest_code(obj, where=_where(label, bucket))
        self.buckets[bucket][label] = digest
        for code in met:
            self.reach(code, label, bucket)
        shown = preview(obj)
        if shown is not None:
            self.previews[f"{bucket}/{label}"] = shown
        return "value"

    def module(self, module: types.ModuleType) -> str:
        """A user module used whole (passed, returned, read with getattr): everything in it counts, as loaded
        (never its file, which may have changed since the import)."""
        if self.hasher.kind(module.__name__) != "user":
            return self.package(module.__name__)
        name = f"{module.__name__}:<module>"
        if name not in self.taken:
            self.taken.add(name)
            for attr, value in sorted(vars(module).items()):
                if not attr.startswith("__") and not isinstance(value, types.ModuleType):
                    self.reach(value, f"{module.__name__}:{attr}", "globals")
        return "module:" + name

    def package(self, module: str) -> str:
        """Installed code counts by its distribution's version, the standard library by Python's."""
        kind = self.hasher.kind(module)
        if kind == "builtin":
            return "builtin"
        if kind == "stdlib":
            self.packages["python"] = platform.python_version()
            return "python"
        top = module.partition(".")[0]
        if top == "cloudburst":
            self.packages["cloudburst"] = __version__
            return "package:cloudburst"
        found = [(d, v) for d in _distributions(top) if (v := self.hasher.version(d)) is not None]
        if not found and (v := self.hasher.version(top)) is not None:
            found = [(top, v)]
        if not found:  # installed without metadata: its file stands in for a version
            found = [(f"file:{module}", _file_digest(module))]
        self.packages.update(found)
        return "package:" + ",".join(d for d, _ in found)

    def unit_name(self, obj: types.FunctionType | type) -> str:
        """Schedules a unit for a visit; returns its base name (two objects may share one: "#2" tells them
        apart in the maps, while a user's digest names the base, so it does not depend on visit order)."""
        base = f"{obj.__module__}:{obj.__qualname__}"
        if id(obj) not in self.names:
            name, n = base, 1
            while name in self.taken:
                n += 1
                name = f"{base}#{n}"
            self.names[id(obj)] = name
            self.taken.add(name)
            self.keep.append(obj)
            self.pending.append((obj, name))
        return base


def _generated(member: object) -> bool:
    """A method dataclasses or attrs wrote (its code comes from a string), possibly wrapped (``__repr__``)."""
    while isinstance(member, types.FunctionType):
        if member.__code__.co_filename.startswith("<"):
            return True
        member = getattr(member, "__wrapped__", None)
    return False


def _wrapped(obj: object) -> object | None:
    try:
        wrapped = getattr(obj, "__wrapped__", None)
    except Exception:  # a proxy's __getattr__ may raise anything
        return None
    return wrapped if callable(wrapped) else None


def _file_digest(module: str) -> str:
    filename = getattr(sys.modules.get(module), "__file__", None)
    if not filename:
        return "unknown"
    with open(filename, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _where(label: str, bucket: str) -> str:
    owner, _, name = label.rpartition(":")
    if bucket == "closure":
        return f"closure variable `{name}` of `{owner.replace(':', '.')}`"
    return f"global `{name}` of module `{owner}`"


def fingerprint_code(fn: object, *, version: str | None = None) -> CodePrint:
    """The ``CodePrint`` of ``fn`` with a fresh hasher (a compute keeps one ``CodeHasher`` for all stages)."""
    return CodeHasher().fingerprint(fn, version=version)
