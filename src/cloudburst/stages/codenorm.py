"""One function's own code: its digest (normalized source when that is what runs, else bytecode), and the
names it loads (``references``: globals, ``mod.attr`` chains, imports in its body) for the dependency walk.

1. **Source** (formatting-proof): the function's source, dedented and parsed, with its docstrings, its own
   decorators and its *debug output* removed, dumped without positions. Comments, blank lines, formatting
   and docstrings vanish. Used only if compiling that same text gives the code object that runs; when it
   does not (the file was edited after import, code made by ``exec``, a lambda, a closure, a method using
   ``super()``), the bytecode is hashed instead: the key follows the code that runs, never the file on disk.
2. **Bytecode**: ``co_code``, constants (nested code recursively, the unused docstring constant dropped),
   names, flags and the exception table; never line numbers or file names. Prefixed with the Python version,
   whose bytecode differs from the next one's.

Debug output is an expression statement calling ``print`` (the builtin, writing to the console) or a
logger method on the ``logging`` module or a ``Logger`` global, whose arguments call nothing but
``len, str, repr, ...``: an edited message must not rerun a stage (joblib#1710), while
``print(xs.pop())`` changes the data and counts. Decorators count through the objects they produce (the
dependency walk unwraps them), so ``@cb.stage(cpu=...)`` options never enter the key.
"""

from __future__ import annotations
import __future__ as future_features

import ast
import dis
import hashlib
import importlib.util
import inspect
import linecache
import logging
import os
import sys
import textwrap
import types
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["OwnCode", "Ref", "bytecode_digest", "own_code", "references"]

Ref = tuple[str, str, tuple[str, ...]]  # ("global" | "module", name, attribute chain)

_FUTURE_FLAGS = 0
for _feature in future_features.all_feature_names:
    _FUTURE_FLAGS |= getattr(future_features, _feature).compiler_flag
_IGNORED_FLAGS = inspect.CO_NESTED | 0x4000000  # nesting, and 3.14's CO_HAS_DOCSTRING (the docstring is dropped)
_PYTHON = f"py{sys.version_info[0]}.{sys.version_info[1]}"
_LOG_METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical", "log"})
_HARMLESS_CALLS = frozenset({"len", "str", "repr", "format", "round", "min", "max", "sum", "abs", "type"})
_PRINT_KEYWORDS = frozenset({"sep", "end", "flush"})  # `file=` may write somewhere that matters: kept
_CHAIN_OPS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_LOCAL_LOADS = frozenset(  # with the superinstructions of 3.13+, whose argval is a pair of names
    {"LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_BORROW", "LOAD_DEREF", "LOAD_CLASSDEREF", "LOAD_FAST_LOAD_FAST"}
    | {"LOAD_FAST_BORROW_LOAD_FAST_BORROW"}
)
_INT_LOADS = frozenset({"LOAD_CONST", "LOAD_SMALL_INT"})  # an import's level (3.14 loads small ints apart)
_STORES = frozenset({"STORE_FAST", "STORE_NAME", "STORE_GLOBAL", "STORE_DEREF"})
_NOISE = frozenset({"CACHE", "EXTENDED_ARG", "NOP"})

# compile-and-compare is the costly part (a file's first read, a compile): once per code object and file state
_GUARDED: dict[tuple[types.CodeType, str, int, int], str | None] = {}


@dataclass(frozen=True)
class OwnCode:
    """A function's own code: ``digest`` ("ast:…" or "bytecode:…"), and ``names``, the names its normalized
    source still uses (``None`` on the bytecode path, where every name the code loads counts)."""

    digest: str
    names: frozenset[str] | None


def own_code(fn: types.FunctionType) -> OwnCode:
    """The digest of ``fn``'s own code (not what it calls: the dependency walk adds that)."""
    source = _guarded_source(fn)
    if source is None:
        return OwnCode("bytecode:" + bytecode_digest(fn.__code__), None)
    tree = ast.parse(source)
    _Normalizer(fn).visit(tree)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.decorator_list = []
    text = ast.dump(tree, include_attributes=False)
    names = frozenset(node.id for node in ast.walk(tree) if isinstance(node, ast.Name))
    return OwnCode("ast:" + hashlib.sha256(text.encode()).hexdigest(), names)


