"""A snapshot opens and replays in a process where the Dataset's code does not exist."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

RECORD = textwrap.dedent('''
    import collections, json, sys, torch, snapstore
    from torch.utils.data import DataLoader, Dataset

    Sample = collections.namedtuple("Sample", ["pixels", "label", "path"])

    class Private(Dataset):  # exists only in this script's __main__
        def __len__(self): return 20
        def __getitem__(self, i):
            return Sample(torch.full((2, 2), float(i)), i % 4, f"/data/{i}.jpg")

    seen = []
    with snapstore.record(DataLoader(Private(), batch_size=6, shuffle=True, num_workers=2), sys.argv[1]) as s:
        for b in s:
            seen.append({"pixels": b.pixels.tolist(), "label": b.label.tolist(), "path": b.path})
    json.dump(seen, sys.stdout)
''')

READ = textwrap.dedent('''
    import json, sys, snapstore
    stream = snapstore.open(sys.argv[1])["train"]
    out = [{"type": type(b).__name__, "pixels": b.pixels.tolist(), "label": b.label.tolist(), "path": b.path}
           for b in stream.epoch(0).batches()]
    raw = stream.raw[7]
    raw = [raw.pixels.tolist(), raw.label, raw.path]
    json.dump({"batches": out, "raw": raw, "main": dir(sys.modules["__main__"])}, sys.stdout)
''')


def test_snapshot_reads_without_the_dataset_code(tmp_path):
    path = str(tmp_path / "private.snap")
    def run(script: str) -> object:
        proc = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, check=True)
        return json.loads(proc.stdout)

    seen = run(RECORD)
    got = run(READ)
    assert "Private" not in got["main"] and "Sample" not in got["main"]
    assert [b.pop("type") for b in got["batches"]] == ["Sample"] * 4
    assert got["batches"] == seen
    assert got["raw"] == [[[7.0, 7.0], [7.0, 7.0]], 3, "/data/7.jpg"]
