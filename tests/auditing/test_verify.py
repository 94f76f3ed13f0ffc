"""verify: a rerun checked against a recording's hashes; where: when an index was seen; their CLI forms."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import snapstore
from snapstore.cli.main import main
from snapstore.errors import UsageError

N = 64


class Noisy(TensorDataset):
    """Adds noise drawn from the global RNG: reproducible only with the same torch seed."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x + torch.rand(x.shape), y


def make_loader(seed=0, noisy=False):
    g = torch.Generator().manual_seed(seed)
    data = (torch.rand(N, 5, generator=torch.Generator().manual_seed(9)), torch.arange(N))
    ds = Noisy(*data) if noisy else TensorDataset(*data)
    return DataLoader(ds, batch_size=8, shuffle=True, generator=g)


def _record(path, seen="hash", epochs=2, **kw):
    with snapstore.Recorder(path) as rec:
        s = rec.wrap(make_loader(**kw), name="train", seen=seen)
        for _ in range(epochs):
            list(s)
    return snapstore.open(path)["train"]


@pytest.mark.parametrize("seen", ["hash", "full", {"batches": 0.5}])
def test_a_faithful_rerun_verifies_identical(tmp_path, seen):
    stream = _record(tmp_path / "r.snap", seen)
    report = snapstore.verify(stream, make_loader())
    assert report.identical and report.first_divergence is None and report.compared["rows"] == 2 * N


def test_another_shuffle_is_caught_at_its_first_row(tmp_path):
    stream = _record(tmp_path / "r.snap")
    report = snapstore.verify(stream.epoch(0), make_loader(seed=1))
    d = report.first_divergence
    assert not report.identical
    assert (d.epoch, d.batch, d.position, d.check) == (0, 0, 0, "seen")
    assert {f.field for f in report.findings} == {"0", "1"}


def test_a_nondeterministic_dataset_is_caught_in_the_augmented_field_only(tmp_path):
    torch.manual_seed(5)
    stream = _record(tmp_path / "r.snap", noisy=True, epochs=1)
    torch.manual_seed(6)
    report = snapstore.verify(stream, make_loader(noisy=True))
    assert report.first_divergence.field == "0" and [f.field for f in report.findings] == ["0"]
    torch.manual_seed(5)
    assert snapstore.verify(stream, make_loader(noisy=True)).identical


def test_fewer_batches_and_other_batch_sizes_are_divergences(tmp_path):
    stream = _record(tmp_path / "r.snap", epochs=1)
    short = DataLoader(torch.utils.data.Subset(make_loader().dataset, range(N // 2)), batch_size=8)
    assert snapstore.verify(stream, short).first_divergence.check in ("seen", "batches")
    report = snapstore.verify(stream, DataLoader(make_loader().dataset, batch_size=5))
    assert report.first_divergence.check == "batches" and report.first_divergence.batch == 0


def test_verify_refuses_what_it_cannot_check(tmp_path):
    with pytest.raises(UsageError, match="Stream or an Epoch"):
        snapstore.verify("x.snap", make_loader())


def test_where_lists_every_sighting(tmp_path):
    stream = _record(tmp_path / "r.snap", epochs=3)
    found = stream.where(index=11)
    assert [s.epoch for s in found] == [0, 1, 2]
    for s in found:
        ep = stream.epoch(s.epoch)
        assert ep.order[s.position] == 11 and s.rank == 0 and s.batch == s.position // 8
    assert stream.where(index=N + 5) == []


def test_cli_where_and_verify(tmp_path, capsys, monkeypatch):
    path = tmp_path / "r.snap"
    _record(path, epochs=2)
    assert main(["where", str(path), "--stream", "train", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["epoch"] for r in rows] == [0, 1] and set(rows[0]) == {"epoch", "rank", "batch", "position"}
    assert main(["where", str(path), "--stream", "train", "3"]) == 0
    assert "seen 2 time(s)" in capsys.readouterr().out
    (tmp_path / "loaders.py").write_text(
        "import torch\nfrom torch.utils.data import DataLoader, TensorDataset\n"
        "def good():\n"
        f"    data = (torch.rand({N}, 5, generator=torch.Generator().manual_seed(9)), torch.arange({N}))\n"
        "    return DataLoader(TensorDataset(*data), batch_size=8, shuffle=True, "
        "generator=torch.Generator().manual_seed(0))\n"
        "def bad():\n"
        "    loader = good()\n"
        "    loader.generator.manual_seed(1)\n"
        "    return loader\n")
    loaders = str(tmp_path / "loaders.py")
    assert main(["verify", str(path), "--stream", "train", "--loader", f"{loaders}:good", "-q"]) == 0
    assert main(["verify", str(path), "--stream", "train", "--loader", f"{loaders}:bad", "--epoch", "1", "-q"]) == 1
    assert "epoch 1" in capsys.readouterr().out
    assert main(["verify", str(path), "--stream", "train", "--loader", f"{loaders}:nothing", "-q"]) == 1
    assert "defines no 'nothing'" in capsys.readouterr().err


def test_diff_between_a_hash_and_a_full_recording_locates_differing_rows(tmp_path):
    torch.manual_seed(5)
    a = _record(tmp_path / "a.snap", "hash", epochs=1, noisy=True)
    torch.manual_seed(6)
    b = _record(tmp_path / "b.snap", "full", epochs=1, noisy=True)
    report = snapstore.diff(a, b)
    d = report.first_divergence
    assert (d.epoch, d.batch, d.position, d.field) == (0, 0, 0, "0")
    assert "hashes only" in d.message
