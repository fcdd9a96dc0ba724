"""Reading profile files for `audience ingest`: CSV / TSV (optionally .gz), JSONL, Parquet.

Each row holds one text of one user; rows of the same user (anywhere in the file) are grouped
into one profile: texts in file order, attributes from the user's last row.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from audience.client import Profile, Text

FORMATS = ("csv", "tsv", "jsonl", "parquet")


@dataclass(frozen=True)
class ColumnMap:
    id_col: str
    text_cols: tuple[str, ...] = ()
    # (column, type): type is "auto" (number if it parses as one), "number" or "text"
    attr_cols: tuple[tuple[str, str], ...] = ()
    time_col: str | None = None
    time_format: str | None = None  # strptime format; default: Unix seconds or ISO 8601
    weight_col: str | None = None

    @staticmethod
    def parse_attr(spec: str) -> tuple[str, str]:
        name, _, kind = spec.partition(":")
        kind = kind or "auto"
        if kind not in ("auto", "number", "text") or not name:
            raise ValueError(f"--attr {spec!r}: use COLUMN, COLUMN:number or COLUMN:text")
        return name, kind


@dataclass
class IngestReport:
    rows: int = 0
    users: int = 0
    texts: int = 0
    skipped_rows: int = 0  # no user id
    unparsed_times: int = 0
    time_examples: list[str] = field(default_factory=list)  # a few values that did not parse
    empty_texts: int = 0  # text cells with nothing in them
    dropped_texts: int = 0  # over --max-texts-per-user
    notes: list[str] = field(default_factory=list)

    def lines(self, time_format: str | None) -> list[str]:
        """What was read, and what was skipped and why, for the person running the ingest."""
        out = [f"read {self.rows:,} rows -> {self.users:,} users, {self.texts:,} texts"]
        skipped = [
            (self.skipped_rows, "rows without an id"),
            (self.empty_texts, "empty texts"),
            (self.dropped_texts, "texts over --max-texts-per-user (the oldest)"),
        ]
        if any(n for n, _ in skipped):
            out.append("skipped: " + "; ".join(f"{n:,} {what}" for n, what in skipped if n))
        if self.unparsed_times:
            examples = ", ".join(repr(e) for e in self.time_examples)
            expected = (
                f"--time-format {time_format!r}" if time_format else "Unix seconds or ISO 8601"
            )
            out.append(
                f"unparsed times: {self.unparsed_times:,} texts (e.g. {examples}) did not read as "
                f"{expected}; they are kept without a time (no recency weighting). Month names "
                "are read in English only: see the README, 'Dates in other languages'."
            )
        return out


def detect_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for ext, fmt in (
        (".csv", "csv"),
        (".tsv", "tsv"),
        (".tab", "tsv"),
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".json", "jsonl"),
        (".parquet", "parquet"),
    ):
        if name.endswith(ext):
            return fmt
    raise ValueError(f"cannot tell the format of {path.name}; pass --format {'|'.join(FORMATS)}")


def _open_text(path: Path) -> IO[str]:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_rows(
    path: Path, fmt: str = "auto", delimiter: str | None = None
) -> Iterator[dict[str, Any]]:
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
            yield from batch.to_pylist()
        return
    with _open_text(path) as f:
        if fmt == "jsonl":
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path.name} line {n}: not JSON ({exc.msg})") from exc
            return
        csv.field_size_limit(sys.maxsize)
        if fmt == "tsv":
            yield from csv.DictReader(f, delimiter=delimiter or "\t", quoting=csv.QUOTE_NONE)
        else:
            yield from csv.DictReader(f, delimiter=delimiter or ",")


def _timestamp(value: Any, fmt: str | None) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return int(value.timestamp())
    text = str(value).strip()
    try:
        if fmt:
            return int(datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp())
        try:
            return int(float(text))
        except ValueError:
            dt = datetime.fromisoformat(text)
            return int((dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp())
    except (ValueError, OverflowError):
        return None


def _attr(value: Any, kind: str) -> float | str | bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if kind == "text":
        return str(value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        if kind == "number":
            return None
        return str(value)
    return x if math.isfinite(x) else None


class RowReader:
    """One file row -> (user id, its texts, its attributes), counting what it skips in
    `report`. Shared by the local ingest and the Ray workers (_ray_ingest.py), so that a value
    reads the same in both."""

    def __init__(self, cols: ColumnMap, report: IngestReport) -> None:
        self.cols, self.report = cols, report

    def check_columns(self, row: dict[str, Any]) -> None:
        cols = self.cols
        wanted = (
            cols.id_col,
            *cols.text_cols,
            *(a for a, _ in cols.attr_cols),
            cols.time_col,
            cols.weight_col,
        )
        missing = [c for c in wanted if c and c not in row]
        if missing:
            raise ValueError(f"columns not in the file: {missing}; it has {sorted(row)}")

    def read(self, row: dict[str, Any]) -> tuple[str, list[Text], dict] | None:
        """(user id, texts, attributes), or None for a row without an id."""
        cols, report = self.cols, self.report
        report.rows += 1
        uid = row.get(cols.id_col)
        if uid is None or str(uid).strip() == "":
            report.skipped_rows += 1
            return None
        ts = 0
        if cols.time_col:
            parsed = _timestamp(row.get(cols.time_col), cols.time_format)
            if parsed is None or parsed < 0:
                report.unparsed_times += 1
                raw = str(row.get(cols.time_col))
                if len(report.time_examples) < 3 and raw not in report.time_examples:
                    report.time_examples.append(raw)
            else:
                ts = parsed
        weight = None
        if cols.weight_col and row.get(cols.weight_col) not in (None, ""):
            weight = float(row[cols.weight_col])
        texts = []
        for col in cols.text_cols:
            value = row.get(col)
            for t in value if isinstance(value, list) else [value]:
                if t is not None and str(t).strip():
                    texts.append(Text(str(t), weight=weight, timestamp=ts))
                else:
                    report.empty_texts += 1
        attrs = {}
        for col, kind in cols.attr_cols:
            v = _attr(row.get(col), kind)
            if v is not None:
                attrs[col] = v
        return str(uid).strip(), texts, attrs


def newest_texts(texts: list[Text], limit: int | None, report: IngestReport) -> list[Text]:
    """A user's texts within `limit` (the newest; file order when there are no times)."""
    if limit is not None and len(texts) > limit:
        report.dropped_texts += len(texts) - limit
        order = sorted(range(len(texts)), key=lambda i: -texts[i].timestamp)
        texts = [texts[i] for i in sorted(order[:limit])]
    report.texts += len(texts)
    return texts


def group_profiles(
    rows: Iterator[dict[str, Any]], cols: ColumnMap, *, max_texts_per_user: int | None = None
) -> tuple[list[Profile], IngestReport]:
    report = IngestReport()
    reader = RowReader(cols, report)
    texts: dict[str, list[Text]] = {}
    attrs: dict[str, dict[str, float | str | bool]] = {}
    for row in rows:
        if report.rows == 0:
            reader.check_columns(row)
        read = reader.read(row)
        if read is None:
            continue
        uid, user_texts, user_attrs = read
        texts.setdefault(uid, []).extend(user_texts)
        attrs.setdefault(uid, {}).update(user_attrs)
    profiles = [
        Profile(
            uid, texts=newest_texts(user_texts, max_texts_per_user, report), attributes=attrs[uid]
        )
        for uid, user_texts in texts.items()
    ]
    report.users = len(profiles)
    return profiles, report


def input_files(paths: list[str]) -> list[Path]:
    """Files named, and the files in folders named (sorted; hidden ones skipped)."""
    out = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise ValueError(f"{path}: no files in this folder")
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise ValueError(f"{path}: no such file or folder")
    return out
