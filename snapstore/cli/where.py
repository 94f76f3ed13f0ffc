"""The ``where`` and ``verify`` commands: a thin shell over ``Stream.where`` and ``snapstore.verify``.

``main.build_parser`` calls ``add_parsers(subparsers)``; a ``SnapstoreError``
reaches ``main.main``, which prints it and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import runpy
from typing import Any

from ..errors import UsageError
from .progress import add_quiet

__all__ = ["add_parsers"]


def add_parsers(subparsers: Any) -> None:
    """Register ``where`` and ``verify`` on an ``ArgumentParser.add_subparsers()`` object."""
    p = subparsers.add_parser(
        "where", help="when was a dataset index seen: every epoch, rank, batch and position",
        description="List every (epoch, rank, batch, position) at which dataset index INDEX was seen in a "
                    "stream, from each epoch's inverse index. Exits 0 (also when it was never seen).")
    p.add_argument("path", help="snapshot path or URL")
    p.add_argument("--stream", required=True, metavar="NAME", help="the stream, e.g. train")
    p.add_argument("index", type=int, help="dataset index")
    p.add_argument("--json", action="store_true", help="print a JSON list of {epoch, rank, batch, position}")
    p.set_defaults(run=_where)

    p = subparsers.add_parser(
        "verify", help="rerun a loader and check it yields what a stream recorded (hashes only)",
        description="Build a DataLoader with LOADER (module:function or file.py:function, called with no "
                    "arguments), run it once per recorded epoch (calling sampler.set_epoch(e) when the sampler "
                    "has it) and compare batch sizes and per-row content hashes with the recording. "
                    "Exits 0 identical, 1 different.")
    p.add_argument("path", help="snapshot path or URL")
    p.add_argument("--stream", required=True, metavar="NAME", help="the stream, e.g. train")
    p.add_argument("--loader", required=True, metavar="LOADER", help="module:function or file.py:function")
    p.add_argument("--epoch", type=int, metavar="E", help="verify only epoch E (default: every epoch)")
    p.add_argument("--rank", type=int, metavar="R", help="the rank to verify, for a stream recorded by several")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_quiet(p)
    p.set_defaults(run=_verify)


def _where(args: argparse.Namespace) -> int:
    from ..read.snapshot import open as open_snapshot

    found = open_snapshot(args.path)[args.stream].where(index=args.index)
    if args.json:
        print(json.dumps([s._asdict() for s in found], indent=2))
    elif not found:
        print(f"dataset index {args.index} was never seen in stream {args.stream!r}")
    else:
        print(f"dataset index {args.index} was seen {len(found)} time(s) in stream {args.stream!r}:")
        for s in found:
            print(f"  epoch {s.epoch}  rank {s.rank}  batch {s.batch}  position {s.position}")
    return 0


def _load(spec: str) -> Any:
    """The object ``module:function`` or ``path/to/file.py:function`` names."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise UsageError(f"--loader {spec!r} is not module:function or file.py:function")
    namespace = runpy.run_path(where) if where.endswith(".py") else vars(importlib.import_module(where))
    if name not in namespace:
        raise UsageError(f"--loader {spec!r}: {where} defines no {name!r}")
    return namespace[name]


def _verify(args: argparse.Namespace) -> int:
    from ..auditing.verify import verify
    from ..read.snapshot import open as open_snapshot

    stream = open_snapshot(args.path)[args.stream]
    if args.rank is not None:
        stream = stream.rank(args.rank)
    target = stream if args.epoch is None else stream.epoch(args.epoch)
    report = verify(target, _load(args.loader)(), progress=not args.quiet)
    print(json.dumps(report.to_dict(), indent=2) if args.json else str(report))
    return 0 if report.identical else 1
