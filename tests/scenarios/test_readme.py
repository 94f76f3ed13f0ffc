"""Every ```python block of README.md runs, and the README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import snapstore

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.DOTALL | re.MULTILINE)


PYTHON_BLOCKS = _blocks("python")


def _snapshot_of(block: str) -> str:
    """The one snapshot a block writes, e.g. ``"quickstart.snap"``."""
    (name,) = set(re.findall(r'"(\w+\.snap)"', block))
    return name


# -- what each block builds and prints, checked against the snapshot and the block's own objects ---------------


def _quickstart(ns: dict[str, Any], out: str, snap: snapstore.Snapshot) -> None:
    ep, (x, y) = ns["ep"], (ns["x"], ns["y"])
    assert snap.streams == ["train"] and snap["train"].epochs == [0, 1]  # run again: replaced, not appended
    assert ep.number == 1 and len(ep) == 100 and sorted(ep.order.tolist()) == list(range(100))
    images, labels = ns["dataset"].tensors
    order = torch.from_numpy(ep.order[:16])
    assert torch.equal(x, images[order]) and torch.equal(y, labels[order])  # batch 0 of epoch 1, bit for bit
    loss = ns["criterion"](ns["model"](x), y).detach().numpy()  # the model is not trained: the same losses
    np.testing.assert_array_equal(ep.outputs["loss"][:16], loss)
    raw = snap["train"].raw[int(ep.order[0])]
    assert all(torch.equal(a, b) for a, b in zip(raw, ns["dataset"][int(ep.order[0])]))
    assert out == f"{ep.order[:16]}\n{ep.outputs['loss'][:16]}\n{raw}\n"


def _recorder(ns: dict[str, Any], out: str, snap: snapstore.Snapshot) -> None:
    assert snap.streams == ["test", "train"]
    assert snap["train"].epochs == snap["test"].epochs == [0, 1, 2]
    x, y = (torch.stack(t) for t in zip(*ns["test_set"]))  # the 20 test samples, in dataset order
    with torch.no_grad():
        wrong = int((ns["model"](x).argmax(1) != y).sum())
    assert out.splitlines() == ["['test', 'train'] [0, 1, 2]", f"{wrong} of 20 test samples wrong in the last epoch"]
    assert sorted(ns["wrong"].tolist()) == sorted(int(i) for i in torch.nonzero(ns["model"](x).argmax(1) != y))


def _ragged(ns: dict[str, Any], out: str, snap: snapstore.Snapshot) -> None:
    stream = snap["train"]
    assert stream.epochs == [0] and stream.fields["0"].ragged and stream.fields["0"].shape == (None,)
    assert out.splitlines() == [str(stream.fields["0"])]
    ep, sentences = ns["ep"], ns["sentences"]
    assert sorted(ep.order.tolist()) == list(range(40))
    for k in range(40):
        assert torch.equal(ep.unpadded("0", lengths="1", position=k), sentences[ep.order[k]])


def _resumed(ns: dict[str, Any], out: str, snap: snapstore.Snapshot) -> None:
    assert snap["train"].epochs == [0] and out == ""
    ep = snap["train"].epoch(0)
    assert ep.complete and ep.order.tolist() == list(range(20)) and ep.batch_sizes.tolist() == [4] * 5


def _audited(ns: dict[str, Any], out: str, snap: snapstore.Snapshot) -> None:
    assert out.splitlines() == ["True 0", "True None"]
    assert snap["train"].epochs == [0, 1]
    arrays = ns["arrays"]
    assert arrays["0"].shape == (200, 1, 8, 8) and sorted(arrays["index"].tolist()) == list(range(200))
    images, labels = ns["data"].tensors
    np.testing.assert_array_equal(arrays["0"], images[arrays["index"]].numpy())
    np.testing.assert_array_equal(arrays["1"], labels[arrays["index"]].numpy())
    assert len(ns["tensors"]) == 200


def _scale(ns: dict[str, Any], out: str, snap: snapstore.Snapshot) -> None:
    stream = snap["train"]
    assert stream.epochs == [0, 1, 2] and stream.manifest.seen.mode == "hash"
    found = stream.where(index=42)
    assert [s.epoch for s in found] == [0, 1, 2] and all(stream.epoch(s.epoch).order[s.position] == 42 for s in found)
    assert out.splitlines() == [str(found), "True"]
    with pytest.raises(snapstore.UsageError, match="seen='hash'"):
        stream.epoch(0)[0]


def _lightning(ns: dict[str, Any], out: str, snap: snapstore.Snapshot) -> None:
    assert snap.streams == ["train", "val"] and snap["train"].epochs == snap["val"].epochs == [0, 1]
    for e in (0, 1):
        train = snap["train"].epoch(e)
        assert train.complete and sorted(train.order.tolist()) == list(range(64))
        assert np.isfinite(train.outputs["loss"]).all()
        assert snap["val"].epoch(e).order.tolist() == list(range(64))


def _accelerate(ns: dict[str, Any], out: str, snap: snapstore.Snapshot) -> None:
    assert type(ns["train"].loader).__name__ == "DataLoaderShard" and ns["accelerator"].sync_gradients
    for e in (0, 1):
        ep = snap["train"].epoch(e)
        assert ep.complete and sorted(ep.order.tolist()) == list(range(64)) and np.isfinite(ep.outputs["loss"]).all()


def _trainer(ns: dict[str, Any], out: str, snap: snapstore.Snapshot) -> None:
    assert snap["train"].epochs == [0, 1] and snap["eval"].epochs == [0]
    assert all(np.isfinite(snap["train"].epoch(e).outputs["loss"]).all() for e in (0, 1))
    assert snap["eval"].epoch(0).to_numpy()["input_ids"].shape == (16, 16)


def _stateful(ns: dict[str, Any], out: str, snap: snapstore.Snapshot) -> None:
    ep = snap["train"].epoch(0)
    assert out == "True\n" and ep.complete and sorted(ep.order.tolist()) == list(range(40))
    assert ep.batch_sizes.tolist() == [4] * 10


CHECKS = {"quickstart.snap": _quickstart, "run.snap": _recorder, "text.snap": _ragged,
          "resumed.snap": _resumed, "audited.snap": _audited, "scale.snap": _scale, "lightning.snap": _lightning,
          "accelerate.snap": _accelerate, "trainer.snap": _trainer, "stateful.snap": _stateful}
OTHER_FILES = {"trainer.snap": ["trainer-out"]}  # what a block writes besides its snapshot


def test_readme_has_python_blocks_and_a_check_for_each():
    assert len(PYTHON_BLOCKS) >= 2
    assert sorted(_snapshot_of(b) for b in PYTHON_BLOCKS) == sorted(CHECKS)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("number", range(len(PYTHON_BLOCKS)))
def test_readme_python_block_runs_twice_and_builds_what_it_says(number, tmp_path, monkeypatch, capsys):
    """A reader copies a block and runs it again: no SnapshotExistsError, and the same results."""
    monkeypatch.chdir(tmp_path)  # blocks write their snapshots into the working directory
    block = PYTHON_BLOCKS[number]
    code = compile(block, f"README.md python block {number}", "exec")
    name = _snapshot_of(block)
    for _ in range(2):
        namespace: dict[str, Any] = {"__name__": f"readme_block_{number}"}
        exec(code, namespace)  # noqa: S102 - running the docs is the test
        CHECKS[name](namespace, capsys.readouterr().out, snapstore.open(tmp_path / name))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, *OTHER_FILES.get(name, [])])


def test_readme_install_and_test_commands_are_what_ci_runs():
    bash = _blocks("bash")
    install = next(b.strip() for b in bash if "pip install" in b)
    test = next(b.strip() for b in bash if "pytest" in b)
    assert install == "pip install torch==2.13.0 && pip install -e '.[test,tf,dask,integrations]'"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "python -m pip install torch==2.13.0" in ci
    extras = "python -m pip install -e '.[test,tf,dask,integrations]'"
    assert extras in ci
    assert ci.index("python -m pip install torch==2.13.0") < ci.index(extras)
    assert test in ci
