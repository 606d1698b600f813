"""URL sources: parquet (a file, a directory or a glob; streamed by row group), csv, tsv, jsonl.

    source = open_source("relaion-pop/*.parquet")
    source.columns                   # ['key', 'url', 'width', ..., 'llava_caption', ...]
    source.count_rows()              # from parquet metadata: nothing is read
    rows = source.read_rows(["url", "llava_caption"], start=17_000, end=18_000)
    rows["url"][0]                   # str, or None for a missing / null value

Rows are numbered across all files of a source in sorted file-name order. Parquet reads only
the row groups that overlap the requested range and only the requested columns, so a part of a
600K-row source costs one or two row groups. Text formats are streamed line by line.
A jsonl line that is not a JSON object still counts as a row (with no values), so the
downloader records it as a failure instead of silently shifting every later row.
"""

from __future__ import annotations

import abc
import glob
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

from streamcap.common.logs import first_line
from streamcap.formats.columns import ColumnError, check_header, require_text_column, text_values

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Read this many lines to learn a jsonl source's columns.
_JSONL_SCHEMA_LINES = 100
_TEXT_BATCH_BYTES = 1 << 22
# take(lo, hi) -> {column: values of rows lo..hi of one batch}
_Take = Callable[[int, int], dict[str, list[Any]]]


class SourceError(ValueError):
    """A source cannot be read; the message is one line naming the file and why."""


class SourceUnavailable(SourceError):
    """The source's file is not there or cannot be opened on this machine (missing, no
    permission, an I/O error), as opposed to a file that is there but corrupt."""


class SourceChanged(SourceError):
    """A pinned file of an enqueued source no longer has the content its parts were cut from
    (downloader.pin); the message names the source, the file and what to do."""


def _unreadable(path: Path, e: Exception, what: str) -> SourceError:
    """The SourceError for `e` raised while reading `path`: SourceUnavailable for an OSError."""
    if isinstance(e, OSError):
        return SourceUnavailable(f"{path}: cannot read ({e.strerror or first_line(e)})")
    return SourceError(f"{path}: {what} ({first_line(e)})")


def format_of(path: Path) -> str | None:
    return FORMATS.get(path.suffix.lower())


def resolve_files(uri: str) -> tuple[str, list[Path]]:
    """(format, files) of a source given as a file, a directory or a glob pattern."""
    path = Path(uri).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and format_of(p))
        if not files:
            raise SourceError(f"{uri}: directory has no {', '.join(sorted(FORMATS))} files")
    elif path.is_file():
        files = [path]
    elif glob.has_magic(uri):
        files = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
        if not files:
            raise SourceError(f"{uri}: no file matches the pattern")
    else:
        raise SourceUnavailable(f"{uri}: no such file or directory")
    formats = {format_of(p) for p in files}
    if None in formats:
        bad = next(p for p in files if not format_of(p))
        raise SourceError(f"{bad}: unknown format (expected {', '.join(sorted(FORMATS))})")
    if len(formats) > 1:
        raise SourceError(f"{uri}: mixes formats {sorted(formats)}; one source has one format")
    return formats.pop(), files  # type: ignore[return-value]


def open_source(uri: str) -> Source:
    fmt, files = resolve_files(uri)
    return ParquetSource(uri, fmt, files) if fmt == "parquet" else TextSource(uri, fmt, files)


@dataclass
class Source(abc.ABC):
    uri: str
    format: str
    files: list[Path]

    @property
    @abc.abstractmethod
    def columns(self) -> list[str]:
        """Column names, as the first file declares them."""

    def count_rows(self) -> int:
        """Rows in all files together."""
        return sum(self.file_rows())

    @abc.abstractmethod
    def file_rows(self) -> list[int]:
        """Rows of each file, in the source's order."""

    @abc.abstractmethod
    def scan(self, columns: list[str], rows: int) -> Iterator[dict[str, list[Any]]]:
        """{column: values} batches of rows [0, rows), in order, streamed (text values: str or None)."""

    @abc.abstractmethod
    def read_rows(self, columns: list[str], start: int, end: int) -> dict[str, list[Any]]:
        """{column: values} of rows [start, end); SourceError when the source has fewer rows."""

    def require_columns(self, wanted: dict[str, str]) -> None:
        """SourceError naming each missing column (`{column: which setting asked for it}`)."""
        missing = [f"{col!r} ({why})" for col, why in wanted.items() if col not in self.columns]
        if missing:
            raise SourceError(f"{self.uri} has no column {', '.join(missing)}; its columns: {', '.join(self.columns)}")
        self.require_text(list(wanted))

    @abc.abstractmethod
    def require_text(self, columns: list[str]) -> None:
        """SourceError naming the first of `columns` that does not hold text."""


