"""Pictures of recorded samples: the raw sample next to what each epoch saw.

``render`` draws a PNG-ready grid (Pillow) that reads on its own: one row
per dataset index, labelled with the index and the row's small fields
(labels, ids, short vectors); one column for each image-like raw field and,
per epoch, each image-like seen field, titled ``raw`` or ``epoch e`` with the
field below; under each seen tile the position at which the epoch saw it (in
red, with the value, when a small field was seen with another value than
the row's). ``table`` lists the small fields as text. Neither needs the
original dataset.

A field is image-like when its rows are 2-D ``(H, W)``, or 3-D with 1 or 3
channels first ``(C, H, W)`` or last ``(H, W, C)``, and numeric. ``uint8``
images are drawn as stored; other dtypes are stretched per tile from their
smallest to their largest finite value; non-finite pixels are magenta.

An index the stream's dataset does not have, or one with no raw sample that
no chosen epoch saw, is a ``UsageError`` naming the valid indices: there is
nothing of it to draw.

numpy, Pillow and the reading layers are imported inside the functions, so
that building the command line's parser stays cheap (see ``main``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    import numpy as np

    from ..core.manifest import FieldInfo
    from ..read.epoch import Epoch
    from ..read.stream import Stream

__all__ = ["add_parser", "column_width", "grid_size", "image_like", "render", "table"]

#: Pixels of one tile's longer side.
DEFAULT_TILE = 96

#: Pixels around and between tiles.
MARGIN = 6

#: Font sizes in pixels: titles and row indices; field names, values and positions.
FONT_SIZE = 14

SMALL_FONT_SIZE = 12

#: Width of the left column (index and small fields of each row).
LABEL_WIDTH = 168

#: Narrowest column, so that "epoch 10" and "position 1234" fit above and below small tiles.
MIN_COLUMN = 88

#: Height of the header row: a title line and a field line.
HEADER_HEIGHT = MARGIN + (FONT_SIZE + 4) + (SMALL_FONT_SIZE + 4)

#: Height of the line under each tile (the position in the epoch).
CAPTION_HEIGHT = SMALL_FONT_SIZE + 6

#: Characters of a small field's value shown in the picture before it is cut with "…".
VALUE_CHARS = 24

_NONFINITE = (255, 0, 255)
_INK, _GREY, _FAINT, _ALERT = (0, 0, 0), (100, 100, 100), (190, 190, 190), (200, 0, 0)


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
    return (LABEL_WIDTH + columns * (column_width(tile) + MARGIN) + MARGIN,
            HEADER_HEIGHT + rows * (tile + CAPTION_HEIGHT + MARGIN) + MARGIN)


def column_width(tile: int) -> int:
    """Pixels of one column of tiles: the tile, or ``MIN_COLUMN`` when that is wider."""
    return max(tile, MIN_COLUMN)


def _epochs(stream: Stream, epochs: Sequence[int] | None) -> list[Epoch]:
    numbers = stream.epochs if epochs is None else list(epochs)
    missing = [e for e in numbers if e not in stream.epochs]
    if missing:
        raise UsageError(f"stream {stream.name!r} has no epoch(s) {missing}; recorded epochs: {stream.epochs}")
    return [stream.epoch(e) for e in numbers]


def _check_indices(stream: Stream, indices: Sequence[int], eps: list[Epoch]) -> list[int]:
    """``indices`` as ints; ``UsageError`` naming the valid range for one outside the dataset or never recorded."""
    import numpy as np

    if not len(indices):
        raise UsageError("show needs at least one dataset index")
    chosen = [int(i) for i in indices]
    n = stream.manifest.dataset_len
    if n is not None:
        outside = [i for i in chosen if not 0 <= i < n]
        if outside:
            raise UsageError(f"dataset index {outside[0]} is out of range: the dataset of stream {stream.name!r} has "
                             f"{n:,} samples, indices 0..{n - 1}")
    recorded = np.unique(np.concatenate([stream.raw.indices, *(ep.order for ep in eps)]).astype(np.int64))
    missing = [i for i, known in zip(chosen, np.isin(chosen, recorded)) if not known]
    if missing:
        where = f"epoch(s) {[ep.number for ep in eps]}" if eps else "any epoch (none chosen)"
        span = (f"{len(recorded):,} indices in {int(recorded[0])}..{int(recorded[-1])}" if len(recorded)
                else "none")
        raise UsageError(f"dataset index {missing[0]} has no raw sample in stream {stream.name!r} and was not seen in "
                         f"{where}: nothing to show; recorded there: {span}")
    return chosen


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
    import numpy as np

    from ..auditing.checks import numeric_view

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
        ("raw", None, p, info) for p, info in m.raw_fields.items() if image_like(info)
    ]
    for ep in epochs:
        cols += [(f"epoch {ep.number}", ep, p, info) for p, info in m.fields.items() if image_like(info)]
    return cols


def _small_fields(stream: Stream) -> list[str]:
    """Paths of the fields that are not image-like, raw fields first: the row labels' values."""
    m = stream.manifest
    return [p for p in dict.fromkeys([*m.raw_fields, *m.fields]) if not image_like(m.fields.get(p) or m.raw_fields[p])]


