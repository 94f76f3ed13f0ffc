"""``to_tf_dataset`` (``snapstore.export.tf``): recorded rows as a streaming ``tf.data.Dataset`` equal what the
loader yielded: channels last, raw samples in index order, chosen fields, dict batches, ragged rows."""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest
import torch

import snapstore
from snapstore import config
from tests.support.datasets import SEQUENCES, Sequences
from tests.support.recording import N


def _importorskip_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with warnings.catch_warnings():  # TensorFlow's own import-time deprecations are not ours to fail on
        warnings.simplefilter("ignore", DeprecationWarning)
        return pytest.importorskip("tensorflow")


def test_tf_dataset_channels_last_element_by_element(loop_stream, loop_recording):
    tf = _importorskip_tf()
    _, seen = loop_recording
    ds = loop_stream.to_tf_dataset(epoch=1, channels_last=True)
    assert ds.element_spec == (tf.TensorSpec((32, 32, 3), tf.float32), tf.TensorSpec((), tf.int64))
    n = 0
    for k, (img, label) in enumerate(ds):
        np.testing.assert_array_equal(img.numpy(), seen.x[1][k].transpose(1, 2, 0))
        assert label.numpy() == seen.y[1][k]
        n += 1
    assert n == N


def test_tf_dataset_raw_is_index_order(loop_stream, loop_tensors, monkeypatch):
    tf = _importorskip_tf()
    x, y = loop_tensors
    monkeypatch.setattr(config, "DEFAULT_GATHER_BYTES", 100 * 12 * 1024)  # ~100-row windows: many gathers
    ds = loop_stream.to_tf_dataset()
    assert ds.element_spec == (tf.TensorSpec((3, 32, 32), tf.float32), tf.TensorSpec((), tf.int64))
    got = list(ds.batch(256).as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), x.numpy())
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), y.numpy())


def test_tf_dataset_fields_keep_their_place(loop_stream, loop_recording):
    tf = _importorskip_tf()
    _, seen = loop_recording
    ds = loop_stream.to_tf_dataset(epoch=0, fields=["1"])
    assert ds.element_spec == (tf.TensorSpec((), tf.int64),)
    np.testing.assert_array_equal(np.array([e[0] for e in ds.as_numpy_iterator()]), seen.y[0])


def test_tf_missing_gives_the_install_hint(loop_stream, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # what an environment without TensorFlow looks like
    with pytest.raises(snapstore.SnapstoreError, match=r"pip install 'snapstore\[tf\]'"):
        loop_stream.to_tf_dataset(epoch=0)


def test_dict_batches_become_dict_elements(dict_recording):
    tf = _importorskip_tf()
    stream, ds, batches = dict_recording
    tds = stream.to_tf_dataset(epoch=0, channels_last=True)
    assert tds.element_spec == {
        "image": tf.TensorSpec((16, 16, 3), tf.uint8),
        "label": tf.TensorSpec((), tf.int64),
        "meta": {"id": tf.TensorSpec((), tf.int64), "name": tf.TensorSpec((), tf.string)},
    }
    rows = [(img, int(lab), int(i), name) for b in batches
            for img, lab, i, name in zip(b["image"], b["label"], b["meta"]["id"], b["meta"]["name"])]
    k = 0
    for element, (img, lab, i, name) in zip(tds.as_numpy_iterator(), rows):
        np.testing.assert_array_equal(element["image"], img.permute(1, 2, 0).numpy())
        assert (element["label"], element["meta"]["id"], element["meta"]["name"]) == (lab, i, name.encode())
        k += 1
    assert k == len(ds)
    raw = stream.to_tf_dataset(fields=["meta/name"])
    assert raw.element_spec == {"meta": {"name": tf.TensorSpec((), tf.string)}}
    assert [e["meta"]["name"].decode() for e in raw.as_numpy_iterator()] == [f"item-{i}" for i in range(len(ds))]


def test_ragged_replay_and_tf(ragged_lists):
    stream, batches = ragged_lists
    for got, want in zip(stream.epoch(0).replay_loader(), batches):
        assert len(got[0]) == len(want[0]) and all(torch.equal(a, b) for a, b in zip(got[0], want[0]))
        assert torch.equal(got[1], want[1])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tf = pytest.importorskip("tensorflow")
    ds = stream.to_tf_dataset(epoch=0)
    assert ds.element_spec == (tf.TensorSpec((None,), tf.float32), tf.TensorSpec((), tf.int64))
    rows = [(x.numpy(), int(y)) for b in batches for x, y in zip(b[0], b[1])]
    got = list(ds.as_numpy_iterator())
    assert len(got) == SEQUENCES
    assert all(np.array_equal(a, x) and b == y for (a, b), (x, y) in zip(got, rows))
    raw = list(stream.to_tf_dataset().as_numpy_iterator())
    assert all(np.array_equal(a, Sequences()[i][0].numpy()) for i, (a, _) in enumerate(raw))
