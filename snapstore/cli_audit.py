"""The ``audit``, ``diff`` and ``show`` commands: a thin shell over the public API.

``cli.py`` calls ``add_parsers(subparsers)`` to register them; each sets
``run`` (as ``cli.build_parser`` expects) to :func:`run`, which executes it. Exit codes: 0 clean / identical / written,
1 findings / different / a ``SnapstoreError`` (its message on stderr, no
traceback), 2 usage (argparse).

``main(argv)`` runs the three commands on their own, for tests.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .errors import SnapstoreError, UsageError

__all__ = ["add_parsers", "main", "run"]

_COMMAND = "_snapstore_audit_command"


def add_parsers(subparsers: Any) -> None:
    """Register ``audit``, ``diff`` and ``show`` on an ``ArgumentParser.add_subparsers()`` object."""
    p = subparsers.add_parser(
        "audit", help="check a snapshot for damaged chunks and suspicious data",
        description="Check every chunk's checksum, epoch completeness, index coverage, non-finite and outlier "
                    "values, fields that change between epochs or from raw. Exits 0 clean, 1 findings.")
    p.add_argument("path", help="snapshot path or URL")
    p.add_argument("--stream", action="extend", nargs="+", metavar="S", help="streams to audit (default: all)")
    p.add_argument("--epoch", action="extend", nargs="+", type=int, metavar="E", help="epochs to audit (default: all)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run, **{_COMMAND: "audit"})

    p = subparsers.add_parser(
        "diff", help="compare two snapshots: same indices, order and values?",
        description="Compare two snapshots through their per-row content hashes; print the first divergence. "
                    "Exits 0 identical, 1 different.")
    p.add_argument("a", help="first snapshot")
    p.add_argument("b", help="second snapshot")
    p.add_argument("--stream", metavar="S", help="compare only this stream")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run, **{_COMMAND: "diff"})

    p = subparsers.add_parser(
        "show", help="write a PNG of raw vs seen versions of samples",
        description="Draw, for each dataset index, the raw sample and its seen version in each epoch (image-like "
                    "fields) into a PNG, and print the other fields as a table.")
    p.add_argument("path", help="snapshot path or URL")
    p.add_argument("--stream", required=True, metavar="S", help="stream name, e.g. train")
    p.add_argument("--index", required=True, action="extend", nargs="+", type=int, metavar="I", help="dataset indices")
    p.add_argument("--epochs", action="extend", nargs="+", type=int, metavar="E", help="epochs (default: all)")
    p.add_argument("-o", "--out", required=True, metavar="OUT.png", help="PNG file to write")
    p.add_argument("--tile", type=int, default=96, help="pixels of a tile's longer side (default 96)")
    p.set_defaults(run=run, **{_COMMAND: "show"})


def run(args: argparse.Namespace) -> int:
    """Execute the command parsed by ``add_parsers``; returns the exit code."""
    command = getattr(args, _COMMAND, None)
    try:
        if command == "audit":
            return _audit(args)
        if command == "diff":
            return _diff(args)
        if command == "show":
            return _show(args)
    except SnapstoreError as e:
        print(f"snapstore {command}: error: {e}", file=sys.stderr)
        return 1
    print(f"snapstore: unknown command {command!r}", file=sys.stderr)
    return 2


def _emit(report: Any, as_json: bool) -> None:
    print(json.dumps(report.to_dict(), indent=2) if as_json else str(report))


def _audit(args: argparse.Namespace) -> int:
    from .audit import audit

    report = audit(args.path, streams=args.stream, epochs=args.epoch)
    _emit(report, args.json)
    return 0 if report.ok else 1


def _diff(args: argparse.Namespace) -> int:
    from .diff import diff
    from .reader import open as open_snapshot

    a, b = open_snapshot(args.a), open_snapshot(args.b)
    if args.stream is not None:
        for snap in (a, b):
            if args.stream not in snap:
                raise UsageError(f"no stream {args.stream!r} in {snap.path}; streams: {snap.streams}")
        report = diff(a[args.stream], b[args.stream])
    else:
        report = diff(a, b)
    _emit(report, args.json)
    return 0 if report.identical else 1


def _show(args: argparse.Namespace) -> int:
    from .reader import open as open_snapshot
    from .show import render, table

    snap = open_snapshot(args.path)
    if args.stream not in snap:
        raise UsageError(f"no stream {args.stream!r} in {snap.path}; streams: {snap.streams}")
    stream = snap[args.stream]
    image = render(stream, args.index, epochs=args.epochs, tile=args.tile)
    try:
        image.save(args.out, format="PNG")
    except OSError as e:
        raise UsageError(f"cannot write {args.out}: {e}") from e
    print(table(stream, args.index, epochs=args.epochs))
    print(f"wrote {args.out} ({image.size[0]}x{image.size[1]} pixels)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``audit``/``diff``/``show`` as a standalone command line (``cli.main`` is the real entry point)."""
    parser = argparse.ArgumentParser(prog="snapstore")
    add_parsers(parser.add_subparsers(required=True, metavar="command"))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    return run(args)
