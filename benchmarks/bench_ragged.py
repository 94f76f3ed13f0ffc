"""Storage overhead of the ragged encoding for padded token sequences.

Records batches of ``pad_sequence`` rows (int64 token ids, lengths 8..256,
batch 32) and compares the bytes the ragged arrays take on disk with the
bytes of the rows themselves (each padded row: padded length x 8 bytes) and
with the bytes of the unpadded sequences. Run: ``python benchmarks/bench_ragged.py [--n 20000]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

import snapstore


class Tokens(Dataset):
    def __init__(self, n: int) -> None:
        self.lengths = np.random.default_rng(0).integers(8, 257, n)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.randint(0, 32000, (int(self.lengths[i]),), generator=torch.Generator().manual_seed(i))


def collate(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_sequence(items, batch_first=True), torch.tensor([len(x) for x in items])


def measure(n: int, root: Path) -> dict[str, float]:
    path = root / "tokens.snap"
    padded = 0
    with snapstore.record(DataLoader(Tokens(n), batch_size=32, shuffle=True, collate_fn=collate), path, raw=None) as s:
        for x, _ in s:
            padded += x.numel() * x.element_size()
    group = path / "train/epochs/0/ragged/0"
    stored = {p.name: sum(f.stat().st_size for f in (group / p.name).rglob("*") if f.is_file())
              for p in group.iterdir() if p.is_dir()}
    unpadded = int(Tokens(n).lengths.sum()) * 8
    return {"rows": n, "padded_row_bytes": padded, "unpadded_bytes": unpadded,
            **{f"stored_{k}": v for k, v in stored.items()}, "stored_total": sum(stored.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.n, Path(tmp))
    index_bytes = r["stored_offsets"] + r["stored_shapes"]
    print(f"{r['rows']} padded sequences, batch 32, lz4 + crc32c")
    print(f"  rows' bytes (padded)      {r['padded_row_bytes'] / 1e6:9.2f} MB")
    print(f"  sequences' bytes (unpadded){r['unpadded_bytes'] / 1e6:8.2f} MB")
    print(f"  stored values             {r['stored_values'] / 1e6:9.2f} MB")
    print(f"  stored offsets + shapes   {index_bytes / 1e6:9.2f} MB  ({index_bytes / r['rows']:.1f} B/row)")
    print(f"  stored total / rows' bytes = {r['stored_total'] / r['padded_row_bytes']:.3f}")
    print(f"  offsets + shapes / rows' bytes = {index_bytes / r['padded_row_bytes']:.4f}")


if __name__ == "__main__":
    main()
