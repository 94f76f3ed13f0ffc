"""torchdata's StatefulDataLoader (the real package): its state passes through, a resumed epoch is stitched."""

from __future__ import annotations

from pathlib import Path

import pytest

import snapstore
from tests.recording.test_transparency import Noisy
from tests.support.recording import same, snapshot_batch

stateful = pytest.importorskip("torchdata.stateful_dataloader")

pytestmark = pytest.mark.filterwarnings("ignore:.set_vital. is deprecated:UserWarning")


class Seeded(Noisy):
    """Noisy's items with the noise drawn from a per-index generator: a resumed job sees the same values
    without checkpointing the global RNGs."""

    def __getitem__(self, i: int):
        import torch

        g = torch.Generator().manual_seed(i)
        return torch.tensor([i, torch.rand(1, generator=g).item(), i * 2.0]), int(i)


def loader(workers: int) -> "stateful.StatefulDataLoader":
    return stateful.StatefulDataLoader(Seeded(52), batch_size=4, shuffle=True, num_workers=workers)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_mid_epoch_checkpoint_resumes_through_the_recording_loader(workers: int, tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    bare = loader(workers)
    full = [[snapshot_batch(b) for b in bare] for _ in range(2)]

    torch.manual_seed(0)
    path = tmp_path / "run.snap"
    with snapstore.Recorder(path) as rec:  # epoch 0 whole, epoch 1 cut after 5 batches: the checkpoint
        stream = rec.wrap(loader(workers), name="train")
        first = [snapshot_batch(b) for b in stream]
        it = iter(stream)
        cut = [snapshot_batch(next(it)) for _ in range(5)]
        state = stream.state_dict()
    same(state, _bare_state(workers, 5), "state_dict")

    resumed = loader(workers)
    resumed.load_state_dict(state)
    with snapstore.Recorder(path, mode="a") as rec:
        rest = [snapshot_batch(b) for b in rec.wrap(resumed, name="train", resume_epoch=True)]
    assert len(rest) == 8  # the rest of the epoch, not a new one
    for a, b in zip(full[0] + full[1], first + cut + rest):
        same(a, b)

    train = snapstore.open(path)["train"]
    assert train.epochs == [0, 1]
    ep = train.epoch(1)
    assert ep.complete and len(ep.batch_sizes) == 13
    for a, b in zip(full[1], ep.batches()):
        same(a, b)
    assert snapstore.audit(path).ok


def _bare_state(workers: int, batches: int) -> dict:
    import torch

    torch.manual_seed(0)
    bare = loader(workers)
    list(bare)
    it = iter(bare)
    for _ in range(batches):
        next(it)
    return bare.state_dict()
