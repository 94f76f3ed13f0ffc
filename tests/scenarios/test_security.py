"""Opening a snapshot never unpickles or executes anything in it (docs/SECURITY.md).

Each test plants a pickle payload whose unpickling would create a marker
file — in manifests, in array attributes, as an object-dtype array, behind a
pickle codec, as a Zarr v2 array with a pickle filter — then opens and reads
the snapshot with ``pickle.loads``/``pickle.Unpickler`` made to fail loudly,
and checks the marker never appears: the payload is refused with a
``SnapstoreError`` or read back as the inert string it is.
"""

from __future__ import annotations

import base64
import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import snapstore
from tests.support.datasets import Pairs
from tests.support.snapshots import edit_json, read_everything

SOURCE = Path(snapstore.__file__).parent


class Payload:
    """Unpickling this object opens (creates) the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("security") / "run.snap"
    with snapstore.Recorder(path) as rec:
        # namedtuple batches; raw=None keeps the seen rows in the epoch (else they are stored once, in raw/)
        stream = rec.wrap(DataLoader(Pairs(), batch_size=8), name="train", raw=None)
        for batch in stream:
            stream.log(loss=batch.image.sum((1, 2)).double())
    return path


@pytest.fixture
def setup(recorded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, bytes]:
    """A copy of the snapshot, the marker path, and a pickle that would create it; unpickling fails loudly."""
    snap = tmp_path / "run.snap"
    shutil.copytree(recorded, snap)
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(Payload(marker))

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("something tried to unpickle data from the snapshot")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    return snap, marker, payload


def refused_or_inert(snap: Path, marker: Path) -> str:
    """Read everything; 'refused' (a SnapstoreError) or 'read'. The marker must never exist."""
    try:
        read_everything(snap)
        outcome = "read"
    except snapstore.SnapstoreError:
        outcome = "refused"
    assert not marker.exists(), "the payload was executed"
    return outcome


def test_the_library_source_has_no_pickle_or_eval_path():
    """No module of snapstore can unpickle, evaluate or import something named by a snapshot."""
    # a method such as ``model.eval()`` (torch's training-mode switch, in cli/demo.py) is not the builtin,
    # and a comment naming allow_pickle (cli/export.py says its .npy files load without it) is no call
    # and the word "eval" (the Trainer's eval loader, integrations/transformers.py) is not a call of the builtin
    risky = re.compile(r"(?<!\.)\b((pickle|cPickle|dill|cloudpickle|marshal|shelve|joblib|torch\.load|allow_pickle|"
                       r"__import__|import_module|getattr\(\w+, *\w+\[|yaml\.load)\b|(eval|exec) *\()")
    modules = sorted(SOURCE.rglob("*.py"))  # every module of every layer package, not only the top level
    assert len(modules) > 40 and SOURCE / "read" / "snapshot.py" in modules
    hits = [f"{p.relative_to(SOURCE)}:{i}: {line.strip()}" for p in modules
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if risky.search(line.split("#", 1)[0])]  # code, not comments
    assert hits == []


def test_a_pickle_in_manifest_strings_is_inert_or_refused(setup):
    snap, marker, payload = setup
    text = base64.b64encode(payload).decode()
    latin = payload.decode("latin-1")
    edit_json(snap / "zarr.json", lambda d: d["attributes"]["snapstore"]["versions"].update(torch=text, evil=latin))
    info = snapstore.open(snap).info()  # the strings come back as strings
    assert info["versions"]["torch"] == text and info["versions"]["evil"] == latin
    assert refused_or_inert(snap, marker) == "read"
    # a finished epoch's record is sealed by its stream's list of epochs (format 2): an edit is refused
    edit_json(snap / "train/epochs/0/zarr.json",
              lambda d: d["attributes"]["epoch"]["provenance"].update(sampler=text, state=latin))
    with pytest.raises(snapstore.CorruptionError, match="commit record"):
        snapstore.open(snap)["train"].epoch(0)
    assert refused_or_inert(snap, marker) == "refused"


@pytest.mark.parametrize("where", ["name", "fields"])
@pytest.mark.parametrize("encoding", ["base64", "latin-1"])
def test_a_pickle_as_a_namedtuple_name_or_field_is_inert_or_refused(setup, where, encoding):
    """A pickle's text is at most a class or field name (built with collections.namedtuple,
    which accepts identifiers only), or is refused."""
    snap, marker, payload = setup
    text = base64.b64encode(payload).decode().rstrip("=") if encoding == "base64" else payload.decode("latin-1")

    def plant(d: dict[str, Any]) -> None:
        node = d["attributes"]["stream"]["structure"]
        assert node["type"] == "namedtuple"
        node[where] = text if where == "name" else [text, node["fields"][1]]

    edit_json(snap / "train/zarr.json", plant)
    outcome = refused_or_inert(snap, marker)
    if encoding == "latin-1":  # not an identifier
        assert outcome == "refused"
        with pytest.raises(snapstore.CorruptionError, match="identifier"):
            snapstore.open(snap)["train"]
    elif where == "name" and text.isidentifier():  # a strange but harmless class name
        assert outcome == "read" and type(snapstore.open(snap)["train"].epoch(0).batch(0)).__name__ == text
    else:  # a field renamed without its leaf: the structure no longer matches the fields
        assert outcome == "refused"


def test_a_namedtuple_name_that_is_code_is_never_run(setup):
    snap, marker, _ = setup
    code = f"__import__('os').system('touch {marker}')"
    edit_json(snap / "train/zarr.json", lambda d: d["attributes"]["stream"]["structure"].update(name=code))
    assert refused_or_inert(snap, marker) == "refused"


def test_a_pickle_in_array_attributes_is_inert(setup):
    snap, marker, payload = setup
    text = base64.b64encode(payload).decode()
    for meta in snap.rglob("zarr.json"):
        doc = json.loads(meta.read_text())
        if doc.get("node_type") == "array":
            doc["attributes"].update(pickle=text, field={"kind": text, "dtype": "|O", "shape": [text]})
            meta.write_text(json.dumps(doc))
    assert refused_or_inert(snap, marker) == "read"


@pytest.mark.parametrize("data_type", ["object", "|O", "O", {"name": "object"}])
def test_an_object_dtype_array_is_refused(setup, data_type):
    snap, marker, payload = setup
    edit_json(snap / "train/epochs/0/seen/label/zarr.json", lambda d: d.update(data_type=data_type))
    (snap / "train/epochs/0/seen/label/c.0").write_bytes(payload)
    assert refused_or_inert(snap, marker) == "refused"


@pytest.mark.parametrize("codec", ["numcodecs.pickle", "pickle"])
def test_a_pickle_codec_is_refused(setup, codec):
    snap, marker, payload = setup
    edit_json(snap / "train/epochs/0/seen/label/zarr.json",
              lambda d: d["codecs"].insert(1, {"name": codec, "configuration": {}}))
    (snap / "train/epochs/0/seen/label/c.0").write_bytes(payload)
    assert refused_or_inert(snap, marker) == "refused"


def test_a_zarr_v2_array_with_a_pickle_filter_is_refused(setup):
    """Snapshots are Zarr v3 only: a v2 node (.zarray, object dtype, pickle filter) is never decoded."""
    snap, marker, payload = setup
    array = snap / "train/epochs/0/seen/label"
    shutil.rmtree(array)
    array.mkdir()
    (array / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [8], "chunks": [8], "dtype": "|O", "compressor": None, "fill_value": None,
        "filters": [{"id": "pickle", "protocol": 5}], "order": "C", "dimension_separator": ".",
    }))
    (array / ".zattrs").write_text("{}")
    (array / "0").write_bytes(payload)
    assert refused_or_inert(snap, marker) == "refused"
    edit_json(snap / "train/epochs/0/zarr.json", lambda d: d.update(zarr_format=2))  # a v2 claim in a v3 hierarchy
    assert refused_or_inert(snap, marker) == "refused"


def test_the_planted_snapshot_reads_normally_without_payloads(setup):
    snap, marker, _ = setup
    batches = list(snapstore.open(snap)["train"].epoch(0).batches())
    assert type(batches[0]).__name__ == "Pair" and batches[0]._fields == ("image", "label")
    assert torch.equal(batches[0].label, torch.arange(8)) and np.isfinite(batches[0].image.numpy()).all()
    assert not marker.exists()
