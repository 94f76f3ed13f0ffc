"""Record: what the model saw, written while it trains.

``Recorder`` and ``record()`` (``recorder``), the training-thread side of a
stream (``loader``), the worker side (``capture``), the writer process
(``writer``) and its state (``sinks``), and provenance.
"""

from __future__ import annotations

from .loader import RecordingLoader
from .recorder import Recorder, record

__all__ = ["Recorder", "RecordingLoader", "record"]
