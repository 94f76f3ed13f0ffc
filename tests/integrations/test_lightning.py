"""Lightning (the real package, on CPU): recording changes no batch, epochs are complete, DDP ranks record theirs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import snapstore
from tests.recording.test_transparency import Noisy
from tests.support.recording import same

pl = pytest.importorskip("lightning.pytorch")
from snapstore.integrations.lightning import RecordCallback  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")


class Model(pl.LightningModule):
    """A linear model over Noisy's 3 features; keeps every batch its steps saw."""

    def __init__(self, callback: RecordCallback | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.callback = callback
        self.train_batches: list[Any] = []
        self.val_batches: list[Any] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, index = batch
        self.train_batches.append((x.clone(), index.clone()))
        loss = (self.layer(x).squeeze(1) - index.float()) ** 2
        if self.callback is not None:
            self.callback.streams["train"].log(batch_index=batch_idx, loss=loss.detach())
        return loss.mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if not self.trainer.sanity_checking:
            self.val_batches.append((batch[0].clone(), batch[1].clone()))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Noisy(20), batch_size=4, shuffle=True, num_workers=1)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Noisy(10), batch_size=5)


def trainer(**kw: Any) -> pl.Trainer:
    return pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1, **kw)


def test_the_callback_records_train_and_val_without_changing_a_batch(tmp_path: Path) -> None:
    pl.seed_everything(0, workers=True)
    bare = Model()
    trainer().fit(bare)

    pl.seed_everything(0, workers=True)
    callback = RecordCallback(tmp_path / "run.snap")
    model = Model(callback)
    trainer(callbacks=[callback]).fit(model)

    assert len(model.train_batches) == len(bare.train_batches) == 10
    for a, b in zip(bare.train_batches, model.train_batches):
        same(a, b)
    for a, b in zip(bare.val_batches, model.val_batches):
        same(a, b)
    snap = snapstore.open(tmp_path / "run.snap")
    assert snap.streams == ["train", "val"]
    train, val = snap["train"], snap["val"]
    assert train.epochs == [0, 1] and val.epochs == [0, 1]  # the sanity check is not a validation epoch
    for e in range(2):
        ep = train.epoch(e)
        assert ep.complete
        assert ep.order.tolist() == [i for _, index in model.train_batches[5 * e:5 * e + 5] for i in index.tolist()]
        assert np.isfinite(ep.outputs["loss"]).all()
        assert val.epoch(e).complete and val.epoch(e).order.tolist() == list(range(10))
    assert snapstore.audit(snap).ok

    trainer(callbacks=[callback]).validate(model)  # a later stage with the same callback appends
    assert snapstore.open(tmp_path / "run.snap")["val"].epochs == [0, 1, 2]


def test_fit_takes_a_recording_loader(tmp_path: Path) -> None:
    pl.seed_everything(0, workers=True)
    with snapstore.Recorder(tmp_path / "run.snap") as rec:
        stream = rec.wrap(DataLoader(Noisy(12), batch_size=4, shuffle=True), name="train")
        model = Model()
        trainer(limit_val_batches=0).fit(model, train_dataloaders=stream)
    train = snapstore.open(tmp_path / "run.snap")["train"]
    assert train.epochs == [0, 1] and all(train.epoch(e).complete for e in train.epochs)
    assert train.epoch(1).order.tolist() == [i for _, index in model.train_batches[3:] for i in index.tolist()]


DDP_SCRIPT = """
import sys
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
sys.path.insert(0, {root!r})
from snapstore.integrations.lightning import RecordCallback
from tests.integrations.test_lightning import Model

class DDPModel(Model):
    def val_dataloader(self):
        return None

if __name__ == "__main__":
    pl.seed_everything(0)
    callback = RecordCallback({path!r})
    model = DDPModel(callback)
    pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
               callbacks=[callback]).fit(model)
"""


def test_ddp_on_two_cpu_processes_records_each_ranks_sampler_order(tmp_path: Path) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(root=os.getcwd(), path=str(tmp_path / "run.snap"))))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = snapstore.open(tmp_path / "run.snap")["train"]
    assert train.epochs == [0, 1]
    for e in train.epochs:
        mine = [train.rank(r).epoch(e) for r in (0, 1)]
        assert [m.provenance["rank"] for m in mine] == [0, 1]
        assert sorted(mine[0].order.tolist() + mine[1].order.tolist()) == list(range(20))  # disjoint halves
        assert mine[0].complete and mine[1].complete
    assert train.rank(0).epoch(0).order.tolist() != train.rank(0).epoch(1).order.tolist()  # set_epoch reshuffled
