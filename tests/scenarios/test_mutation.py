"""Property: a damaged snapshot reads correctly or raises SnapstoreError, never anything else.

One small snapshot is recorded once (three streams: dict batches with strings
and logged outputs; namedtuple batches with a ragged list-of-tensors field;
wide rows stored in two chunks an array).
Each example copies it, damages metadata (``zarr.json``) and chunk files at
random — truncates, flips bytes, deletes, replaces with junk, replaces JSON
values with wrong types or junk, deletes or renames JSON keys, swaps two
chunks of an array, copies one chunk over another, swaps a file with the
same file of another epoch (``order`` chunks between epochs, say), replaces a
``zarr.json`` with another node's (which would make an epoch vanish) — then
opens it and reads everything: streams, fields, epochs, order, batch sizes,
workers, batches, rows, samples, raw samples, outputs, ``to_numpy`` and
``info()``.

The oracle: any exception is a ``SnapstoreError``; if reading succeeds, every
value read equals the original (no silent wrong read).

A byte flip inside ``zarr.json`` that leaves valid JSON with every value of
its original type (``12`` -> ``13``) is a well-formed manifest with a wrong
value; the records of finished epochs are sealed by their stream's list of
epochs, but the stream and raw records and array metadata are not, so for
those the test asserts only that no other exception escapes.

``SNAPSTORE_MUTATIONS=1000 python -m pytest tests/scenarios/test_mutation.py
--hypothesis-show-statistics`` runs a longer campaign and counts the outcomes.
"""

from __future__ import annotations

import collections
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

import snapstore
from tests.support.datasets import Records

Item = collections.namedtuple("Item", ["tokens", "weight"])


class Tokens(Dataset):
    """Namedtuple samples whose ``tokens`` differ in length: a ragged list-of-tensors field."""

    def __len__(self) -> int:
        return 9

    def __getitem__(self, i: int) -> Item:
        return Item(torch.arange(i % 4 + 1, dtype=torch.int32) + i, float(i) / 2)


