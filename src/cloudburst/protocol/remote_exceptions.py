"""How an exception raised by a task travels back to the client as itself.

::

    worker: pickle_exception(exc), the first of these that pickles and loads back:
        1. as it is, with its chained exceptions and tracebacks: each exception by its own
           __reduce_ex__ (exact for builtins: SyntaxError keeps its message, StopIteration
           its value), else tblib's way (which rebuilds classes whose __init__ does not take
           their args)
        2. the same without tracebacks: a RecursionError's thousand frames make the pickler
           itself recurse too deep; the traceback then travels as text (ItemError.traceback)
        3. a builtin type whose arguments cannot be pickled: a copy of the same type whose
           unpicklable arguments are stand-ins with their str() and repr()
        else None: the client raises RemoteError with the type's name, message and traceback
    client: restore_exception(pickled, type_name, message, traceback_text)
        the loaded exception (the remote traceback text attached when its traceback did not
        travel), or, for a builtin type whose pickle did not load, that type rebuilt from its
        message; None when neither works.

A pickle is only ever loaded from inside an authenticated result message.
"""

from __future__ import annotations

import builtins
import io
import pickle
import types
from collections import ChainMap
from collections.abc import Callable
from typing import Any, ClassVar

import cloudpickle

from ..errors import RemoteError

__all__ = ["RemoteTraceback", "StandIn", "pickle_exception", "restore_exception"]


class StandIn:
    """An exception argument that could not be pickled, kept as its ``str()`` and ``repr()``."""

    def __init__(self, text: str, representation: str) -> None:
        self.text = text
        self.representation = representation

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.representation

    def __reduce__(self) -> tuple[object, ...]:
        return StandIn, (self.text, self.representation)


class RemoteTraceback(Exception):
    """The remote traceback as text, set as ``__cause__`` where exceptions have no notes (Python 3.10)."""

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0].rstrip()}\n"""' if self.args else ""


# ---------------------------------------------------------------------------- worker side


def pickle_exception(exc: BaseException) -> bytes | None:
    """``exc`` pickled so that it loads as the same type, or None when it cannot be (see the module)."""
    attempts: list[tuple[Callable[[BaseException], BaseException | None], Callable[[BaseException], bytes]]] = [
        (_as_it_is, _dumps_exact),
        (_as_it_is, _dumps_tblib),
        (_without_tracebacks, _dumps_exact),
        (_without_tracebacks, _dumps_tblib),
        (_builtin_copy, _dumps_exact),
    ]
    for prepare, dumps in attempts:
        try:
            portable = prepare(exc)
            if portable is None:
                continue
            data = dumps(portable)
            pickle.loads(data)  # the client loads it the same way: a pickle that fails here would fail there
            return data
        except Exception:  # includes RecursionError from the pickler, and reducers that raise anything
            continue
    return None


def _dumps_exact(exc: BaseException) -> bytes:
    """Each exception of the chain by its own ``__reduce_ex__`` (exact for builtins), plus its chain and traceback."""
    stream = io.BytesIO()
    _ExceptionPickler(stream).dump(exc)
    return stream.getvalue()


def _dumps_tblib(exc: BaseException) -> bytes:
    """tblib's way, which also rebuilds exceptions whose ``__init__`` does not take their ``args``."""
    from tblib import pickling_support

    pickling_support.install(exc)
    data: bytes = cloudpickle.dumps(exc, protocol=5)
    return data


class _ExceptionPickler(cloudpickle.Pickler):  # type: ignore[misc]
    dispatch_table: ClassVar[ChainMap[Any, Any]] = ChainMap(
        {types.TracebackType: lambda tb: _tblib().pickle_traceback(tb)}, cloudpickle.Pickler.dispatch_table
    )

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=5)

    def reducer_override(self, obj: object) -> Any:
        if isinstance(obj, BaseException):
            reduced = obj.__reduce_ex__(5)
            if isinstance(reduced, tuple) and len(reduced) in (2, 3):
                state = reduced[2] if len(reduced) == 3 else None
                chain = (obj.__cause__, obj.__context__, obj.__suppress_context__, obj.__traceback__)
                return _rebuild_exception, (reduced[0], reduced[1], state, *chain)
        return super().reducer_override(obj)


def _tblib() -> Any:
    from tblib import pickling_support

    return pickling_support


