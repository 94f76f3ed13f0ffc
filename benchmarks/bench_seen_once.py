"""Seen rows stored once: bytes an epoch of an eval-like stream takes, copied or referring to its raw rows.

::

    python benchmarks/bench_seen_once.py            # 10,000 CIFAR-like images, 3 epochs (the README figure)
    python benchmarks/bench_seen_once.py --n 200    # seconds (what tests/benchmarks/test_bench_seen_once.py runs)

An eval stream: ``n`` float32 3x32x32 images and int64 labels, batch 256, in
order, no augmentation, so every seen row is bitwise its raw sample. It is
recorded twice: as before issue 19 each epoch copied its seen rows (``raw=None``
gives those epochs: the raw samples are not recorded, so nothing is
referenced), and with the raw samples recorded, where the epochs refer to
them. Bytes are the files on disk (``du -b``) of each epoch's group, their
mean, and of the raw samples.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import snapstore

EPOCHS = 3


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(n: int, root: Path) -> dict[str, dict[str, float]]:
    """``{mode: {"epoch": mean bytes of an epoch's group, "raw": bytes of raw/}}`` for ``copied`` and ``once``."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    out = {}
    for mode, raw in (("copied", None), ("once", "auto")):
        path = root / f"{mode}.snap"
        with snapstore.Recorder(path) as rec:
            stream = rec.wrap(DataLoader(data, batch_size=256), name="eval", raw=raw)
            for _ in range(EPOCHS):
                for _ in stream:
                    pass
        epochs = [_bytes(path / f"eval/epochs/{e}") for e in range(EPOCHS)]
        out[mode] = {"epoch": sum(epochs) / EPOCHS, "raw": float(_bytes(path / "eval/raw")) if raw else 0.0}
    return out


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="samples in the eval set")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.n, Path(tmp))
    lines = [f"eval-like stream, {args.n} float32 3x32x32 images + int64 labels, {EPOCHS} epochs",
             "| epochs | bytes / epoch | bytes / sample / epoch | raw/ bytes |", "|---|---:|---:|---:|"]
    for mode, r in result.items():
        lines.append(f"| {mode} | {r['epoch']:,.0f} | {r['epoch'] / args.n:,.1f} | {r['raw']:,.0f} |")
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