class Wide(Dataset):
    """40 rows of 64 KiB: 32 rows a chunk, so its arrays have two chunks to swap or copy over each other."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.full((256, 256), i, dtype=torch.uint8)


def brighter(items: list[torch.Tensor]) -> torch.Tensor:
    """Seen rows that differ from the raw samples, so both are stored."""
    return torch.stack(items) + 1


def collate_tokens(items: list[Item]) -> Item:
    return Item([it.tokens for it in items], torch.tensor([it.weight for it in items]))


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("mutation") / "run.snap"
    torch.manual_seed(0)
    with snapstore.Recorder(path) as rec:
        train = rec.wrap(DataLoader(Records(12), batch_size=5, shuffle=True), name="train")
        tokens = rec.wrap(DataLoader(Tokens(), batch_size=4, shuffle=True, collate_fn=collate_tokens), name="tokens")
        wide = rec.wrap(DataLoader(Wide(), batch_size=8, shuffle=True, collate_fn=brighter), name="wide")
        for _ in range(2):
            for _ in wide:
                pass
            for batch in train:
                train.log(score=batch["image"].sum((1, 2)).double())
            for _ in tokens:
                pass
    return path, read_all(path)


def canonical(v: Any) -> Any:
    """Values read, as plain comparable data (tensors/arrays -> dtype, shape, bytes)."""
    if isinstance(v, torch.Tensor):
        return ("tensor", str(v.dtype), tuple(v.shape), v.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    if isinstance(v, np.ndarray):
        return ("ndarray", str(v.dtype), v.shape, v.tolist() if v.dtype.kind in "TUO" else v.tobytes())
    if isinstance(v, np.generic):
        return ("scalar", str(v.dtype), v.tobytes())
    if isinstance(v, tuple) and hasattr(v, "_fields"):  # a namedtuple's class name is a label, not data
        return ("namedtuple", tuple(v._fields), [canonical(x) for x in v])
    if isinstance(v, dict):
        return ("dict", [(k, canonical(x)) for k, x in v.items()])
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, [canonical(x) for x in v])
    if isinstance(v, float) and math.isnan(v):
        return ("nan",)
    return (type(v).__name__, v)


def read_all(path: Path) -> dict[str, Any]:
    """Everything a user can read from the snapshot at ``path``."""
    snap = snapstore.open(path)
    info = snap.info()
    out: dict[str, Any] = {"streams": snap.streams, "format_version": info["format_version"]}
    for name in snap.streams:
        s = snap[name]
        d: dict[str, Any] = {"info": info["streams"][name], "fields": s.fields, "outputs_fields": s.output_fields,
                             "epochs": s.epochs, "raw_indices": s.raw.indices.tolist()}
        d["raw"] = [canonical(s.raw[int(i)]) for i in s.raw.indices]
        d["raw_numpy"] = canonical(s.raw.to_numpy())
        for e in s.epochs:
            ep = s.epoch(e)
            d[f"epoch {e}"] = {
                "complete": ep.complete,
                "order": ep.order.tolist(),
                "batch_sizes": ep.batch_sizes.tolist(),
                "workers": ep.workers.tolist(),
                "base_order": ep.base_order.tolist(),
                "batches": [canonical(b) for b in ep.batches()],
                "rows": [canonical(ep[k]) for k in range(len(ep))],
                "sample": canonical(ep.sample(index=int(ep.order[0]))) if len(ep) else None,
                "numpy": canonical(ep.to_numpy()),
            }
            d[f"outputs {e}"] = {n: ep.outputs[n] for n in ep.outputs}
        out[name] = d
    return out


# -- mutations ---------------------------------------------------------------
JUNK_VALUES = [None, "", "\x00junk/../", "🙃", -1, 2**63, 1.5, True, [], {}, [1, "x"], {"type": "junk"}]
JUNK_BYTES = [b"", b"{", b"null", b"[]", b"\xff\xfe\x00", b'{"zarr_format": 3, "node_type": "group"}',
              b'{"zarr_format": 3, "node_type": "array"}', b"[" * 5000, b"\x00" * 64]


def json_paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every value's path in a JSON document (the root excluded)."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    out = []
    for k, v in items:
        out.append((*prefix, k))
        out.extend(json_paths(v, (*prefix, k)))
    return out


def same_shape(a: Any, b: Any) -> bool:
    """Whether two JSON documents have the same keys and value types everywhere (only values differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_shape(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_shape(x, y) for x, y in zip(a, b))
    return True


def mutate(root: Path, data: st.DataObject) -> dict[str, Any]:
    """Apply one random mutation under ``root``; returns what it did (for the oracle and the report)."""
    # drawn by relative name: the temporary directory's name differs from run to run, and
    # hypothesis must see the same choices for the same files
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    rel = data.draw(st.sampled_from(files), label="file")
    f = root / rel
    raw = f.read_bytes()
    is_json = f.name == "zarr.json"
    try:
        doc = json.loads(raw) if is_json else None
    except (ValueError, RecursionError):  # damaged by an earlier mutation (deeply nested junk: RecursionError)
        doc = None
    ops = ["delete", "junk"] + (["truncate", "flip"] if raw else [])
    ops += ["replace value", "delete key", "rename key"] if isinstance(doc, dict) and doc else []
    siblings = [p for p in files if Path(p).parent == Path(rel).parent and p != rel and Path(p).name != "zarr.json"]
    elsewhere = [p for p in files if p != rel and other_epoch(p, rel)]
    nodes = [p for p in files if Path(p).name == "zarr.json" and p != rel]
    ops += ["swap chunks", "duplicate chunk"] if not is_json and siblings else []
    ops += ["swap across epochs"] if elsewhere else []
    ops += ["replace node"] if is_json else []
    op = data.draw(st.sampled_from(ops), label=f"operation on {rel}")
    done = {"file": rel, "op": op, "plausible": False}
    if op in ("swap chunks", "duplicate chunk", "swap across epochs", "replace node"):
        pool = {"swap chunks": siblings, "duplicate chunk": siblings, "swap across epochs": elsewhere,
                "replace node": nodes}[op]
        other = root / data.draw(st.sampled_from(pool), label=f"{op} with")
        theirs = other.read_bytes()
        if op.startswith("swap"):
            other.write_bytes(raw)
        f.write_bytes(theirs)
        done["with"] = str(other.relative_to(root))
    elif op == "truncate":
        f.write_bytes(raw[: data.draw(st.integers(0, max(0, len(raw) - 1)), label="keep bytes")])
    elif op == "delete":
        f.unlink()
    elif op == "junk":
        f.write_bytes(data.draw(st.sampled_from(JUNK_BYTES), label="junk"))
    elif op == "flip":
        buf = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 3), label="flips")):
            pos = data.draw(st.integers(0, len(buf) - 1), label="position")
            buf[pos] ^= data.draw(st.integers(1, 255), label="xor")
        f.write_bytes(bytes(buf))
        if is_json:
            try:
                done["plausible"] = same_shape(json.loads(raw), json.loads(bytes(buf)))
            except (ValueError, RecursionError):
                pass
    else:
        paths = json_paths(doc)
        if op == "rename key":
            paths = [p for p in paths if isinstance(p[-1], str)]  # never empty: doc is a non-empty dict
        path = data.draw(st.sampled_from(paths), label="json path")
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        if op == "replace value":
            old = parent[key]
            values = [v for v in JUNK_VALUES if type(v) is not type(old)] + ["\x00junk/../"]
            parent[key] = data.draw(st.sampled_from(values), label="value")
        elif op == "delete key":
            del parent[key]
        else:
            parent[key + "\x00junk"] = parent.pop(key)
        done["json path"] = path
        f.write_text(json.dumps(doc))
    return done


