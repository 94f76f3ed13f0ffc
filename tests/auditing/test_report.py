"""``snapstore.auditing.report``: findings, their capped indices, ``to_dict()`` and ``str()``."""

from __future__ import annotations

import json

import numpy as np
from torch.utils.data import DataLoader

import snapstore
from snapstore.auditing.report import Finding
from tests.support.datasets import digits_with_nan
from tests.support.recording import record


def test_report_to_dict_and_str(tmp_path):
    loader = DataLoader(digits_with_nan(bad=(5,)), batch_size=16)
    report = snapstore.audit(record(tmp_path / "s.snap", loader, epochs=1))
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] is False
    assert d["findings"][0] == {"check": "values", "stream": "train", "epoch": None, "field": "0", "indices": [5],
                                "count": 1, "message": report.findings[0].message}
    assert d["stats"]["train"]["raw"]["0"]["nan"] == 1  # the seen rows are the raw rows, stored (and judged) once
    text = str(report)
    assert "1 finding" in text and "[values] stream 'train' field '0'" in text and "indices: 5" in text


def test_finding_indices_are_capped_and_counted():
    f = Finding.make("coverage", "many", stream="s", epoch=0, indices=np.arange(1000)[::-1])
    assert f.count == 1000 and len(f.indices) == snapstore.config.MAX_FINDING_INDICES and f.indices[:3] == (0, 1, 2)
    assert "(+980 more)" in str(f) and len(f.to_dict()["indices"]) == 100
