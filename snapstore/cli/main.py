"""The ``snapstore`` command line: a thin shell over the public API.

``main(argv=None) -> int`` returns the exit status: 0 success, 1 a
``SnapstoreError`` (its message on stderr, no traceback), 2 a usage error.
This is the only module that prints.

Adding a subcommand is one function ``_name(args) -> int`` and one block in
:func:`build_parser` that adds its parser and ``set_defaults(run=_name)``.

Startup is kept short (``snapstore --version`` and ``--help`` answer in a
tenth of a second): building the parser imports nothing heavy, and each
subcommand imports what it needs (zarr, torch, numpy, Pillow) inside its
function. ``tests/cli/test_main.py`` checks that ``--help`` imports neither
torch nor zarr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from ..errors import SnapshotExistsError, SnapstoreError
from . import audit as cli_audit
from . import export as cli_export
from . import progress, show, where

__all__ = ["build_parser", "format_info", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Examples
    --------
    >>> main(["info", "runs/exp1.snap", "--json"])  # doctest: +SKIP
    0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage error (2) or --help/--version (0)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        with progress.reporting(quiet=args.quiet):
            return args.run(args)
    except SnapstoreError as e:
        print(f"snapstore {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"snapstore {args.command}: interrupted", file=sys.stderr)
        return 130


# -- subcommands: one function each ------------------------------------------
def _info(args: argparse.Namespace) -> int:
    from ..storage import open_group, tree  # the manifests are all info needs: no torch, no read layer

    info = tree.summary(open_group(args.path, mode="r"), args.path)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    out = args.out or os.path.join(tempfile.mkdtemp(prefix="snapstore-demo-"), "digits.snap")
    if os.path.lexists(out) and not args.overwrite:
        raise SnapshotExistsError(
            f"{out} exists; pass --overwrite to replace the snapshot there, or choose another --out"
        )
    demo.run(out, overwrite=args.overwrite, echo=print)
    print()
    print(f"the snapshot stays at {out}: try `snapstore info {out}` or `snapstore.open({out!r})` in Python")
    return 0


def _verify(args: argparse.Namespace) -> int:  # the demo's fresh process
    from ..read.snapshot import open as open_snapshot
    from . import demo

    with open(args.fingerprints) as f:
        prints = json.load(f)
    print(format_info(open_snapshot(args.path).info()))
    print()
    report = demo.verify(args.path, prints)
    print(report)
    if not report.ok:
        raise SnapstoreError(
            f"{report.batches - report.identical} replayed batches and {report.batches - report.outputs_identical} "
            "batches of outputs differ from what the training loop saw"
        )
    return 0

# -- the parser: one block per subcommand ------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``snapstore`` argument parser; each subcommand sets ``run``, its function."""
    parser = argparse.ArgumentParser(
        prog="snapstore",
        description="Persistent dataset snapshots for PyTorch: inspect what a DataLoader recorded.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    progress.add_quiet(parser, command=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser(
        "info", help="summarise a snapshot: streams, epochs, fields, outputs, bytes stored",
        description="Print a snapshot's streams, epochs (rows, batches, complete), fields, outputs, "
        "raw sample count and bytes stored.",
    )
    p.add_argument("path", help="snapshot directory or URL")
    p.add_argument("--json", action="store_true", help="print snapstore.open(path).info() as JSON")
    p.set_defaults(run=_info)

    p = commands.add_parser(
        "demo", help="train a small CNN on real digits, record it, and verify the replay",
        description="Train a small CNN for 2 epochs on scikit-learn's bundled handwritten digits while "
        "recording the train and test loaders, then reopen the snapshot in a fresh process and check that "
        "every replayed batch equals what the training loop saw.",
    )
    p.add_argument("--out", metavar="PATH", help="where to write the snapshot (default: a new temporary directory)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing snapshot at --out")
    p.set_defaults(run=_demo)

    cli_audit.add_parsers(commands)  # audit, diff
    cli_export.add_parser(commands)
    show.add_parser(commands)
    where.add_parsers(commands)  # where, verify

    p = commands.add_parser("_verify")  # no help=: hidden; the demo's fresh process
    p.add_argument("path")
    p.add_argument("--fingerprints", required=True)
    p.set_defaults(run=_verify)

    return parser

def _version() -> str:
    try:
        return metadata.version("snapstore")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


# -- formatting ------------------------------------------------------------
def format_info(info: dict[str, Any]) -> str:
    """``Snapshot.info()`` as readable text."""
    versions = info.get("versions", {})
    lines = [
        f"snapshot {info['path']}",
        (
            f"  format version {info['format_version']}, created {info['created']} by snapstore "
            f"{versions.get('snapstore', '?')} (torch {versions.get('torch', '?')}, zarr {versions.get('zarr', '?')})"
        ),
        f"  bytes stored: {_bytes(info['bytes_stored'])}",
    ]
    if not info["streams"]:
        lines.append("  no streams recorded")
    for name, stream in info["streams"].items():
        kind = "iterable dataset" if stream["iterable"] else f"map-style dataset of {stream['dataset_len']:,} samples"
        ranks = stream.get("world_size", 1)
        kind += f", recorded by {ranks} ranks" if ranks > 1 else ""
        lines += ["", f"stream {name!r}: {kind}, {stream['raw_samples']:,} raw samples recorded"]
        lines += _field_lines("fields", stream["fields"])
        lines += _field_lines("outputs", stream["outputs"])
        if not stream["epochs"]:
            lines.append("  epochs: none recorded")
            continue
        lines.append("  epochs:")
        lines += [
            f"    epoch {e['epoch']}: {_count(e['rows'], 'row')} in {_count(e['batches'], 'batch')}, "
            f"{'complete' if e['complete'] else 'incomplete (cut short)'}"
            for e in stream["epochs"]
        ]
    return "\n".join(lines)


def _field_lines(title: str, fields: dict[str, dict[str, Any]]) -> list[str]:
    if not fields:
        return [f"  {title}: none"]
    width = max(len(p) for p in fields)
    lines = [f"  {title}:"]
    for path, f in fields.items():
        dims = ["*" if n is None else str(n) for n in f["shape"]]  # None: a dimension that varies by row
        shape = "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
        ragged = "  ragged" if f.get("ragged") else ""
        lines.append(f"    {path:<{width}}  {f['dtype']:<8}  {shape:<12}  {f['kind']}{ragged}")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "es" if noun.endswith("ch") else "s")


def _bytes(n: int) -> str:
    size, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{n:,} bytes" if unit == "B" else f"{n:,} bytes ({size:.1f} {unit})"