def _fonts() -> tuple[Any, Any]:
    """Pillow's default font at ``FONT_SIZE`` and ``SMALL_FONT_SIZE`` (its bitmap font without FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=FONT_SIZE), ImageFont.load_default(size=SMALL_FONT_SIZE)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType: one fixed size
        font = ImageFont.load_default()
        return font, font


def _fit(font: Any, text: str, width: int) -> str:
    """``text`` cut with "…" to fit ``width`` pixels in ``font``."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _short(row: Any) -> str:
    """A small field's value as a few characters (``VALUE_CHARS`` at most)."""
    text = _cell(row)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


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
        drawn on a white image. Each row is labelled with its index and small
        fields, each column with ``raw`` or ``epoch e`` and the field, each
        seen tile with its position. A tile is an outline where an index has
        no raw sample, or was not seen in that epoch.

    Raises
    ------
    UsageError
        Pillow is missing, no index is given, an epoch was not recorded, or an
        index is outside the dataset or was never recorded (no raw sample, not
        seen in a chosen epoch).
    """
    try:
        from PIL import Image, ImageDraw
    except ImportError:  # pragma: no cover - Pillow is a test dependency only
        raise UsageError("show needs Pillow: pip install pillow") from None
    if tile < 8:
        raise UsageError(f"tiles must be at least 8 pixels wide, got {tile}")
    eps = _epochs(stream, epochs)
    chosen = _check_indices(stream, indices, eps)
    cols = _columns(stream, eps)
    font, small = _fonts()
    if not cols:
        return _draw_table(_table_rows(stream, chosen, eps, _small_fields(stream)), font)
    img = Image.new("RGB", grid_size(len(chosen), len(cols), tile), "white")
    draw = ImageDraw.Draw(img)
    draw.text((MARGIN, MARGIN), _fit(font, f"stream {stream.name!r}", LABEL_WIDTH - MARGIN), fill=_INK, font=font)
    draw.text((MARGIN, MARGIN + FONT_SIZE + 4), "dataset index", fill=_GREY, font=small)
    width = column_width(tile)
    for j, (title, _, field, _) in enumerate(cols):
        left = LABEL_WIDTH + j * (width + MARGIN)
        draw.text((left, MARGIN), _fit(font, title, width), fill=_INK, font=font)
        draw.text((left, MARGIN + FONT_SIZE + 4), _fit(small, f"field {field!r}", width), fill=_GREY, font=small)
    smalls = _small_fields(stream)
    row_height = tile + CAPTION_HEIGHT + MARGIN
    for r, index in enumerate(chosen):
        top = HEADER_HEIGHT + r * row_height
        label = _row_values(stream, eps, smalls, index)
        _draw_label(draw, font, small, index, label, top, tile + CAPTION_HEIGHT)
        for j, (_, ep, field, info) in enumerate(cols):
            column = LABEL_WIDTH + j * (width + MARGIN)
            left = column  # tiles, titles and captions align left
            row = _raw_row(stream, field, index) if ep is None else _seen_row(ep, field, index)
            if row is None:
                draw.rectangle([left, top, left + tile - 1, top + tile - 1], outline=_FAINT)
                missing = "not seen" if ep is not None else "no raw"
                draw.text((left + 4, top + tile // 2 - SMALL_FONT_SIZE // 2), missing, fill=_GREY, font=small)
            else:
                pix = Image.fromarray(_pixels(row, info))
                scale = tile / max(pix.size)
                size = (max(1, round(pix.size[0] * scale)), max(1, round(pix.size[1] * scale)))
                pix = pix.resize(size, Image.Resampling.NEAREST)
                img.paste(pix, (left + (tile - size[0]) // 2, top + (tile - size[1]) // 2))
            if ep is not None and row is not None:
                caption, alert = _caption(ep, smalls, index, label)
                draw.text((column, top + tile + 2), _fit(small, caption, width), fill=_ALERT if alert else _GREY,
                          font=small)
    return img


def _row_values(stream: Stream, eps: list[Epoch], fields: list[str], index: int) -> dict[str, str]:
    """The row label's value of each small field: the raw sample's, else the first chosen epoch's that saw it."""
    m = stream.manifest
    values = {}
    for p in fields:
        row = _raw_row(stream, p, index) if p in m.raw_fields else None
        if row is None and p in m.fields:
            row = next((s for s in (_seen_row(ep, p, index) for ep in eps) if s is not None), None)
        if row is not None:
            values[p] = _short(row)
    return values


