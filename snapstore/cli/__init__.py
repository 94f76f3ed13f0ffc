"""The ``snapstore`` command line: a thin shell over the public API (``main``)."""

from __future__ import annotations

from .main import main

__all__ = ["main"]
