"""Read: open a snapshot read-only and recover what was recorded.

``open`` and ``Snapshot`` (``snapshot``), ``Stream``, ``Epoch``,
``RawSamples``; where each row lives (``plan``) and how rows are read in
blocks (``blocks``); NumPy (``numpy``) and torch (``replay``) outputs.
"""

from __future__ import annotations

from .epoch import Epoch
from .raw import RawSamples
from .snapshot import Snapshot, open
from .stream import Stream

__all__ = ["Epoch", "RawSamples", "Snapshot", "Stream", "open"]