def _caption(ep: Epoch, fields: list[str], index: int, label: dict[str, str]) -> tuple[str, bool]:
    """The text under a seen tile and whether it flags a small field seen with another value than the label's."""
    where = ep.positions(index=index)
    text = f"position {int(where[0])}" + (f" (+{len(where) - 1})" if len(where) > 1 else "")
    m = ep.stream.manifest
    changed = [(p, v) for p in fields if p in m.fields and p in label
               for v in [_short(ep.gather(p, where[:1])[0])] if v != label[p]]
    if changed:
        return f"pos {int(where[0])}: " + ", ".join(f"{p}={v}" for p, v in changed), True
    return text, False


def _draw_label(draw: Any, font: Any, small: Any, index: int, values: dict[str, str], top: int, height: int) -> None:
    width = LABEL_WIDTH - 2 * MARGIN
    draw.text((MARGIN, top), _fit(font, f"index {index}", width), fill=_INK, font=font)
    lines = [f"{p!r} = {v}" for p, v in values.items()]
    room = max(0, (height - FONT_SIZE - 4) // (SMALL_FONT_SIZE + 3))
    if len(lines) > room:
        lines = [*lines[: max(0, room - 1)], f"(+{len(lines) - max(0, room - 1)} more fields)"] if room else []
    y = top + FONT_SIZE + 4
    for line in lines:
        draw.text((MARGIN, y), _fit(small, line, width), fill=_INK, font=small)
        y += SMALL_FONT_SIZE + 3


def _draw_table(rows: list[list[str]], font: Any) -> Any:
    """The rows of ``table`` as a white image, each column as wide as its widest cell."""
    from PIL import Image, ImageDraw

    widths = [int(max(font.getlength(r[i]) for r in rows)) + 2 * MARGIN for i in range(len(rows[0]))]
    line = FONT_SIZE + 6
    img = Image.new("RGB", (sum(widths) + 2 * MARGIN, len(rows) * line + 2 * MARGIN), "white")
    draw = ImageDraw.Draw(img)
    for k, cells in enumerate(rows):
        x = MARGIN
        for cell, w in zip(cells, widths):
            draw.text((x, MARGIN + k * line), cell, fill=_INK if k else _GREY, font=font)
            x += w
    return img


def _cell(row: np.ndarray | None) -> str:
    import numpy as np

    from ..auditing.checks import numeric_view

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


def _table_rows(stream: Stream, indices: list[int], eps: list[Epoch], names: list[str]) -> list[list[str]]:
    m = stream.manifest
    rows = [["index", "field", "raw", *(f"epoch {ep.number}" for ep in eps)]]
    for index in indices:
        for p in names:
            raw = _raw_row(stream, p, index) if p in m.raw_fields else None
            seen = [_seen_row(ep, p, index) if p in m.fields else None for ep in eps]
            rows.append([str(index), p, _cell(raw), *(_cell(s) for s in seen)])
    return rows


def table(stream: Stream, indices: Sequence[int], *, epochs: Sequence[int] | None = None,
          fields: Sequence[str] | None = None) -> str:
    """A text table of the raw and seen values of ``indices`` for fields that are not image-like.

    One line per (index, field): the raw value, then the value seen in each
    epoch (``-`` where there is none). Pass ``fields`` to choose fields,
    image-like ones included (they are summarised by dtype, shape and range).
    Raises ``UsageError`` as ``render`` does.
    """
    eps = _epochs(stream, epochs)
    chosen = _check_indices(stream, indices, eps)
    rows = _table_rows(stream, chosen, eps, list(fields) if fields is not None else _small_fields(stream))
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
                    "fields) into a PNG, each row labelled with its index and small fields (labels, ids), each seen "
                    "tile with its position in the epoch; print the small fields as a table. An index outside the "
                    "dataset, or never recorded, is an error.")
    p.add_argument("path", help="snapshot path or URL")
    p.add_argument("--stream", required=True, metavar="S", help="stream name, e.g. train")
    p.add_argument("--index", required=True, action="extend", nargs="+", type=int, metavar="I", help="dataset indices")
    p.add_argument("--epochs", action="extend", nargs="+", type=int, metavar="E", help="epochs (default: all)")
    p.add_argument("-o", "--out", required=True, metavar="OUT.png", help="PNG file to write")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help=f"pixels of a tile's longer side (default {DEFAULT_TILE})")
    p.set_defaults(run=_show)


def _show(args: argparse.Namespace) -> int:
    from ..read.snapshot import open as open_snapshot

    stream = open_snapshot(args.path)[args.stream]
    image = render(stream, args.index, epochs=args.epochs, tile=args.tile)
    try:
        image.save(args.out, format="PNG")
    except OSError as e:
        raise UsageError(f"cannot write {args.out}: {e}") from e
    print(table(stream, args.index, epochs=args.epochs))
    print(f"wrote {args.out} ({image.size[0]}x{image.size[1]} pixels)")
    return 0
