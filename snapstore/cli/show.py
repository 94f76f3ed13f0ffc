"""Pictures of recorded samples: the raw sample next to what each epoch saw.

``render`` draws a PNG-ready grid (Pillow): one row per dataset index, one
column for each image-like raw field and, per epoch, each image-like seen
field. ``table`` lists the other fields (labels, ids, short vectors) as
text. Neither needs the original dataset.

A field is image-like when its rows are 2-D ``(H, W)``, or 3-D with 1 or 3
channels first ``(C, H, W)`` or last ``(H, W, C)``, and numeric. ``uint8``
images are drawn as stored; other dtypes are stretched per tile from their
smallest to their largest finite value; non-finite pixels are magenta.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..audit.checks import numeric_view
from ..core.manifest import FieldInfo
from ..errors import UsageError
from ..read.epoch import Epoch
from ..read.snapshot import open as open_snapshot
from ..read.stream import Stream

__all__ = ["add_parser", "grid_size", "image_like", "render", "table"]

#: Pixels of one tile's longer side.
DEFAULT_TILE = 96

#: Pixels around tiles; width of the left column of row labels; height of the header row.
MARGIN = 6

LABEL_WIDTH = 84

HEADER_HEIGHT = 18

_NONFINITE = (255, 0, 255)


def image_like(info: FieldInfo) -> bool:
    """Whether rows of a field can be drawn as images (see the module docstring)."""
    if info.dtype == "str" or info.ragged or None in info.shape:
        return False
    s = tuple(int(d) for d in info.shape if d is not None)
    if len(s) == 2:
        return min(s) >= 2
    if len(s) == 3:
        return (s[0] in (1, 3) and min(s[1:]) >= 2) or (s[2] in (1, 3) and min(s[:2]) >= 2)
    return False


def grid_size(rows: int, columns: int, tile: int = DEFAULT_TILE) -> tuple[int, int]:
    """``(width, height)`` in pixels of a grid of ``rows`` x ``columns`` tiles."""
    return (LABEL_WIDTH + columns * (tile + MARGIN) + MARGIN, HEADER_HEIGHT + rows * (tile + MARGIN) + MARGIN)


def _epochs(stream: Stream, epochs: Sequence[int] | None) -> list[Epoch]:
    numbers = stream.epochs if epochs is None else list(epochs)
    missing = [e for e in numbers if e not in stream.epochs]
    if missing:
        raise UsageError(f"stream {stream.name!r} has no epoch(s) {missing}; recorded epochs: {stream.epochs}")
    return [stream.epoch(e) for e in numbers]


def _raw_row(stream: Stream, field: str, index: int) -> np.ndarray | None:
    try:
        return stream.raw.gather(field, [index])[0]
    except KeyError:
        return None


def _seen_row(epoch: Epoch, field: str, index: int) -> np.ndarray | None:
    where = epoch.positions(index=index)
    return epoch.gather(field, where[:1])[0] if len(where) else None


def _pixels(row: np.ndarray, info: FieldInfo) -> np.ndarray:
    """``row`` as an (H, W, 3) uint8 image."""
    x = numeric_view(row[np.newaxis], info.dtype)
    if x is None:
        raise UsageError(f"field of dtype {info.dtype} cannot be drawn")
    x = x[0]
    if x.ndim == 3 and x.shape[0] in (1, 3):  # channels first (preferred when ambiguous)
        x = np.moveaxis(x, 0, -1)
    if x.ndim == 2:
        x = x[..., np.newaxis]
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    v = x.astype(np.float64)
    finite = np.isfinite(v)
    lo, hi = (float(v[finite].min()), float(v[finite].max())) if finite.any() else (0.0, 0.0)
    scaled = (v - lo) / (hi - lo) * 255 if hi > lo else np.full_like(v, 128.0)
    out = np.where(finite, scaled, 0).clip(0, 255).astype(np.uint8)
    out[~finite.all(axis=2)] = _NONFINITE
    return out


def _columns(stream: Stream, epochs: list[Epoch]) -> list[tuple[str, Epoch | None, str, FieldInfo]]:
    m = stream.manifest
    cols: list[tuple[str, Epoch | None, str, FieldInfo]] = [
        (f"raw '{p}'", None, p, info) for p, info in m.raw_fields.items() if image_like(info)
    ]
    for ep in epochs:
        cols += [(f"epoch {ep.number} '{p}'", ep, p, info) for p, info in m.fields.items() if image_like(info)]
    return cols


def render(stream: Stream, indices: Sequence[int], *, epochs: Sequence[int] | None = None,
           tile: int = DEFAULT_TILE) -> Any:
    """A grid of the raw and seen versions of ``indices``, as a ``PIL.Image.Image`` (RGB).

    Parameters
    ----------
    stream : Stream
    indices : sequence of int
        Dataset indices, one grid row each.
    epochs : sequence of int, optional
        Epochs to show; default every recorded epoch.
    tile : int, default 96
        Pixels of a tile's longer side (images are scaled, nearest neighbour).

    Returns
    -------
    PIL.Image.Image
        ``grid_size(len(indices), columns, tile)`` pixels when the stream has
        image-like fields (columns: each image-like raw field, then each
        epoch's image-like seen fields); otherwise the text of ``table``
        drawn on a white image. A tile is blank where an index has no raw
        sample or was not seen in that epoch.

    Raises
    ------
    UsageError
        Pillow is missing, no index is given, or an epoch was not recorded.
    """
    try:
        from PIL import Image, ImageDraw
    except ImportError:  # pragma: no cover - Pillow is a test dependency only
        raise UsageError("show needs Pillow: pip install pillow") from None
    if not len(indices):
        raise UsageError("show needs at least one dataset index")
    eps = _epochs(stream, epochs)
    cols = _columns(stream, eps)
    if not cols:
        text = table(stream, indices, epochs=epochs)
        lines = text.splitlines()
        img = Image.new("RGB", (MARGIN * 2 + 7 * max(len(s) for s in lines), MARGIN * 2 + 14 * len(lines)), "white")
        ImageDraw.Draw(img).multiline_text((MARGIN, MARGIN), text, fill="black", spacing=3)
        return img
    img = Image.new("RGB", grid_size(len(indices), len(cols), tile), "white")
    draw = ImageDraw.Draw(img)
    for j, (label, _, _, _) in enumerate(cols):
        draw.text((LABEL_WIDTH + j * (tile + MARGIN), 3), label[: max(4, tile // 6)], fill="black")
    for r, index in enumerate(int(i) for i in indices):
        top = HEADER_HEIGHT + r * (tile + MARGIN)
        draw.text((MARGIN, top + tile // 2 - 6), f"index {index}", fill="black")
        for j, (_, ep, field, info) in enumerate(cols):
            left = LABEL_WIDTH + j * (tile + MARGIN)
            row = _raw_row(stream, field, index) if ep is None else _seen_row(ep, field, index)
            if row is None:
                draw.rectangle([left, top, left + tile - 1, top + tile - 1], outline=(200, 200, 200))
                draw.text((left + 4, top + tile // 2 - 6), "not seen" if ep is not None else "no raw", fill=(150, 150, 150))
                continue
            pix = Image.fromarray(_pixels(row, info))
            scale = tile / max(pix.size)
            size = (max(1, round(pix.size[0] * scale)), max(1, round(pix.size[1] * scale)))
            pix = pix.resize(size, Image.Resampling.NEAREST)
            img.paste(pix, (left + (tile - size[0]) // 2, top + (tile - size[1]) // 2))
    return img


def _cell(row: np.ndarray | None) -> str:
    if row is None:
        return "-"
    a = np.asarray(row)
    if a.ndim == 0:
        return str(a.item())
    if a.size <= 8:
        return np.array2string(a, precision=4, separator=",", threshold=8).replace("\n", "")
    v = numeric_view(a[np.newaxis], str(a.dtype))
    if v is None:
        return f"{a.dtype} {a.shape}"
    v = v.astype(np.float64)
    return f"{a.dtype} {a.shape} mean={np.nanmean(v):.4g} min={np.nanmin(v):.4g} max={np.nanmax(v):.4g}"


def table(stream: Stream, indices: Sequence[int], *, epochs: Sequence[int] | None = None,
          fields: Sequence[str] | None = None) -> str:
    """A text table of the raw and seen values of ``indices`` for fields that are not image-like.

    One line per (index, field): the raw value, then the value seen in each
    epoch (``-`` where there is none). Pass ``fields`` to choose fields,
    image-like ones included (they are summarised by dtype, shape and range).
    """
    eps = _epochs(stream, epochs)
    m = stream.manifest
    names = list(fields) if fields is not None else [
        p for p in dict.fromkeys([*m.raw_fields, *m.fields])
        if not image_like(m.fields.get(p) or m.raw_fields[p])
    ]
    rows = [["index", "field", "raw", *(f"epoch {ep.number}" for ep in eps)]]
    for index in (int(i) for i in indices):
        for p in names:
            raw = _raw_row(stream, p, index) if p in m.raw_fields else None
            seen = [_seen_row(ep, p, index) if p in m.fields else None for ep in eps]
            rows.append([str(index), p, _cell(raw), *(_cell(s) for s in seen)])
    if len(rows) == 1:
        return "(no fields to tabulate)"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


# -- the command ------------------------------------------------------------------
def add_parser(subparsers: Any) -> None:
    """Register ``show`` on an ``ArgumentParser.add_subparsers()`` object."""
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
    p.set_defaults(run=_show)


def _show(args: argparse.Namespace) -> int:
    stream = open_snapshot(args.path)[args.stream]
    image = render(stream, args.index, epochs=args.epochs, tile=args.tile)
    try:
        image.save(args.out, format="PNG")
    except OSError as e:
        raise UsageError(f"cannot write {args.out}: {e}") from e
    print(table(stream, args.index, epochs=args.epochs))
    print(f"wrote {args.out} ({image.size[0]}x{image.size[1]} pixels)")
    return 0
