"""``snapstore.RecordingLoader`` (``snapstore.recording.loader``), the training-thread side of a stream: outputs
logged in step with the rows, attributes passed through, batches copied and handed off in slices; what
goes wrong in the dataset, the workers or the loop propagates unchanged and leaves the committed rows
readable; schema changes and bad ``log()`` calls are refused, naming the field."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, SequentialSampler

import snapstore
from tests.support.datasets import FailAt, Indexed
from tests.support.recording import run, same


def test_outputs_are_aligned_with_order(snap_path):
    with snapstore.Recorder(snap_path) as rec:
        train = rec.wrap(DataLoader(Indexed(30), batch_size=8, shuffle=True, num_workers=2), name="train")
        for _ in range(2):
            for x, i in train:
                train.log(loss=i.float() * 2, logits=torch.stack([i, -i], 1).numpy())
    ep = snapstore.open(snap_path)["train"].epoch(1)
    np.testing.assert_array_equal(ep.outputs["loss"], ep.order.astype(np.float32) * 2)
    np.testing.assert_array_equal(ep.outputs["logits"][:, 1], -ep.order)
    assert sorted(ep.outputs) == ["logits", "loss"]


def test_attributes_pass_through(snap_path):
    loader = DataLoader(Indexed(10), batch_size=3, sampler=SequentialSampler(range(10)))
    with snapstore.record(loader, snap_path) as stream:
        assert stream.sampler is loader.sampler and stream.batch_size == 3 and stream.dataset is loader.dataset
        assert stream.name == "train" and stream.loader is loader
        with pytest.raises(AttributeError):
            stream.no_such_attribute


def test_loop_modifying_batches_in_place_does_not_change_the_record(snap_path):
    with snapstore.record(DataLoader(Indexed(10), batch_size=5), snap_path) as stream:
        for x, _ in stream:
            x.mul_(0)
    x, i = snapstore.open(snap_path)["train"].epoch(0).batch(1)
    same(x, torch.stack([Indexed(10)[k][0] for k in range(5, 10)]))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_batch_larger_than_one_hand_off_goes_over_in_slices(snap_path, monkeypatch, num_workers):
    # an Indexed row is 200 bytes (float32 3x4x4 image + int64 index): slices of 2 rows
    monkeypatch.setattr(snapstore.config, "HAND_OFF_BYTES", 450)
    stream, seen = run(lambda: DataLoader(Indexed(23, augment=True), batch_size=5, shuffle=True,
                                          num_workers=num_workers), snap_path)
    assert stream.epoch(1).batch_sizes.tolist() == [5, 5, 5, 5, 3]
    for i in (0, 11, 22):
        same(stream.raw[i][0], Indexed(23)[i][0])
    assert snapstore.audit(snap_path).findings == []  # row hashes agree with the rows


def test_dataset_exception_propagates_unchanged_and_marks_epoch_incomplete(snap_path):
    loader = DataLoader(FailAt(bad=23), batch_size=4)
    with pytest.raises(KeyError, match="sample 23 is missing"):
        with snapstore.record(loader, snap_path) as stream:
            list(stream)  # complete epoch 0 ... no: index 23 fails in epoch 0
    ep = snapstore.open(snap_path)["train"].epoch(0)
    assert not ep.complete
    assert len(ep) == 20 and ep.order.tolist() == list(range(20))
    assert ep.batch(4)[1].tolist() == [16, 17, 18, 19]


def test_worker_exception_propagates(snap_path):
    loader = DataLoader(FailAt(bad=9), batch_size=4, num_workers=2)
    with snapstore.record(loader, snap_path) as stream:
        with pytest.raises(KeyError, match="sample 9 is missing"):
            for _ in stream:
                pass
    ep = snapstore.open(snap_path)["train"].epoch(0)
    assert not ep.complete and len(ep) in (4, 8)


def test_exception_in_the_training_loop_and_break(snap_path):
    with pytest.raises(ZeroDivisionError):
        with snapstore.Recorder(snap_path) as rec:
            s = rec.wrap(DataLoader(Indexed(20), batch_size=4), name="train")
            list(s)
            for j, _ in enumerate(s):
                if j == 2:
                    s.log(loss=torch.ones(4))
                    1 / 0
    stream = snapstore.open(snap_path)["train"]
    assert stream.epoch(0).complete and not stream.epoch(1).complete
    assert len(stream.epoch(1)) == 12
    np.testing.assert_array_equal(stream.epoch(1).outputs["loss"][8:12], 1)

    with snapstore.record(DataLoader(Indexed(20), batch_size=4), snap_path, overwrite=True) as s:
        for j, _ in enumerate(s):
            if j == 1:
                break
        list(s)
    stream = snapstore.open(snap_path)["train"]
    assert [stream.epoch(e).complete for e in stream.epochs] == [False, True]
    assert len(stream.epoch(0)) == 8


def rank_collate(items):
    x = torch.stack([x for x, _ in items]).reshape(len(items), -1)
    return (x if items[0][1] < 10 else x[..., None]), torch.tensor([i for _, i in items])


def test_rank_change_mid_epoch_names_field_and_keeps_committed_rows(snap_path):
    loader = DataLoader(Indexed(30), batch_size=5, collate_fn=rank_collate)
    with snapstore.record(loader, snap_path) as stream:
        with pytest.raises(snapstore.SchemaError) as err:
            list(stream)
    message = str(err.value)
    assert "epoch 0 batch 2" in message and "field '0'" in message
    assert "dtype float32 shape (48,)" in message and "dtype float32 shape (48, 1)" in message
    ep = snapstore.open(snap_path)["train"].epoch(0)
    assert not ep.complete and len(ep) == 10
    assert ep.batch(1)[1].tolist() == [5, 6, 7, 8, 9]


def test_dtype_change_is_refused(snap_path):
    def collate(items):
        idx = torch.tensor([i for _, i in items])
        return idx.double() if idx[0] >= 10 else idx

    with snapstore.record(DataLoader(Indexed(20), batch_size=5, collate_fn=collate), snap_path) as stream:
        with pytest.raises(snapstore.SchemaError, match="dtype int64 shape .* to dtype float64"):
            list(stream)
    assert len(snapstore.open(snap_path)["train"].epoch(0)) == 10


def test_log_errors(snap_path):
    with snapstore.Recorder(snap_path) as rec:
        s = rec.wrap(DataLoader(Indexed(8), batch_size=4), name="train")
        with pytest.raises(snapstore.UsageError, match="inside the loop"):
            s.log(loss=torch.ones(4))
        for _ in s:
            with pytest.raises(snapstore.SchemaError, match=r"shape \(3,\) but the batch holds 4"):
                s.log(loss=torch.ones(3))
            with pytest.raises(snapstore.SchemaError, match="tensor or array"):
                s.log(loss="high")
            s.log(loss=torch.ones(4))
            with pytest.raises(snapstore.SchemaError, match="earlier batches"):
                s.log(loss=torch.ones(4, 2))
        with pytest.raises(snapstore.UsageError, match="inside the loop"):
            s.log(loss=torch.ones(4))


def test_unsupported_leaf_type(snap_path):
    def collate(items):
        return {"x": torch.stack([x for x, _ in items]), "obj": object()}

    with snapstore.record(DataLoader(Indexed(8), batch_size=4, collate_fn=collate), snap_path) as s:
        with pytest.raises(snapstore.SchemaError, match="field 'obj' holds a builtins.object"):
            list(s)


def test_non_integer_indices_are_refused(snap_path):
    class Keyed(torch.utils.data.Dataset):
        def __getitem__(self, key):
            return torch.zeros(2)

        def __len__(self):
            return 2

    loader = DataLoader(Keyed(), batch_size=2, sampler=["a", "b"])
    with snapstore.record(loader, snap_path) as s:
        with pytest.raises(snapstore.SchemaError, match="integer dataset indices"):
            list(s)


def test_resume_needs_an_incomplete_epoch(snap_path):
    with snapstore.record(DataLoader(Indexed(8), batch_size=4), snap_path) as s:
        list(s)
    with snapstore.Recorder(snap_path, mode="a") as rec:
        with pytest.raises(snapstore.UsageError, match="nothing to continue"):
            rec.wrap(DataLoader(Indexed(8), batch_size=4), name="train", resume_epoch=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_batches_and_outputs(snap_path):
    seen = []
    with snapstore.record(DataLoader(Indexed(40), batch_size=8, shuffle=True, pin_memory=True), snap_path) as s:
        for x, i in s:
            x, i = x.cuda(non_blocking=True), i.cuda(non_blocking=True)
            s.log(pred=(x.sum((1, 2, 3)) * 2).to(torch.bfloat16), idx=i)
            seen.append((x * 2).sum((1, 2, 3)).to(torch.bfloat16).cpu())
    ep = snapstore.open(snap_path)["train"].epoch(0)
    np.testing.assert_array_equal(ep.outputs["idx"], ep.order)
    assert ep.outputs["pred"].dtype == np.uint16
    np.testing.assert_array_equal(ep.outputs["pred"], torch.cat(seen).view(torch.uint16).numpy())
