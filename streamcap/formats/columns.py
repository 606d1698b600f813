"""Reading text columns of the tables people give us: the one rule `streamcap enqueue` (the
downloader's sources) and `streamcap tokenizer build` share, so both see the same captions.

    require_text_column(pf.schema_arrow.field("caption").type, "caption", "a.parquet")  # or ColumnError
    text_values(batch.column(0))          # ['a red circle', None, ...]: str, or None where missing
    check_header(path, ["url\\tcaption"], delimiter=",")   # ColumnError: looks tab-separated

A parquet column may be typed: string, binary (UTF-8 bytes, as some exporters write text), or
something else (a list of captions, a number, a struct). Strings and UTF-8 binaries are text; a
binary value that is not UTF-8 reads as missing, so its row fails alone (an invalid URL, an
empty caption). Any other type is refused by column name: turned into text with `str()` it
would be trained on as "['a', 'b']" or "b'a red circle'".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ColumnError(ValueError):
    """A column cannot be read as text; the message is one line naming the file and the column."""


def is_text_type(arrow_type: Any) -> bool:
    """Whether values of this Arrow type read as text (strings, UTF-8 bytes, all-null)."""
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):  # a categorical column: judged by its values
        arrow_type = arrow_type.value_type
    checks = ("is_string", "is_large_string", "is_string_view", "is_binary", "is_large_binary", "is_binary_view")
    return pa.types.is_null(arrow_type) or any(getattr(pa.types, name, lambda _: False)(arrow_type) for name in checks)


def require_text_column(arrow_type: Any, column: str, where: str | Path) -> None:
    """ColumnError unless column `column` of `where` holds text (see `is_text_type`)."""
    if not is_text_type(arrow_type):
        raise ColumnError(
            f"{where}: column {column!r} holds {arrow_type} values, not text (string or UTF-8 binary); "
            "name a text column, or convert this one to one string per row"
        )


def text_values(array: Any) -> list[str | None]:
    """The values of an Arrow text array (checked with `require_text_column`) as str or None."""
    return [text_value(v) for v in array.to_pylist()]


def text_value(value: str | bytes | None) -> str | None:
    """A cell as text: bytes decoded as UTF-8, None for a null or bytes that are not UTF-8."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ColumnError(f"a {type(value).__name__} value is not text")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return None


def check_header(path: Path, names: list[str], delimiter: str) -> None:
    """ColumnError when a comma-separated file's header is one name holding tabs: the file is
    tab-separated, and read as csv its rows would be one column that matches no column name."""
    if delimiter == "," and len(names) == 1 and "\t" in names[0]:
        raise ColumnError(
            f"{path}: looks tab-separated (its header {names[0][:80]!r} has tabs, no commas); "
            "rename it to .tsv to read it as tab-separated"
        )
