"""`snapstore demo`, run for real once: train on the digits, record, verify in a fresh process."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

import snapstore
from snapstore.cli import main

# 1,497 train samples in batches of 64 -> 24 batches; 300 test -> 5; two epochs of each.
BATCHES = 2 * 24 + 2 * 5


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "digits.snap"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["demo", "--out", str(out)])
    return rc, stdout.getvalue() + stderr.getvalue(), out


def test_demo_succeeds(demo_run):
    rc, out, _ = demo_run
    assert rc == 0, out


def test_demo_replays_every_batch_identically(demo_run):
    _, out, _ = demo_run
    assert f"replay: {BATCHES}/{BATCHES} batches identical" in out
    assert f"outputs: {BATCHES}/{BATCHES} batches of logged outputs identical" in out


def test_demo_recorded_raw_images_before_augmentation(demo_run):
    _, out, path = demo_run
    assert "augmentation: 1,497/1,497 seen train images (last epoch) differ from their raw images" in out
    train = snapstore.open(path)["train"]
    ep = train.epoch(0)
    seen_image, label = ep[0]
    raw_image, raw_label = train.raw[int(ep.order[0])]
    assert int(label) == int(raw_label)
    assert seen_image.shape == raw_image.shape == (1, 8, 8)
    assert not np.array_equal(seen_image.numpy(), raw_image.numpy())
    assert np.all((raw_image.numpy() * 16) % 1 == 0)  # load_digits' 0..16 levels: no noise in the raw image


def test_demo_prints_the_snapshot_summary(demo_run):
    _, out, path = demo_run
    info = snapstore.open(path).info()
    assert f"{info['bytes_stored']:,} bytes" in out
    assert "stream 'train': map-style dataset of 1,497 samples" in out
    assert "stream 'test': map-style dataset of 300 samples" in out
    assert "epoch 1: 1,497 rows in 24 batches, complete" in out
    assert "epoch 1: 300 rows in 5 batches, complete" in out


def test_demo_lists_the_five_highest_loss_test_samples(demo_run):
    _, out, path = demo_run
    table = out[out.index("5 test samples with the highest loss"):].splitlines()[2:7]
    rows = [tuple(line.split()) for line in table]
    assert len(rows) == 5 and all(len(r) == 4 for r in rows)
    ep = snapstore.open(path)["test"].epoch(-1)
    loss = ep.outputs["loss"]
    top = np.argsort(loss, kind="stable")[::-1][:5]
    expected = [(str(ep.order[p]), str(int(ep[int(p)][1])), str(ep.outputs["pred"][p]), f"{loss[p]:.3f}") for p in top]
    assert rows == expected
    assert all(0 <= int(r[0]) < 300 and 0 <= int(r[1]) <= 9 and 0 <= int(r[2]) <= 9 for r in rows)


def test_demo_refuses_to_overwrite_without_flag(demo_run, capsys):
    _, _, path = demo_run
    assert main(["demo", "--out", str(path)]) == 1
    assert "--overwrite" in capsys.readouterr().err
