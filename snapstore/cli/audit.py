"""The ``audit`` and ``diff`` commands: a thin shell over ``snapstore.audit`` and ``snapstore.diff``.

``main.build_parser`` calls ``add_parsers(subparsers)``; each command's
function returns 0 (clean, identical) or 1 (findings, different) and lets a
``SnapstoreError`` reach ``main.main``, which prints it and exits 1.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .progress import add_quiet

__all__ = ["add_parsers"]

def add_parsers(subparsers: Any) -> None:
    """Register ``audit`` and ``diff`` on an ``ArgumentParser.add_subparsers()`` object."""
    p = subparsers.add_parser(
        "audit", help="check a snapshot for damaged chunks and suspicious data",
        description="Check every chunk's checksum, epoch completeness, index coverage, non-finite and outlier "
                    "values, fields that change between epochs or from raw. Exits 0 clean, 1 findings.")
    p.add_argument("path", help="snapshot path or URL")
    p.add_argument("--stream", action="extend", nargs="+", metavar="S", help="streams to audit (default: all)")
    p.add_argument("--epoch", action="extend", nargs="+", type=int, metavar="E", help="epochs to audit (default: all)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_quiet(p)
    p.set_defaults(run=_audit)

    p = subparsers.add_parser(
        "diff", help="compare two snapshots: same indices, order and values?",
        description="Compare two snapshots through their per-row content hashes; print the first divergence. "
                    "Exits 0 identical, 1 different.")
    p.add_argument("a", help="first snapshot")
    p.add_argument("b", help="second snapshot")
    p.add_argument("--stream", metavar="S", help="compare only this stream")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_quiet(p)
    p.set_defaults(run=_diff)


def _emit(report: Any, as_json: bool) -> None:
    print(json.dumps(report.to_dict(), indent=2) if as_json else str(report))


def _audit(args: argparse.Namespace) -> int:
    from ..auditing.audit import audit

    report = audit(args.path, streams=args.stream, epochs=args.epoch, progress=not args.quiet)
    _emit(report, args.json)
    return 0 if report.ok else 1


def _diff(args: argparse.Namespace) -> int:
    from ..auditing.diff import diff
    from ..read.snapshot import open as open_snapshot

    a, b = open_snapshot(args.a), open_snapshot(args.b)
    if args.stream is not None:
        report = diff(a[args.stream], b[args.stream], progress=not args.quiet)
    else:
        report = diff(a, b, progress=not args.quiet)
    _emit(report, args.json)
    return 0 if report.identical else 1
