"""Audit: is the DataLoader corrupting my data, has the dataset changed, where do two runs differ?

``audit`` (one scan of every chunk, ``scan``, then the pure ``checks``),
``compare``, ``diff`` and ``verify`` (a rerun against the hashes), each returning a plain report (``report``).
"""

from __future__ import annotations

from .audit import audit
from .compare import compare
from .diff import diff
from .report import AuditReport, CompareReport, DiffReport, Divergence, FieldStats, Finding
from .verify import verify

__all__ = ["AuditReport", "CompareReport", "DiffReport", "Divergence", "FieldStats", "Finding", "audit", "compare",
           "diff", "verify"]
