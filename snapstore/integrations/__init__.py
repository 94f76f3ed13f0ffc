"""Integrations with training frameworks (Lightning, Accelerate, the Hugging Face Trainer), built on
``snapstore.record``."""

from __future__ import annotations

__all__: list[str] = []
