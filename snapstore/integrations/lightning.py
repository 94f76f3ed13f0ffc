"""Record a Lightning ``Trainer``'s train and validation loaders with one callback.

Lightning re-instantiates each DataLoader it is given (a ``DistributedSampler``
under DDP, its own ``worker_init_fn``) and then hands it to the strategy's
``process_dataloader``. ``RecordCallback`` records the loader that comes out
of that step — the one Lightning iterates, with each rank's injected sampler —
as a stream of its Recorder, so what is recorded is what each rank trained on.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import RunningStage

from ..recording import Recorder, RecordingLoader


class RecordCallback(pl.Callback):
    """Records the loaders of ``Trainer.fit``/``validate`` into a snapshot: ``train``, ``val`` (``val_1``, ...).

    Parameters
    ----------
    path : str or os.PathLike
        The snapshot, opened with ``snapstore.Recorder(path, **recorder_options)``
        when the trainer sets up (on every rank) and closed when it tears down.
    raw, seen : see ``Recorder.wrap``
        Applied to every stream.
    **recorder_options
        Passed to ``Recorder`` (``mode="a"``, ``overwrite=True``, ...); a later
        ``fit``/``validate`` with the same callback appends (``mode="a"``).

    The validation sanity check is not recorded (it is not a validation
    epoch). ``streams`` maps stream names to their ``RecordingLoader``; log
    per-sample outputs from a step with
    ``callback.streams["train"].log(batch_index=batch_idx, loss=loss)``
    (Lightning fetches one batch ahead of the step, so name the batch).
    """

    def __init__(self, path: Any, *, raw: Any = "auto", seen: Any = "full", **recorder_options: Any) -> None:
        self.path = path
        self.raw = raw
        self.seen = seen
        self.recorder_options = recorder_options
        self.recorder: Recorder | None = None
        self.streams: dict[str, RecordingLoader] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.recorder is None:
            self.recorder = Recorder(self.path, **self.recorder_options)
        strategy = trainer.strategy
        process = type(strategy).process_dataloader.__get__(strategy)

        def process_and_record(dataloader: Any) -> Any:
            return self._record(trainer, process(dataloader))

        strategy.process_dataloader = process_and_record  # type: ignore[method-assign]

    def _record(self, trainer: pl.Trainer, loader: Any) -> Any:
        stage = trainer.state.stage
        if stage == RunningStage.TRAINING:
            base = "train"
        elif stage in (RunningStage.VALIDATING, RunningStage.SANITY_CHECKING):
            base = "val"
        else:
            return loader
        if isinstance(loader, RecordingLoader) or self.recorder is None:
            return loader
        taken = [n for n in self.streams if n == base or n.startswith(f"{base}_")]
        name = base if not taken else f"{base}_{len(taken)}"
        stream = self.recorder.wrap(loader, name=name, raw=self.raw, seen=self.seen)
        stream.paused = trainer.sanity_checking
        self.streams[name] = stream
        return stream

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name, stream in self.streams.items():
            if name == "val" or name.startswith("val_"):
                stream.paused = True

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for stream in self.streams.values():
            stream.paused = False

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None
            # a later fit/validate with this callback appends epochs to the same streams
            self.recorder_options = {**self.recorder_options, "mode": "a", "overwrite": False}
            self.streams = {}
        trainer.strategy.__dict__.pop("process_dataloader", None)