def bytecode_digest(code: types.CodeType) -> str:
    """The digest of a code object's bytecode, positions and file names left out."""
    return hashlib.sha256(repr((_PYTHON, _code_repr(code))).encode()).hexdigest()


def _guarded_source(fn: types.FunctionType) -> str | None:
    """``fn``'s dedented source, or ``None`` when there is none or compiling it does not give ``fn.__code__``."""
    code = fn.__code__
    if code.co_name == "<lambda>":
        return None  # its source line may hold anything else; the bytecode is exact
    filename = code.co_filename
    try:
        state = os.stat(filename)
        key = (code, filename, state.st_mtime_ns, state.st_size)
    except OSError:  # a notebook cell or other linecache-only source: keyed by its code alone
        key = (code, filename, 0, 0)
    if key in _GUARDED:
        return _GUARDED[key]
    linecache.checkcache(filename)
    try:
        text: str | None = textwrap.dedent(inspect.getsource(fn))
    except Exception:  # no source (exec'd code, `python -c`) or one inspect cannot cut: the bytecode is hashed
        text = None
    if text is not None and not _compiles_to(text, code):
        text = None
    _GUARDED[key] = text
    return text


def _compiles_to(text: str, code: types.CodeType) -> bool:
    try:
        module = compile(text, code.co_filename, "exec", flags=code.co_flags & _FUTURE_FLAGS, dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return any(
        isinstance(const, types.CodeType) and const.co_name == code.co_name and _same_code(const, code)
        for const in module.co_consts
    )


def _same_code(a: types.CodeType, b: types.CodeType) -> bool:
    if _code_shape(a) != _code_shape(b) or len(a.co_consts) != len(b.co_consts):
        return False
    for x, y in zip(a.co_consts, b.co_consts, strict=True):
        if isinstance(x, types.CodeType) and isinstance(y, types.CodeType):
            if not _same_code(x, y):
                return False
        elif type(x) is not type(y) or not (x is y or x == y):
            return False
    return True


def _code_shape(code: types.CodeType) -> tuple[object, ...]:
    return (
        code.co_name,
        code.co_code,
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags & ~_IGNORED_FLAGS,
    )


def _code_repr(code: types.CodeType) -> tuple[object, ...]:
    consts = list(code.co_consts)
    # A function's docstring is an unused string constant in slot 0: dropped, unless the code loads it.
    if consts and isinstance(consts[0], str) and not _loads_const(code, 0):
        consts[0] = None
    return (
        *_code_shape(code),
        tuple(_const_repr(const) for const in consts),
        getattr(code, "co_exceptiontable", b""),
    )


def _loads_const(code: types.CodeType, index: int) -> bool:
    return any(ins.opcode in dis.hasconst and ins.arg == index for ins in dis.get_instructions(code))


def _const_repr(const: object) -> object:
    if isinstance(const, types.CodeType):
        return ("code", _code_repr(const))
    if isinstance(const, frozenset):  # its iteration order is per process for strings
        return ("frozenset", tuple(sorted((_const_repr(item) for item in const), key=repr)))
    if isinstance(const, tuple):
        return ("tuple", tuple(_const_repr(item) for item in const))
    return (type(const).__name__, repr(const))  # repr tells 1 from 1.0, True and -0.0


def _drop_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            first = body[0].value if body and isinstance(body[0], ast.Expr) else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                del body[0]


class _Normalizer(ast.NodeTransformer):
    """Drops docstrings and debug output statements (see the module docstring)."""

    def __init__(self, fn: types.FunctionType) -> None:
        self._globals = fn.__globals__
        self._locals = frozenset(_local_names(fn.__code__))

    def visit_Module(self, node: ast.Module) -> ast.AST:
        _drop_docstrings(node)
        return self.generic_visit(node)

    def visit_Expr(self, node: ast.Expr) -> ast.AST | None:
        if isinstance(node.value, ast.Call) and self._debug_output(node.value):
            return None
        return self.generic_visit(node)

    def _shadowed(self, name: str) -> bool:
        return name in self._locals or name in self._globals

    def _debug_output(self, call: ast.Call) -> bool:
        func = call.func
        if isinstance(func, ast.Name) and func.id == "print":
            if self._shadowed("print") or any(kw.arg not in _PRINT_KEYWORDS for kw in call.keywords):
                return False
        elif isinstance(func, ast.Attribute) and func.attr in _LOG_METHODS and isinstance(func.value, ast.Name):
            owner = func.value.id
            if owner in self._locals or not _is_logger(self._globals.get(owner)):
                return False
        else:
            return False
        return all(self._harmless(arg) for arg in [*call.args, *(kw.value for kw in call.keywords)])

    def _harmless(self, expr: ast.expr) -> bool:
        for node in ast.walk(expr):
            if isinstance(node, (ast.NamedExpr, ast.Yield, ast.YieldFrom, ast.Await)):
                return False
            if isinstance(node, ast.Call) and not (
                isinstance(node.func, ast.Name) and node.func.id in _HARMLESS_CALLS and not self._shadowed(node.func.id)
            ):
                return False
        return True


def _is_logger(obj: object) -> bool:
    return obj is logging or isinstance(obj, (logging.Logger, logging.LoggerAdapter))


def _local_names(code: types.CodeType) -> Iterable[str]:
    yield from code.co_varnames
    yield from code.co_freevars
    yield from code.co_cellvars
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _local_names(const)


def references(code: types.CodeType, package: str | None) -> list[Ref]:
    """The globals, ``mod.attr`` chains and imported names that ``code`` and its nested code load."""
    refs: list[Ref] = []
    _scan(code, package, {}, refs)
    return list(dict.fromkeys(refs))


def _scan(code: types.CodeType, package: str | None, outer: dict[str, Ref], refs: list[Ref]) -> None:
    ins = [i for i in dis.get_instructions(code) if i.opname not in _NOISE]
    aliases = dict(outer)  # local names bound to modules by imports in the body
    for n, instruction in enumerate(ins):
        root: Ref | None = None
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            root = ("global", str(instruction.argval), ())
        elif instruction.opname in _LOCAL_LOADS:
            names = instruction.argval if isinstance(instruction.argval, tuple) else (instruction.argval,)
            refs.extend(aliases[name] for name in names[:-1] if name in aliases)
            root = aliases.get(names[-1])  # the attributes that follow apply to the last value loaded
        elif instruction.opname == "IMPORT_NAME":
            _imported(ins, n, package, aliases, refs)
        if root is None:
            continue
        chain = list(root[2])
        for following in ins[n + 1 :]:
            if following.opname not in _CHAIN_OPS:
                break
            chain.append(str(following.argval))
        refs.append((root[0], root[1], tuple(chain)))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _scan(const, package, aliases, refs)


def _imported(
    ins: list[dis.Instruction], n: int, package: str | None, aliases: dict[str, Ref], refs: list[Ref]
) -> None:
    """An import inside a function body: ``from m import a`` reaches ``m.a``; ``import m`` binds an alias whose
    attribute chains are followed like a global's."""
    level = ins[n - 2].argval if n >= 2 and ins[n - 2].opname in _INT_LOADS else 0
    fromlist = ins[n - 1].argval if n >= 1 and ins[n - 1].opname == "LOAD_CONST" else None
    try:
        module = importlib.util.resolve_name("." * level + ins[n].argval, package) if level else ins[n].argval
    except (ImportError, ValueError):
        return
    j = n + 1
    if fromlist is not None:
        while j < len(ins) and ins[j].opname == "IMPORT_FROM":
            ref: Ref = ("module", module, (str(ins[j].argval),))
            refs.append(ref)
            if j + 1 < len(ins) and ins[j + 1].opname in _STORES:
                aliases[str(ins[j + 1].argval)] = ref
            j += 2
        return
    while j < len(ins) and ins[j].opname in ("IMPORT_FROM", "SWAP", "ROT_TWO", "POP_TOP"):
        j += 1
    if j < len(ins) and ins[j].opname in _STORES:
        # `import a.b` binds `a`; `import a.b as c` binds `a.b`
        bound = module.partition(".")[0] if j == n + 1 else module
        aliases[str(ins[j].argval)] = ("module", bound, ())
