"""Hugging Face Accelerate (the real package, on CPU): prepared loaders run as without snapstore."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

import snapstore
from tests.recording.test_transparency import Noisy
from tests.support.recording import same, snapshot_batch

accelerate = pytest.importorskip("accelerate")
from accelerate.state import AcceleratorState, GradientState  # noqa: E402

from snapstore.integrations.accelerate import prepare  # noqa: E402


def fresh(**kw: Any) -> Any:
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return accelerate.Accelerator(cpu=True, **kw)


def train(accelerator: Any, loader: Any, model: torch.nn.Module, opt: torch.optim.Optimizer,
          stream: Any = None) -> tuple[list[Any], list[bool], list[bool]]:
    """Two epochs with gradient accumulation: (batches, sync_gradients per step, end_of_dataloader per step)."""
    batches, sync, ends = [], [], []
    for _ in range(2):
        for x, index in loader:
            with accelerator.accumulate(model):
                loss = (model(x).squeeze(1) - index.float()) ** 2
                accelerator.backward(loss.mean())
                opt.step()
                opt.zero_grad()
                if stream is not None:
                    stream.log(loss=loss.detach())
            batches.append(snapshot_batch((x, index)))
            sync.append(accelerator.sync_gradients)
            ends.append(accelerator.gradient_state.end_of_dataloader)
    return batches, sync, ends


def setup() -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader]:
    accelerate.utils.set_seed(0)  # torch, NumPy and random: Noisy draws from all three
    model = torch.nn.Linear(3, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.01), DataLoader(Noisy(14), batch_size=4, shuffle=True)


@pytest.mark.parametrize("when", ["after", "before"])
@pytest.mark.parametrize("split_batches", [False, True])
def test_prepared_loaders_run_as_without_snapstore(when: str, split_batches: bool, tmp_path: Path) -> None:
    acc = fresh(gradient_accumulation_steps=2, split_batches=split_batches)
    model, opt, loader = setup()
    model, opt, loader = acc.prepare(model, opt, loader)
    bare = train(acc, loader, model, opt)
    assert bare[1] == [False, True, False, True] * 2  # the epoch's last step syncs

    acc = fresh(gradient_accumulation_steps=2, split_batches=split_batches)
    model, opt, loader = setup()
    with snapstore.Recorder(tmp_path / "run.snap") as rec:
        if when == "after":
            model, opt, loader = acc.prepare(model, opt, loader)
            stream = rec.wrap(loader, name="train")
        else:
            stream = rec.wrap(loader, name="train")
            model, opt, stream = prepare(acc, model, opt, stream)
            assert isinstance(stream.loader, accelerate.data_loader.DataLoaderShard)
        recorded = train(acc, stream, model, opt, stream)
    assert recorded[1:] == bare[1:]
    for a, b in zip(bare[0], recorded[0]):
        same(a, b)
    train_ = snapstore.open(tmp_path / "run.snap")["train"]
    for e in range(2):
        ep = train_.epoch(e)
        assert ep.complete and len(ep.outputs["loss"]) == 14
        assert ep.order.tolist() == [i for _, index in recorded[0][4 * e:4 * e + 4] for i in index.tolist()]


SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import torch
from torch.utils.data import DataLoader
import accelerate
import snapstore
from tests.recording.test_transparency import Noisy

acc = accelerate.Accelerator(cpu=True)
torch.manual_seed(0)
loader = acc.prepare(DataLoader(Noisy(16), batch_size=4, shuffle=True))
with snapstore.Recorder({path!r}) as rec:
    stream = rec.wrap(loader, name="train")
    for epoch in range(2):
        for x, index in stream:
            stream.log(rank=torch.full((len(index),), acc.process_index))
"""


def test_two_cpu_processes_record_each_ranks_shard(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT.format(root=os.getcwd(), path=str(tmp_path / "run.snap"))))
    # torchrun's environment makes Accelerator(cpu=True) a MULTI_CPU run over gloo (`accelerate launch --cpu`
    # runs one process)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = snapstore.open(tmp_path / "run.snap")["train"]
    for e in train.epochs:
        mine = [train.rank(r).epoch(e) for r in (0, 1)]
        assert sorted(mine[0].order.tolist() + mine[1].order.tolist()) == list(range(16))
        assert [m.outputs["rank"].tolist() for m in mine] == [[0] * 8, [1] * 8]