class ParquetSource(Source):
    def require_text(self, columns: list[str]) -> None:
        for path, meta in zip(self.files, self._meta):
            schema = meta.schema.to_arrow_schema()
            for column in columns:
                try:
                    require_text_column(schema.field(column).type, column, path)
                except ColumnError as e:
                    raise SourceError(str(e)) from None

    @cached_property
    def _meta(self) -> list[Any]:
        import pyarrow.parquet as pq

        metas = []
        for path in self.files:
            try:
                metas.append(pq.ParquetFile(path).metadata)
            except Exception as e:  # pyarrow raises several types for a bad file
                raise _unreadable(path, e, "not a readable parquet file") from None
        return metas

    @cached_property
    def columns(self) -> list[str]:
        names = [m.schema.to_arrow_schema().names for m in self._meta]
        _require_same_columns(self.files, names)
        return list(names[0])

    def file_rows(self) -> list[int]:
        return [m.num_rows for m in self._meta]

    def scan(self, columns: list[str], rows: int) -> Iterator[dict[str, list[Any]]]:
        import pyarrow.parquet as pq

        left = rows
        for path in self.files:
            try:
                for batch in pq.ParquetFile(path).iter_batches(columns=columns, batch_size=65536):
                    if left <= 0:
                        return
                    batch = batch.slice(0, left)
                    left -= batch.num_rows
                    yield {c: text_values(batch.column(c)) for c in columns}
            except SourceError:
                raise
            except Exception as e:
                raise _unreadable(path, e, "cannot read its rows") from None

    def read_rows(self, columns: list[str], start: int, end: int) -> dict[str, list[Any]]:
        import pyarrow.parquet as pq

        out: dict[str, list[Any]] = {c: [] for c in columns}
        offset = 0
        for path, meta in zip(self.files, self._meta):
            file_start, offset = offset, offset + meta.num_rows
            if offset <= start or file_start >= end:
                continue
            groups, group_start, first = [], file_start, None
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if group_start + n > start and group_start < end:
                    groups.append(g)
                    first = group_start if first is None else first
                group_start += n
            try:
                table = pq.ParquetFile(path).read_row_groups(groups, columns=columns)
            except Exception as e:
                raise _unreadable(path, e, f"cannot read rows {start}..{end}") from None
            lo = max(start, first) - first
            table = table.slice(lo, min(end, first + table.num_rows) - first - lo)
            for c in columns:
                # Text columns only (checked at enqueue): a UTF-8 binary becomes str, not "b'...'".
                out[c].extend(text_values(table.column(c)))
        return _checked(out, columns, start, end, self.uri)


