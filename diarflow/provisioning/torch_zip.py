"""Read a PyTorch ``state_dict`` zip archive into NumPy arrays without importing torch.

A ``.pt`` file written by ``torch.save`` (zip format, PyTorch >= 1.6) holds ``<root>/data.pkl`` (a
pickle of the state dict) and one raw little-endian byte file per tensor storage under
``<root>/data/<key>``. The pickle refers to storages through persistent ids and rebuilds tensors with
``torch._utils._rebuild_tensor_v2``. This module replays that pickle with an Unpickler that resolves
only an allow-list of globals, mapping tensor rebuilds to ``numpy.ndarray``. Anything else the
pickle names (``os.system``, arbitrary classes, ...) is refused with :class:`UnsafeCheckpointError`;
nothing outside the allow-list is ever imported.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np

__all__ = ["Opaque", "UnsafeCheckpointError", "load_state_dict"]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint names a global that is not on the allow-list, or is malformed."""


# torch storage class name -> numpy dtype of its raw bytes (little-endian on disk)
_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    """Stand-in for ``torch.<X>Storage``: only carries the dtype."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor_v2(
    storage: np.ndarray,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> np.ndarray:
    """Build an independent C-contiguous array from a flat storage, honouring offset and strides."""
    if not isinstance(storage, np.ndarray):
        raise UnsafeCheckpointError("tensor rebuild without a storage")
    itemsize = storage.dtype.itemsize
    if len(size) == 0:
        return np.array(storage[storage_offset], dtype=storage.dtype)
    needed = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if min(size) > 0 and needed > storage.size:
        raise UnsafeCheckpointError(
            f"tensor of size {size} with stride {stride} reads past its storage of {storage.size} items"
        )
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:],
        shape=tuple(size),
        strides=tuple(s * itemsize for s in stride),
        writeable=False,
    )
    return np.ascontiguousarray(view)


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
}


class Opaque:
    """Inert stand-in for a metadata object named in a checkpoint (a version string, an enum, a task
    description): it records the arguments and state the pickle gives it and runs no code of the
    named class, whose module is never imported."""

    qualified_name = ""
    args: tuple[Any, ...]
    state: Any

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        instance = super().__new__(cls)
        instance.args = args
        instance.state = None
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"Opaque({self.qualified_name}, args={self.args!r})"


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, archive: zipfile.ZipFile, root: str,
                 opaque_globals: Collection[str] = ()) -> None:
        super().__init__(file)
        self._archive = archive
        self._root = root
        self._opaque = frozenset(opaque_globals)
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if f"{module}.{name}" in self._opaque:
            return type(name, (Opaque,), {"qualified_name": f"{module}.{name}"})
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"checkpoint refers to {module}.{name}, which is not on the allow-list "
                "(tensors and OrderedDict only); refusing to load it"
            ) from None

    def persistent_load(self, pid: Any) -> np.ndarray:
        # ('storage', storage_type, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not key.isalnum():
            raise UnsafeCheckpointError(f"malformed storage reference {pid!r}")
        if key not in self._storages:
            raw = self._archive.read(f"{self._root}/data/{key}")
            expected_bytes = int(numel) * storage_type.dtype.itemsize
            if len(raw) != expected_bytes:
                raise UnsafeCheckpointError(
                    f"storage {key}: expected {expected_bytes} bytes, got {len(raw)} (truncated file?)"
                )
            self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype)
        return self._storages[key]


def load_state_dict(
    path: str | Path, entry: str | None = None, opaque_globals: Collection[str] = ()
) -> dict[str, np.ndarray]:
    """Load a ``torch.save`` zip checkpoint of plain tensors as NumPy arrays.

    Parameters
    ----------
    path
        A ``.pt`` file in PyTorch's zip format holding a (possibly ordered) dict of tensors.
    entry
        For a training checkpoint (a dict of metadata around the weights, e.g. PyTorch Lightning's):
        the key of the tensor dict inside it, e.g. ``"state_dict"``.
    opaque_globals
        Dotted names of metadata classes the checkpoint may name (e.g.
        ``"torch.torch_version.TorchVersion"``). They load as inert :class:`Opaque` records; their
        modules are never imported and none of their code runs. Anything else is still refused.

    Returns
    -------
    dict
        Parameter name -> C-contiguous array with the tensor's shape and dtype
        (e.g. ``float32`` weights, ``int64`` counters).

    Raises
    ------
    UnsafeCheckpointError
        The pickle names anything outside the allow-list, a storage is truncated, or the top-level
        object is not a dict of tensors.
    zipfile.BadZipFile
        The file is not a zip archive (e.g. a legacy, non-zip ``torch.save``).

    Examples
    --------
    >>> weights = load_state_dict("campplus_cn_en_common.pt")  # doctest: +SKIP
    >>> weights["head.conv1.weight"].shape  # doctest: +SKIP
    (32, 1, 3, 3)
    """
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise UnsafeCheckpointError(f"{path}: expected one <root>/data.pkl, found {pickles}")
        root = pickles[0].rsplit("/", 1)[0]
        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), archive, root, opaque_globals)
        obj = unpickler.load()
    if entry is not None:
        if not isinstance(obj, dict) or entry not in obj:
            raise UnsafeCheckpointError(f"{path}: top-level object has no entry {entry!r}")
        obj = obj[entry]
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()
    ):
        raise UnsafeCheckpointError(f"{path}: top-level object is not a dict of tensors")
    return dict(obj)
