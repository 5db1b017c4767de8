"""Model states as Flower ArrayRecords and back: the one codec both sides of the wire use for weights.

Flower's own `ArrayRecord(state_dict)` and `to_torch_state_dict()` write each array with `np.save` and read it with
`np.load`, building or parsing its .npy header every time (the parse with `ast.literal_eval`) and copying every
array on the way in; each round moves a full 8.1 M-parameter state to and from every site. Here each header is made
or parsed once per (dtype, shape) (every message of a run carries the same ~400), and reading returns read-only
views of the received bytes. The bytes are the same .npy format, so Flower's readers and ours agree (tested).
"""

from __future__ import annotations

import functools
import io
import math
import warnings

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType

State = dict[str, np.ndarray]
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


@functools.lru_cache(maxsize=4096)
def _npy_prefix(descr: str, shape: tuple[int, ...]) -> bytes:
    """The header `np.save` writes for a C-ordered array of this dtype and shape."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def to_array(v: np.ndarray) -> Array:
    """`Array.from_numpy_ndarray` with the header cached; C order, shape kept (0-d too)."""
    a = np.require(v, requirements="C")
    if a.dtype.hasobject:
        raise ValueError("object arrays cannot be sent")
    data = b"".join((_npy_prefix(np.lib.format.dtype_to_descr(a.dtype), a.shape), a.reshape(-1).view(np.uint8)))
    return Array(dtype=str(a.dtype), shape=tuple(a.shape), stype=SType.NUMPY, data=data)


def to_record(state: State) -> ArrayRecord:
    return ArrayRecord({k: to_array(v) for k, v in state.items()})


@functools.lru_cache(maxsize=4096)
def _npy_header(prefix: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset) of a .npy header."""
    head = io.BytesIO(prefix)
    read_header = _NPY_HEADERS.get(np.lib.format.read_magic(head))
    if read_header is None:
        raise ValueError("unsupported .npy version")
    shape, fortran, dtype = read_header(head)
    if dtype.hasobject:
        raise ValueError("object arrays are not accepted")
    return shape, fortran, dtype, head.tell()


def view(array: Array) -> np.ndarray:
    """A read-only view of a NumPy-serialised Array's bytes: what `Array.numpy()` returns, without its copy."""
    data = array.data
    size = 10 if data[6:7] == b"\x01" else 12  # magic (6), version (2), header length (2 bytes in v1, 4 in v2)
    length = int.from_bytes(data[8:size], "little")
    shape, fortran, dtype, offset = _npy_header(bytes(data[: size + length]))
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")


def from_record(record: ArrayRecord) -> State:
    return {k: view(record[k]) for k in record.keys()}


def as_tensors(state: State) -> dict[str, torch.Tensor]:
    """CPU tensors sharing the arrays' memory (read-only views included), for `load_state_dict`, which copies
    them: never change them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return {k: torch.from_numpy(v) for k, v in state.items()}


def torch_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """The record as CPU tensors sharing its bytes (see `as_tensors`)."""
    return as_tensors(from_record(record))
