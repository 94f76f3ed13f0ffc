"""``snapstore.cli.audit``: the audit and diff commands: exit codes, --json, errors without tracebacks."""

from __future__ import annotations

import json

import torch
from torch.utils.data import DataLoader

from snapstore.cli import main as cli_main
from tests.support.datasets import digits, digits_with_nan
from tests.support.recording import record


def _clean(path, seed=0):
    loader = DataLoader(digits(n=80), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return record(path, loader, epochs=2)


def test_audit_exit_codes_and_json(tmp_path, capsys):
    clean = _clean(tmp_path / "clean.snap")
    assert cli_main(["audit", clean.path]) == 0
    assert "no findings" in capsys.readouterr().out
    # raw=None: the seen rows are stored (and judged) in the epoch, not once in raw/
    bad = record(tmp_path / "bad.snap", DataLoader(digits_with_nan(bad=(2, 9)), batch_size=16), epochs=1, raw=None)
    assert cli_main(["audit", bad.path, "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] is False
    assert [(f["check"], f["epoch"], f["indices"]) for f in payload["findings"]] == [
        ("values", 0, [2, 9])]
    assert cli_main(["audit", bad.path, "--epoch", "0", "--stream", "train"]) == 1
    out = capsys.readouterr().out
    assert "[values] stream 'train' epoch 0 field '0'" in out


def test_audit_errors(tmp_path, capsys):
    assert cli_main(["audit", str(tmp_path / "nothing.snap")]) == 1
    err = capsys.readouterr().err
    assert "no snapshot at" in err and "Traceback" not in err
    snap = _clean(tmp_path / "s.snap")
    assert cli_main(["audit", snap.path, "--stream", "test"]) == 1
    assert "no stream(s) ['test']" in capsys.readouterr().err
    assert cli_main(["audit", snap.path, "--epoch", "x"]) == 2  # usage
    assert cli_main(["audit"]) == 2
    assert cli_main([]) == 2


def test_diff_exit_codes(tmp_path, capsys):
    a, b, c = _clean(tmp_path / "a.snap"), _clean(tmp_path / "b.snap"), _clean(tmp_path / "c.snap", seed=1)
    assert cli_main(["diff", a.path, b.path]) == 0
    assert "identical" in capsys.readouterr().out
    assert cli_main(["diff", a.path, c.path]) == 1
    out = capsys.readouterr().out
    assert "first divergence: stream 'train' epoch 0 batch 0 position 0 field 'index'" in out
    assert cli_main(["diff", a.path, c.path, "--json", "--stream", "train"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["identical"] is False and payload["first_divergence"]["batch"] == 0
    assert cli_main(["diff", a.path, str(tmp_path / "missing.snap")]) == 1
    assert "no snapshot at" in capsys.readouterr().err
    assert cli_main(["diff", a.path]) == 2
