"""``snapstore.cli.show``: PNG grids of raw vs seen samples, text tables, and the show command."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from snapstore.cli import main as cli_main
from snapstore.cli import show
from snapstore.core.manifest import FieldInfo
from tests.support.datasets import RandomShiftNoise, Scalars, digits
from tests.support.recording import record


@pytest.fixture
def digits_snap(tmp_path):
    loader = DataLoader(digits(n=100, transform=RandomShiftNoise()), batch_size=16, shuffle=True, num_workers=2)
    return record(tmp_path / "d.snap", loader, epochs=3)


def test_grid_png_has_the_expected_size(digits_snap, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = cli_main(["show", digits_snap.path, "--stream", "train", "--index", "3", "17", "42",
                           "--epochs", "0", "2", "-o", str(out)])
    assert code == 0
    with Image.open(out) as img:
        img.verify()
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        # columns: raw '0' (1, 8, 8), then '0' in epochs 0 and 2; rows: 3 indices
        assert img.size == show.grid_size(3, 3, show.DEFAULT_TILE)
        pixels = np.asarray(img)
    assert pixels.std() > 0  # something was drawn
    printed = capsys.readouterr().out
    assert "index  field  raw  epoch 0  epoch 2" in printed  # the label table
    assert f"wrote {out}" in printed


def test_render_draws_the_raw_and_seen_images(digits_snap):
    stream = digits_snap["train"]
    img = show.render(stream, [5], epochs=[1], tile=32)
    assert img.size == show.grid_size(1, 2, 32)
    a = np.asarray(img)
    top, left = show.HEADER_HEIGHT, show.LABEL_WIDTH
    raw_tile = a[top : top + 32, left : left + 32]
    seen_tile = a[top : top + 32, left + 32 + show.MARGIN : left + 64 + show.MARGIN]
    expected = stream.raw[5][0][0].numpy()  # (8, 8), stretched to 0..255 and scaled by 4
    stretched = (expected - expected.min()) / (expected.max() - expected.min()) * 255
    assert np.abs(raw_tile[::4, ::4, 0].astype(float) - stretched).max() <= 1
    assert not np.array_equal(raw_tile, seen_tile)  # the seen version is augmented


def test_table_for_fields_that_are_not_images(tmp_path):
    snap = record(tmp_path / "s.snap", DataLoader(Scalars(30), batch_size=8, shuffle=True), epochs=2)
    text = show.table(snap["train"], [4, 10])
    lines = text.splitlines()
    assert lines[0].split() == ["index", "field", "raw", "epoch", "0", "epoch", "1"]
    assert lines[1].split() == ["4", "value", "2.0", "2.0", "2.0"]
    assert lines[3].split() == ["4", "name", "item-004", "item-004", "item-004"]
    img = show.render(snap["train"], [4, 10])  # no image-like field: the table is drawn
    assert img.size[0] > 100 and img.size[1] > 50


def test_index_not_seen_in_an_epoch(tmp_path):
    snap = record(tmp_path / "s.snap", DataLoader(digits(n=64), batch_size=16), epochs=2, stop_after={1: 1})
    stream = snap["train"]
    assert 40 not in stream.epoch(1).order
    img = show.render(stream, [40], tile=24)
    assert img.size == show.grid_size(1, 3, 24)
    assert "-" in show.table(stream, [40]).splitlines()[1].split()


def test_image_like():
    assert show.image_like(FieldInfo("tensor", "float32", (1, 8, 8)))
    assert show.image_like(FieldInfo("tensor", "uint8", (32, 32, 3)))
    assert show.image_like(FieldInfo("tensor", "float32", (28, 28)))
    assert not show.image_like(FieldInfo("tensor", "float32", (5, 8, 8)))
    assert not show.image_like(FieldInfo("tensor", "float32", (10,)))
    assert not show.image_like(FieldInfo("list", "str", ()))


def test_show_usage_errors(digits_snap, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    assert cli_main(["show", digits_snap.path, "--index", "1", "-o", out]) == 2  # --stream is required
    assert cli_main(["show", digits_snap.path, "--stream", "test", "--index", "1", "-o", out]) == 1
    assert "no stream 'test'" in capsys.readouterr().err
    assert cli_main(["show", digits_snap.path, "--stream", "train", "--index", "1", "--epochs", "7",
                           "-o", out]) == 1
    err = capsys.readouterr().err
    assert "no epoch(s) [7]" in err and "Traceback" not in err
