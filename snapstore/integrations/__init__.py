"""Recording inside training frameworks, each in its own module that imports its framework (the
``integrations`` extra): ``lightning`` (a callback), ``accelerate`` (``prepare``), ``transformers``
(the ``Trainer``). Loaders a framework iterates itself need nothing here: wrap them (see docs/INTEGRATIONS.md)."""

from __future__ import annotations

__all__: list[str] = []
