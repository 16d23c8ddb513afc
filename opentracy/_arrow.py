"""Arrow arrays from numpy without pyarrow's pandas probe.

`pa.array(...)` and `pa.scalar(...)` on anything that is not already Arrow first ask whether it is a pandas
object, importing pandas to find out wherever it is installed: ~45 MB of resident memory and ~0.2 s, for a
library opentracy does not use. The upload's hot path builds its few non-Arrow columns here instead
(`tests/test_upload_paths.py` checks that an upload leaves pandas unimported).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def from_numpy(values: np.ndarray) -> pa.Array:
    """A 1-D numpy array of numbers or booleans as an Arrow array (no nulls; numbers without a copy)."""
    values = np.ascontiguousarray(values)
    if not values.dtype.isnative:
        values = values.astype(values.dtype.newbyteorder("="))
    if values.ndim != 1:
        raise ValueError(f"expected a 1-D array, got {values.ndim} dimensions")
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A copy of an Arrow array of fixed-width numbers, without nulls, as numpy (it keeps no Arrow batch alive)."""
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise TypeError(f"to_numpy: expected integers or floats, got {values.type}")
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    dtype = np.dtype(values.type.to_pandas_dtype())
    out = np.empty(len(values), dtype=dtype)
    at = 0
    for c in chunks:
        if c.null_count:
            raise ValueError("to_numpy: the array has nulls")
        n = len(c)
        if n == 0:
            continue
        out[at : at + n] = np.frombuffer(
            c.buffers()[1], dtype=dtype, count=n, offset=c.offset * dtype.itemsize
        )
        at += n
    return out
