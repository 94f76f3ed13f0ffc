"""``snapstore.cli.show``: PNG grids of raw vs seen samples, text tables, and the show command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import snapstore
from snapstore.cli import main as cli_main
from snapstore.cli import show
from snapstore.cli.demo import load
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
    top, left, step = show.HEADER_HEIGHT, show.LABEL_WIDTH, show.column_width(32) + show.MARGIN
    raw_tile = a[top : top + 32, left : left + 32]
    seen_tile = a[top : top + 32, left + step : left + step + 32]
    assert seen_tile.std() > 0
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


# -- through the real command line, on the demo's 1,497 training digits ----------------------------------------


def _show(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapstore", "show", *args], capture_output=True, text=True,
                          cwd=cwd, check=False)


@pytest.fixture(scope="module")
def demo_digits(tmp_path_factory):
    """The demo's training set (1,497 digits, RandomShiftNoise), shuffled batches of 64, 2 epochs, as 'train'."""
    train, _ = load(seed=0)
    path = tmp_path_factory.mktemp("show") / "digits.snap"
    with snapstore.record(DataLoader(train, batch_size=64, shuffle=True), path) as stream:
        for _ in range(2):
            for _ in stream:
                pass
    return path


def _tiles(a: np.ndarray, rows: int, columns: int, tile: int) -> dict[tuple[int, int], np.ndarray]:
    """The pixels of each tile, by (row, column), where ``render`` draws them."""
    height, step = tile + show.CAPTION_HEIGHT + show.MARGIN, show.column_width(tile) + show.MARGIN
    return {(r, j): a[show.HEADER_HEIGHT + r * height :][:tile, show.LABEL_WIDTH + j * step :][:, :tile]
            for r in range(rows) for j in range(columns)}


def _ink(region: np.ndarray) -> int:
    """Pixels drawn darker than the white background (text, lines)."""
    return int((region.min(axis=2) < 160).sum())


def test_show_writes_a_png_that_reads_on_its_own(demo_digits, tmp_path):
    proc = _show(str(demo_digits), "--stream", "train", "--index", "3", "17", "42", "-o", "grid.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with Image.open(tmp_path / "grid.png") as img:
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.size == show.grid_size(3, 3)  # 3 indices x (raw, epoch 0, epoch 1)
        a = np.asarray(img)
    stream = snapstore.open(demo_digits)["train"]
    for (r, j), pixels in _tiles(a, 3, 3, show.DEFAULT_TILE).items():
        assert pixels.std() > 0 and (pixels < 250).any(), f"tile {r, j} is empty"
    for r, index in enumerate([3, 17, 42]):
        top = show.HEADER_HEIGHT + r * (show.DEFAULT_TILE + show.CAPTION_HEIGHT + show.MARGIN)
        assert _ink(a[top : top + 40, : show.LABEL_WIDTH]) > 50  # "index i", "'1' = label"
        step = show.column_width(show.DEFAULT_TILE) + show.MARGIN
        caption = a[top + show.DEFAULT_TILE : top + show.DEFAULT_TILE + show.CAPTION_HEIGHT]
        assert _ink(caption[:, show.LABEL_WIDTH : show.LABEL_WIDTH + step]) == 0  # raw: no position
        for j in (1, 2):  # "position p" under each seen tile
            assert _ink(caption[:, show.LABEL_WIDTH + j * step : show.LABEL_WIDTH + (j + 1) * step]) > 20
        label = int(stream.raw[index][1])
        assert f"{index:<5}  1      {label}    {label}        {label}" in proc.stdout  # the table is kept
    for j in range(3):  # column titles: "raw", "epoch 0", "epoch 1", with the field below
        left = show.LABEL_WIDTH + j * (show.column_width(show.DEFAULT_TILE) + show.MARGIN)
        assert _ink(a[: show.HEADER_HEIGHT, left : left + show.DEFAULT_TILE]) > 30
    assert proc.stdout.rstrip().endswith(f"wrote grid.png ({a.shape[1]}x{a.shape[0]} pixels)")


def test_an_index_outside_the_dataset_exits_1_naming_the_range(demo_digits, tmp_path):
    proc = _show(str(demo_digits), "--stream", "train", "--index", "3", "99999", "-o", "x.png", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("snapstore show: error: dataset index 99999 is out of range: the dataset of "
                                   "stream 'train' has 1,497 samples, indices 0..1496")
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []
    assert _show(str(demo_digits), "--stream", "train", "--index", "-1", "-o", "x.png", cwd=tmp_path).returncode == 1


def test_an_index_never_recorded_exits_1(tmp_path):
    path = tmp_path / "cut.snap"
    loader = DataLoader(torch.utils.data.TensorDataset(torch.rand(64, 1, 8, 8), torch.arange(64)), batch_size=16)
    with snapstore.record(loader, path, raw=None) as stream:  # no raw samples, epoch 0 cut after one batch
        for _ in stream:
            break
    proc = _show(str(path), "--stream", "train", "--index", "40", "-o", "x.png", cwd=tmp_path)
    assert proc.returncode == 1
    assert "dataset index 40 has no raw sample in stream 'train' and was not seen in epoch(s) [0]" in proc.stderr
    assert "recorded there: 16 indices in 0..15" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.png").exists()
    assert _show(str(path), "--stream", "train", "--index", "15", "-o", "x.png", cwd=tmp_path).returncode == 0


class RelabelledOnce(Dataset):
    """Index 5's label reads 99 from its second fetch on: epoch 1 sees another label than epoch 0 and raw."""

    def __init__(self) -> None:
        self.fetches = 0

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.fetches += i == 5
        return torch.full((1, 8, 8), float(i)) + torch.eye(8), 99 if i == 5 and self.fetches > 1 else i


def test_a_seen_value_other_than_the_rows_is_flagged_in_red(tmp_path):
    path = tmp_path / "relabelled.snap"
    with snapstore.record(DataLoader(RelabelledOnce(), batch_size=8), path) as stream:
        for _ in range(2):
            for _ in stream:
                pass
    img = show.render(snapstore.open(path)["train"], [5, 6])
    a = np.asarray(img).astype(int)
    red = (a[..., 0] > 150) & (a[..., 1] < 80) & (a[..., 2] < 80)
    step, height = show.column_width(show.DEFAULT_TILE) + show.MARGIN, show.DEFAULT_TILE + show.CAPTION_HEIGHT
    captions = {(r, j): red[show.HEADER_HEIGHT + r * (height + show.MARGIN) + show.DEFAULT_TILE :][
        : show.CAPTION_HEIGHT, show.LABEL_WIDTH + j * step :][:, :step].sum() for r in range(2) for j in range(3)}
    assert captions[(0, 2)] > 20  # index 5 in epoch 1: "pos 5: 1=99"
    assert sum(captions.values()) == captions[(0, 2)]