def other_epoch(a: str, b: str) -> bool:
    """Whether ``a`` is the file ``b`` names, in another epoch of the same stream (``.../epochs/<e>/...``)."""
    pa, pb = Path(a).parts, Path(b).parts
    if len(pa) != len(pb) or "epochs" not in pb[:-1]:
        return False
    at = pb.index("epochs") + 1
    return pa[:at] == pb[:at] and pa[at] != pb[at] and pa[at + 1 :] == pb[at + 1 :]


def check_against(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Every value read equals the original."""
    assert canonical(got) == canonical(want)


#: Examples per run; raise it for a long run by hand (docs/SECURITY.md gives the command and the counts).
EXAMPLES = int(os.environ.get("SNAPSTORE_MUTATIONS", "60"))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_damaged_snapshots_read_correctly_or_raise_snapstore_errors(original, data):
    source, want = original
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "run.snap"
        shutil.copytree(source, root)
        done = [mutate(root, data) for _ in range(data.draw(st.integers(1, 2), label="mutations"))]
        note(f"mutations: {done}")
        try:
            got = read_all(root)
        except snapstore.SnapstoreError as e:
            note(f"refused: {type(e).__name__}: {e}")
            event("refused (SnapstoreError)")
            return
        if any(d["plausible"] for d in done):
            event("read, a well-formed manifest value changed (exception type checked only)")
            return  # a well-formed manifest with another value: only the exception type is checked
        check_against(got, want)
        event("read back equal (harmless)")


def test_the_original_reads_back_through_the_same_oracle(original):
    source, want = original
    check_against(read_all(source), want)
    assert want["streams"] == ["tokens", "train", "wide"] and want["train"]["epochs"] == [0, 1]
    for array in ("wide/epochs/0/seen/value", "wide/raw/fields/value"):  # two chunks to swap
        assert sorted(p.name for p in (source / array).iterdir()) == ["c.0.0.0", "c.1.0.0", "zarr.json"]
