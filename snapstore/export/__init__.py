"""Export: recorded rows to other libraries, each imported only when used.

``to_numpy`` and ``out_specs`` (NumPy, from ``snapstore.read``), ``tf``
(``tf.data``) and ``dask`` (``dask.array``).
"""

from __future__ import annotations

from ..read.numpy import INDEX, LENGTHS, RAGGED_MODES, out_specs, to_numpy

__all__ = ["INDEX", "LENGTHS", "RAGGED_MODES", "out_specs", "to_numpy"]
