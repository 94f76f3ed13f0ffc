"""Recording throughput to an S3-compatible server (moto) on loopback.

Starts ``moto_server`` on 127.0.0.1 and a free port, records a CIFAR-sized
loader (float32 3x32x32 images + int64 labels, raw samples included) to
``s3://bench/run.snap`` and prints the MB/s of seen data recorded, against
the same loop without recording and recording to a local directory.

    python benchmarks/bench_s3.py [--samples 20000] [--batch-size 256]

moto keeps objects in memory inside one Python process, so this measures
snapstore + s3fs + HTTP on loopback, not a real object store; a real
bucket adds network latency and bandwidth limits. ``moto_server()`` is also
what ``tests/scenarios/test_s3.py`` uses to start its server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

HOST = "127.0.0.1"  # never anything but loopback
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # botocore must not look for an instance metadata service
    "NO_PROXY": HOST,
    "no_proxy": HOST,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_server(bucket: str, *, log: str | None = None, timeout: float = 60.0) -> Iterator[dict[str, Any]]:
    """Run ``python -m moto.server`` on 127.0.0.1 and a free port with ``bucket`` created.

    Yields the ``storage_options`` for fsspec/s3fs. The server is stopped
    by its PID on exit. Dummy credentials and a disabled metadata service
    keep every request on loopback.
    """
    import boto3

    port = _free_port()
    endpoint = f"http://{HOST}:{port}"
    env = {**os.environ, **CREDENTIALS}
    out = open(log or os.devnull, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)], stdout=out,
                            stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy, even if one is configured
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with code {proc.returncode}; see {log}")
            try:
                opener.open(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on {endpoint} within {timeout} s") from None
                time.sleep(0.1)
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                              region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        yield {"key": "testing", "secret": "testing", "endpoint_url": endpoint,
               "client_kwargs": {"region_name": "us-east-1"}}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


class Images(Dataset):
    """CIFAR-sized samples: ``(float32 (3, 32, 32), label)``, computed, no files."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        return torch.rand((3, 32, 32), generator=g), i % 10


def record_throughput(path: str, *, samples: int, batch_size: int,
                      storage_options: dict[str, Any] | None = None) -> dict[str, float]:
    """Record one epoch of ``Images(samples)`` to ``path``; seconds and MB/s of seen data, plus the bare loop."""
    import snapstore

    def loader() -> DataLoader:
        return DataLoader(Images(samples), batch_size=batch_size, shuffle=True, num_workers=0)

    t = time.perf_counter()
    for _ in loader():
        pass
    bare = time.perf_counter() - t
    t = time.perf_counter()
    with snapstore.Recorder(path, storage_options=storage_options, overwrite=True) as rec:
        for _ in rec.wrap(loader(), name="train"):
            pass
    seconds = time.perf_counter() - t
    mb = 2 * samples * (3 * 32 * 32 * 4 + 8) / 1e6  # seen rows + raw samples, uncompressed
    return {"seconds": seconds, "bare_seconds": bare, "mb": mb, "mb_per_s": mb / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.update(CREDENTIALS)
    local = tempfile.mkdtemp()
    try:
        rows = [("local directory", record_throughput(f"{local}/run.snap", samples=args.samples,
                                                      batch_size=args.batch_size))]
        with moto_server("bench") as so:
            rows.append(("s3 (moto, loopback)", record_throughput("s3://bench/run.snap", samples=args.samples,
                                                                  batch_size=args.batch_size, storage_options=so)))
    finally:
        shutil.rmtree(local, ignore_errors=True)
    print(f"{args.samples} samples of float32 3x32x32 + label, batch {args.batch_size}: {rows[0][1]['mb']:.1f} MB "
          "recorded (seen rows + raw samples, uncompressed), one epoch, num_workers=0")
    print(f"{'target':<22}{'seconds':>9}{'bare loop s':>13}{'MB/s':>9}{'x bare':>9}")
    for name, r in rows:
        print(f"{name:<22}{r['seconds']:>9.2f}{r['bare_seconds']:>13.2f}{r['mb_per_s']:>9.1f}"
              f"{r['seconds'] / r['bare_seconds']:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