def _rebuild_exception(
    make: Callable[..., BaseException],
    args: tuple[object, ...],
    state: dict[str, object] | None,
    cause: BaseException | None,
    context: BaseException | None,
    suppress_context: bool,
    tb: types.TracebackType | None,
) -> BaseException:
    exc = make(*args)
    if state:
        exc.__setstate__(state)
    exc.__cause__, exc.__context__, exc.__suppress_context__ = cause, context, suppress_context
    exc.__traceback__ = tb
    return exc


def _as_it_is(exc: BaseException) -> BaseException:
    return exc


def _without_tracebacks(exc: BaseException) -> BaseException:
    """The same exception with the tracebacks of its whole chain dropped (in place: the worker is done with it)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending += [current.__cause__, current.__context__, *getattr(current, "exceptions", ())]
    return exc


def _builtin_copy(exc: BaseException) -> BaseException | None:
    """For a builtin exception type: a copy whose arguments pickle, unpicklable ones replaced by stand-ins
    (the exceptions of a group by copies of their own, or by RemoteErrors)."""
    cls = type(exc)
    if cls.__module__ != "builtins":
        return None
    args = tuple(_portable_argument(arg) for arg in exc.args)
    copy = _construct(cls, args, _text(exc, str))
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list) and _picklable(notes):
        copy.__notes__ = notes  # type: ignore[attr-defined]
    return copy


def _portable_argument(arg: object) -> object:
    if _picklable(arg):
        return arg
    if isinstance(arg, (list, tuple)) and arg and all(isinstance(e, BaseException) for e in arg):
        return [_portable_member(e) for e in arg]  # an exception group's exceptions
    return StandIn(_text(arg, str), _text(arg, repr))


def _portable_member(exc: BaseException) -> BaseException:
    if _picklable(exc):
        return exc
    try:
        copy = _builtin_copy(exc)
    except Exception:
        copy = None
    if copy is not None and _picklable(copy):
        return copy
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return RemoteError(f"{name}: {_text(exc, str)} (the exception could not be sent back as itself)", type_name=name)


def _picklable(value: object) -> bool:
    try:
        pickle.loads(cloudpickle.dumps(value, protocol=5))
        return True
    except Exception:
        return False


def _text(value: object, how: Callable[[object], str]) -> str:
    try:
        return how(value)
    except Exception:
        return f"<{type(value).__name__} object: its {how.__name__}() failed>"


# ---------------------------------------------------------------------------- client side


def restore_exception(pickled: bytes | None, type_name: str, message: str, traceback_text: str) -> BaseException | None:
    """The exception a task raised, as itself; None when it can only come back as a RemoteError."""
    exc = _load(pickled) if pickled is not None else None
    if exc is None:
        cls = builtin_exception_type(type_name)
        if cls is None:
            return None
        try:
            exc = _construct(cls, (message,), message)
        except Exception:
            return None
    if exc.__traceback__ is None and traceback_text:
        _attach_traceback_text(exc, traceback_text)
    return exc


def _load(pickled: bytes) -> BaseException | None:
    try:
        import tblib.pickling_support  # noqa: F401 - registers the traceback reducers

        loaded = pickle.loads(pickled)  # inside an authenticated result message
    except Exception:
        return None
    return loaded if isinstance(loaded, BaseException) else None


def builtin_exception_type(type_name: str) -> type[BaseException] | None:
    """The builtin exception type named ``builtins.Name``, else None."""
    module, _, name = type_name.rpartition(".")
    cls = getattr(builtins, name, None) if module == "builtins" else None
    return cls if isinstance(cls, type) and issubclass(cls, BaseException) else None


def _construct(cls: type[BaseException], args: tuple[object, ...], message: str) -> BaseException:
    """An instance of exactly ``cls`` with ``args``, else with ``message``; for a type whose constructor wants
    other arguments (UnicodeDecodeError wants five), one made without its constructor, with ``args`` set."""
    unknown = "its exceptions could not be sent back"
    for attempt in (args, (message,), (message, [RemoteError(unknown)]), (message, [BaseException(unknown)])):
        try:
            exc = cls(*attempt)  # the last two fit exception groups, which need exceptions
        except Exception:
            continue
        if type(exc) is cls:  # BaseExceptionGroup(...) makes an ExceptionGroup of Exceptions
            return exc
    exc = BaseException.__new__(cls)
    exc.args = args
    return exc


def _attach_traceback_text(exc: BaseException, text: str) -> None:
    """Show the remote traceback with the exception: as a note, or on Python 3.10 as its cause."""
    if hasattr(exc, "add_note"):
        exc.add_note(f"Remote traceback (its frames could not be sent back):\n{text.rstrip()}")
    elif exc.__cause__ is None:
        exc.__cause__ = RemoteTraceback(text)