class TextSource(Source):
    """csv / tsv (header row, every value a string) and jsonl (one object per line)."""

    @cached_property
    def _columns(self) -> list[str]:
        if self.format == "jsonl":
            seen: dict[str, None] = {}
            for i, row in enumerate(self._iter_jsonl(self.files[0])):
                seen.update(dict.fromkeys(row))
                if i >= _JSONL_SCHEMA_LINES:
                    break
            return list(seen)
        names = [self._header(path) for path in self.files]
        _require_same_columns(self.files, names)
        return list(names[0])

    @property
    def columns(self) -> list[str]:
        return self._columns

    def require_text(self, columns: list[str]) -> None:
        """Every csv/tsv value is read as text; a jsonl value that is not a string fails its row."""

    def file_rows(self) -> list[int]:
        first = self.columns[:1]
        return [sum(n for n, _ in self._batches(path, first)) for path in self.files]

    def scan(self, columns: list[str], rows: int) -> Iterator[dict[str, list[Any]]]:
        left = rows
        for path in self.files:
            for n, take in self._batches(path, columns):
                if left <= 0:
                    return
                yield take(0, min(n, left))
                left -= n

    def read_rows(self, columns: list[str], start: int, end: int) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {c: [] for c in columns}
        offset = 0
        for path in self.files:
            for n, take in self._batches(path, columns):
                batch_start, offset = offset, offset + n
                if offset <= start:
                    continue
                if batch_start >= end:
                    return _checked(out, columns, start, end, self.uri)
                lo, hi = max(start, batch_start) - batch_start, min(end, offset) - batch_start
                for c, values in take(lo, hi).items():
                    out[c].extend(values)
        return _checked(out, columns, start, end, self.uri)

    def _batches(self, path: Path, columns: list[str]) -> Iterator[tuple[int, _Take]]:
        """(rows, take) batches of one file, in order; `take(lo, hi)` gives {column: values} of
        those rows only, so the batches before a part are counted, never converted."""
        if self.format == "jsonl":
            batch: list[dict[str, Any]] = []
            for row in self._iter_jsonl(path):
                batch.append(row)
                if len(batch) >= 10_000:
                    yield len(batch), partial(_take_rows, batch, columns)
                    batch = []
            if batch:
                yield len(batch), partial(_take_rows, batch, columns)
            return
        reader = self._csv_reader(path, columns)
        while True:
            try:
                record_batch = reader.read_next_batch()
            except StopIteration:
                return
            except Exception as e:
                raise SourceError(f"{path}: not a readable {self.format} file ({first_line(e)})") from None
            yield record_batch.num_rows, partial(_take_columns, record_batch, columns)

    def _header(self, path: Path) -> list[str]:
        try:
            names = list(self._csv_reader(path, None).schema.names)
            check_header(path, names, "\t" if self.format == "tsv" else ",")
        except UnicodeDecodeError as e:  # values may be any bytes (see _take_columns); names must be text
            raise SourceError(f"{path}: not a readable {self.format} file (header: {e.reason})") from None
        except ColumnError as e:
            raise SourceError(str(e)) from None
        return names

    def _csv_reader(self, path: Path, columns: list[str] | None) -> Any:
        """A streaming reader; the requested columns are read as bytes, decoded per value by
        `_take_columns` (a URL like '0001' stays text; one non-UTF-8 value costs its row only)."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        delimiter = "\t" if self.format == "tsv" else ","
        convert = (
            None
            if columns is None
            else pacsv.ConvertOptions(
                include_columns=columns,
                column_types={c: pa.binary() for c in columns},
                strings_can_be_null=False,
            )
        )
        try:
            return pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=_TEXT_BATCH_BYTES),
                parse_options=pacsv.ParseOptions(
                    delimiter=delimiter, newlines_in_values=True, quote_char='"' if delimiter == "," else False
                ),
                convert_options=convert,
            )
        except Exception as e:
            raise _unreadable(path, e, f"not a readable {self.format} file") from None

    @staticmethod
    def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
        try:
            with open(path, "rb") as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError:
                        row = None
                    yield row if isinstance(row, dict) else {}
        except OSError as e:
            raise SourceUnavailable(f"{path}: cannot read ({e.strerror or e})") from None


def _take_rows(rows: list[dict[str, Any]], columns: list[str], lo: int, hi: int) -> dict[str, list[Any]]:
    return {c: [r.get(c) for r in rows[lo:hi]] for c in columns}


def _take_columns(record_batch: Any, columns: list[str], lo: int, hi: int) -> dict[str, list[Any]]:
    # A value that is not UTF-8 reads as missing, so its row fails, not the whole batch.
    return {c: text_values(record_batch.column(c).slice(lo, hi - lo)) for c in columns}


def _require_same_columns(files: list[Path], names: list[list[str]]) -> None:
    """SourceError naming the first file whose columns differ from the first file's."""
    for path, columns in zip(files[1:], names[1:]):
        if set(columns) != set(names[0]):
            raise SourceError(
                f"{path}: columns {', '.join(columns)} differ from those of {files[0]} ({', '.join(names[0])}); "
                "every file of a source needs the same columns"
            )


def _checked(out: dict[str, list[Any]], columns: list[str], start: int, end: int, uri: str) -> dict[str, list[Any]]:
    got = len(out[columns[0]]) if columns else end - start
    if got != end - start:
        raise SourceError(f"{uri}: rows {start}..{end} requested, only {got} exist (did the source change?)")
    return out
