"""Every Python block of docs/EXPORT.md runs, in order, against a freshly recorded snapshot."""

from __future__ import annotations

import importlib.util
import os
import re
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import snapstore

DOC = Path(__file__).resolve().parents[2] / "docs" / "EXPORT.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_doc_has_blocks():
    assert len(BLOCKS) >= 5


def test_export_doc_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(200, 3, 8, 8, generator=g), torch.randint(0, 10, (200,), generator=g))
    with snapstore.record(DataLoader(data, batch_size=16, shuffle=True), "runs/exp1.snap") as train:
        for _ in train:
            pass
    namespace: dict = {}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for block in BLOCKS:
        need = re.match(r"# needs: (\w+)", block)
        if need and importlib.util.find_spec(need.group(1)) is None:
            continue  # an optional extra that is not installed here
        with warnings.catch_warnings():  # TensorFlow's own import-time deprecations are not ours to fail on
            warnings.simplefilter("ignore", DeprecationWarning)
            exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102
    assert (namespace["arrays"]["0"] == namespace["seen"].tensors[0].numpy()).all()
    assert namespace["out"]["0"].shape == (200, 3, 8, 8)
