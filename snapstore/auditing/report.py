"""Reports of ``audit``, ``compare`` and ``diff``: plain dataclasses, ``to_dict()`` and a readable ``str()``.

Every report carries ``findings``: one :class:`Finding` per problem, naming
the check, the stream, epoch and field it concerns, the dataset indices
involved (capped at ``config.MAX_FINDING_INDICES``, counted in ``count``) and
a message that says what was seen.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import config

__all__ = ["AuditReport", "CompareReport", "DiffReport", "Divergence", "FieldStats", "Finding"]

_PLURALS = {"index": "indices", "finding": "findings", "row": "rows", "epoch": "epochs", "stream": "streams",
            "position": "positions"}

#: Indices ``str(finding)`` prints; ``to_dict`` keeps all of ``Finding.indices``.
_SHOWN_INDICES = 20


def plural(n: int, word: str) -> str:
    """``"1 index"``, ``"3 indices"``."""
    return f"{n} {word if n == 1 else _PLURALS.get(word, word + 's')}"


def _where(stream: str | None, epoch: int | None, field: str | None) -> str:
    parts = []
    if stream is not None:
        parts.append(f"stream {stream!r}")
    if epoch is not None:
        parts.append(f"epoch {epoch}")
    if field is not None:
        parts.append(f"field {field!r}")
    return " ".join(parts) or "snapshot"


@dataclass(frozen=True)
class Finding:
    """One problem a check found.

    Attributes
    ----------
    check : str
        ``"integrity"``, ``"completeness"``, ``"coverage"``, ``"values"``,
        ``"stability"``, ``"raw_vs_seen"`` (audit); ``"drift"`` (compare);
        ``"streams"``, ``"epochs"``, ``"order"``, ``"length"``, ``"batches"``,
        ``"schema"``, ``"seen"``, ``"outputs"``, ``"raw"`` (diff).
    stream, epoch, field : str, int, str or None
        Where; ``epoch`` is None for raw samples and stream-wide findings.
    indices : tuple of int
        Dataset indices involved, ascending unless the message says
        otherwise, at most ``config.MAX_FINDING_INDICES`` of them.
    count : int
        How many indices are involved in all (``>= len(indices)``).
    message : str
        What was found, in words.
    """

    check: str
    stream: str | None
    epoch: int | None
    field: str | None
    indices: tuple[int, ...]
    count: int
    message: str

    @classmethod
    def make(
        cls,
        check: str,
        message: str,
        *,
        stream: str | None = None,
        epoch: int | None = None,
        field: str | None = None,
        indices: Any = (),
        sort: bool = True,
    ) -> Finding:
        """A finding whose ``indices`` are capped and counted; negative ones (unknown: unreadable) are left out."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        idx = idx[idx >= 0]
        if sort:
            idx = np.unique(idx)
        return cls(check, stream, None if epoch is None else int(epoch), field,
                   tuple(int(i) for i in idx[: config.MAX_FINDING_INDICES]), len(idx), message)

    @property
    def where(self) -> str:
        """``"stream 'train' epoch 1 field '1'"``."""
        return _where(self.stream, self.epoch, self.field)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"indices": list(self.indices)}

    def __str__(self) -> str:
        text = f"[{self.check}] {self.where}: {self.message}"
        if self.count:
            shown = ", ".join(str(i) for i in self.indices[:_SHOWN_INDICES])
            hidden = self.count - min(len(self.indices), _SHOWN_INDICES)
            more = f" (+{hidden} more)" if hidden else ""
            text += f"\n    indices: {shown}{more}"
        return text


@dataclass(frozen=True)
class FieldStats:
    """Statistics of one field over an epoch's rows (or the raw samples).

    ``count`` finite values (every element of every row), their ``min``,
    ``max``, ``mean`` and ``std`` (population; None without finite values or
    for strings), ``nan`` and ``inf`` element counts, and ``rows`` read.
    """

    rows: int
    count: int
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    nan: int = 0
    inf: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _num(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4g}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _stats_lines(stats: dict[str, dict[str, Any]]) -> list[str]:
    rows = [["stream", "epoch", "field", "rows", "count", "min", "max", "mean", "std", "nan", "inf"]]
    for stream, per in stats.items():
        groups = [("raw", per.get("raw", {}))] + [(str(e), f) for e, f in per.get("epochs", {}).items()]
        for label, fields in groups:
            for name, s in fields.items():
                rows.append([stream, label, name, str(s.rows), str(s.count), _num(s.min), _num(s.max),
                             _num(s.mean), _num(s.std), str(s.nan), str(s.inf)])
    return _table(rows) if len(rows) > 1 else []


def _stats_to_dict(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        stream: {
            "raw": {f: s.to_dict() for f, s in per.get("raw", {}).items()},
            "epochs": {str(e): {f: s.to_dict() for f, s in fs.items()} for e, fs in per.get("epochs", {}).items()},
        }
        for stream, per in stats.items()
    }


