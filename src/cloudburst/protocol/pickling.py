"""How cloudburst pickles: the user's own modules by value, shared arguments by reference, code objects
with their file names.
"""

from __future__ import annotations

import io
import sys
import sysconfig
import types
from collections import ChainMap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import cloudpickle

from .blobs import Packed

__all__ = ["PROTOCOL", "SharingPickler", "ship_module_by_value"]

PROTOCOL = 5


_SITE_DIRS = tuple(
    {
        str(Path(p).resolve())
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_paths().get(key))
    }
)
_BY_VALUE: set[str] = set()


def ship_module_by_value(fn: object) -> None:
    """Make cloudpickle send ``fn``'s module by value when it is the user's own code.

    A worker can import installed packages, but not a ``helpers.py`` lying next to
    the user's script or notebook; such modules are pickled by value instead.
    """
    module_name = getattr(fn, "__module__", None)
    if not module_name or module_name == "__main__" or module_name in _BY_VALUE:
        return
    top = module_name.partition(".")[0]
    if top in sys.stdlib_module_names or top in ("cloudburst", "cloudpickle"):
        return
    module = sys.modules.get(module_name)
    filename = getattr(module, "__file__", None)
    if module is None or not filename:
        return
    path = str(Path(filename).resolve())
    if any(path.startswith(site + "/") for site in _SITE_DIRS) or "site-packages" in path or "dist-packages" in path:
        return
    cloudpickle.register_pickle_by_value(module)
    _BY_VALUE.add(module_name)


class SharingPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """Replaces objects in ``shared`` (by identity) with a reference to their blob.

    Code objects keep their file name: cloudpickle replaces it with ``<dynamic-code>``,
    which would leave the client's copy of a remote traceback without source lines.
    """

    dispatch_table: ClassVar[ChainMap[Any, Any]] = ChainMap(
        {types.CodeType: lambda code: _reduce_code(code)}, cloudpickle.Pickler.dispatch_table
    )

    def __init__(self, file: io.BytesIO, shared: Mapping[int, Packed], **kwargs: Any) -> None:
        super().__init__(file, protocol=PROTOCOL, **kwargs)
        self._shared = shared

    def persistent_id(self, obj: object) -> Packed | None:
        return self._shared.get(id(obj))


def _reduce_code(code: types.CodeType) -> tuple[Any, ...]:
    rebuild, args = cloudpickle.cloudpickle._code_reduce(code)
    return _code_with_filename, (rebuild, args, code.co_filename)


def _code_with_filename(rebuild: Callable[..., types.CodeType], args: tuple[Any, ...], filename: str) -> types.CodeType:
    return rebuild(*args).replace(co_filename=filename)