def _findings_lines(findings: list[Finding]) -> list[str]:
    return ["  " + line for f in findings for line in str(f).splitlines()]


@dataclass
class AuditReport:
    """What ``snapstore.audit`` found.

    Attributes
    ----------
    path : str
        The snapshot audited.
    findings : list of Finding
        Empty when the snapshot is clean.
    stats : dict
        ``stats[stream]["raw"][field]`` and ``stats[stream]["epochs"][epoch][field]``
        are :class:`FieldStats`.
    scanned : dict
        ``streams``, ``epochs``, ``arrays``, ``chunks``, ``bytes_stored``
        (compressed bytes read), ``bytes`` (decoded), ``seconds``.
    """

    path: str
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    scanned: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when there are no findings."""
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            "stats": _stats_to_dict(self.stats),
            "scanned": dict(self.scanned),
        }

    def __str__(self) -> str:
        n = len(self.findings)
        head = f"snapstore audit {self.path}: " + ("no findings" if not n else plural(n, "finding"))
        lines = [head]
        s = self.scanned
        if s:
            mb, secs = s.get("bytes_stored", 0) / 1e6, s.get("seconds", 0.0)
            lines.append(
                f"  scanned {plural(s.get('streams', 0), 'stream')}, {plural(s.get('epochs', 0), 'epoch')}, "
                f"{s.get('arrays', 0)} arrays, {s.get('chunks', 0)} chunks, {mb:.1f} MB stored in {secs:.2f} s"
            )
        if self.findings:
            lines.append("findings:")
            lines += _findings_lines(self.findings)
        stats = _stats_lines(self.stats)
        if stats:
            lines.append("statistics:")
            lines += stats
        return "\n".join(lines)


@dataclass
class CompareReport:
    """What ``snapstore.compare`` found: raw samples that differ from a live dataset.

    Attributes
    ----------
    stream : str
    compared : int
        Raw samples compared.
    findings : list of Finding
        ``check="drift"``: per field, the indices whose live value differs
        from the recorded raw sample; indices the live dataset no longer has;
        a changed dataset length or sample structure.
    """

    stream: str
    compared: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every compared raw sample equals the live one, bit for bit."""
        return not self.findings

    @property
    def indices(self) -> tuple[int, ...]:
        """Every dataset index that differs in any field (capped like ``Finding.indices``)."""
        return tuple(sorted({i for f in self.findings for i in f.indices}))

    def to_dict(self) -> dict[str, Any]:
        return {"stream": self.stream, "ok": self.ok, "compared": self.compared,
                "findings": [f.to_dict() for f in self.findings]}

    def __str__(self) -> str:
        head = f"snapstore compare, stream {self.stream!r}: {self.compared} raw samples compared, "
        head += "all equal to the live dataset" if self.ok else plural(len(self.findings), "finding")
        return "\n".join([head] + _findings_lines(self.findings))


@dataclass(frozen=True)
class Divergence:
    """The first place two recordings differ.

    ``epoch``, ``batch`` and ``position`` locate the row (``batch``/``position``
    None when a whole epoch or stream is missing on one side); ``field`` is
    the seen field or output name that differs there, or ``"index"`` when
    the dataset index itself differs; ``check`` names the kind.
    """

    stream: str
    epoch: int | None
    batch: int | None
    position: int | None
    field: str | None
    check: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        where = [f"stream {self.stream!r}"]
        for name in ("epoch", "batch", "position"):
            if getattr(self, name) is not None:
                where.append(f"{name} {getattr(self, name)}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{' '.join(where)}: {self.message}"


@dataclass
class DiffReport:
    """What ``snapstore.diff`` found between ``a`` and ``b``.

    ``identical`` is True when the same indices were seen in the same order
    with bitwise-equal seen values and outputs (and raw samples);
    ``first_divergence`` is the earliest (epoch, batch, position) where they
    differ, or None.
    """

    a: str
    b: str
    findings: list[Finding] = field(default_factory=list)
    first_divergence: Divergence | None = None
    compared: dict[str, Any] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "identical": self.identical,
            "first_divergence": self.first_divergence.to_dict() if self.first_divergence else None,
            "findings": [f.to_dict() for f in self.findings],
            "compared": dict(self.compared),
        }

    def __str__(self) -> str:
        c = self.compared
        what = f" ({plural(c.get('epochs', 0), 'epoch')}, {plural(c.get('rows', 0), 'row')} compared)" if c else ""
        if self.identical:
            return f"snapstore diff {self.a} {self.b}: identical{what}"
        lines = [f"snapstore diff {self.a} {self.b}: different{what}"]
        if self.first_divergence is not None:
            lines.append(f"first divergence: {self.first_divergence}")
        lines.append("findings:")
        lines += _findings_lines(self.findings)
        return "\n".join(lines)
