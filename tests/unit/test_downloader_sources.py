"""Sources: every format, row ranges across files and row groups, readable errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamcap.downloader.enqueue import pick_caption_column, source_id
from streamcap.downloader.sources import SourceError, open_source

N = 250


def table(start: int = 0, n: int = N) -> pa.Table:
    rows = range(start, start + n)
    return pa.table(
        {
            "key": [f"{i:05d}" for i in rows],
            "url": [f"http://x/{i}.jpg" for i in rows],
            "llava_caption": [f"caption {i}" for i in rows],
            "alt_txt": [f"alt {i}" for i in rows],
        }
    )


@pytest.fixture
def parquet_dir(tmp_path):
    d = tmp_path / "pop"
    d.mkdir()
    pq.write_table(table(0, 100), d / "a.parquet", row_group_size=30)
    pq.write_table(table(100, 150), d / "b.parquet", row_group_size=40)
    (d / "README.txt").write_text("not a source file")
    return d


def test_parquet_directory_rows_span_files_and_row_groups(parquet_dir):
    source = open_source(str(parquet_dir))
    assert source.format == "parquet" and [p.name for p in source.files] == ["a.parquet", "b.parquet"]
    assert source.columns == ["key", "url", "llava_caption", "alt_txt"]
    assert source.count_rows() == N
    rows = source.read_rows(["url", "alt_txt"], 85, 135)
    assert rows["url"] == [f"http://x/{i}.jpg" for i in range(85, 135)]
    assert rows["alt_txt"][-1] == "alt 134"


def test_a_glob_and_a_single_file(parquet_dir):
    assert open_source(str(parquet_dir / "*.parquet")).count_rows() == N
    single = open_source(str(parquet_dir / "b.parquet"))
    assert single.read_rows(["key"], 0, 2)["key"] == ["00100", "00101"]


def test_reading_past_the_end_says_the_source_changed(parquet_dir):
    with pytest.raises(SourceError, match="only 10 exist"):
        open_source(str(parquet_dir)).read_rows(["url"], 240, 260)


def test_csv_keeps_values_as_text_and_handles_quotes(tmp_path):
    path = tmp_path / "urls.csv"
    path.write_text("url,caption,id\n" + "".join(f'http://x/{i},"a, quoted\ncaption {i}",{i:04d}\n' for i in range(30)))
    source = open_source(str(path))
    assert source.columns == ["url", "caption", "id"] and source.count_rows() == 30
    rows = source.read_rows(["id", "caption"], 28, 30)
    assert rows == {"id": ["0028", "0029"], "caption": ["a, quoted\ncaption 28", "a, quoted\ncaption 29"]}


def test_tsv(tmp_path):
    path = tmp_path / "urls.tsv"
    path.write_text("url\ttext\n" + "".join(f'http://x/{i}\t"odd quote {i}\n' for i in range(5)))
    rows = open_source(str(path)).read_rows(["url", "text"], 3, 5)
    assert rows == {"url": ["http://x/3", "http://x/4"], "text": ['"odd quote 3', '"odd quote 4']}


def test_jsonl_counts_broken_lines_as_rows_without_values(tmp_path):
    path = tmp_path / "urls.jsonl"
    lines = [json.dumps({"url": f"http://x/{i}", "caption": f"c {i}"}) for i in range(4)]
    lines.insert(2, "{broken")
    path.write_text("\n".join(lines) + "\n\n")
    source = open_source(str(path))
    assert source.columns == ["url", "caption"] and source.count_rows() == 5
    assert source.read_rows(["url"], 1, 4)["url"] == ["http://x/1", None, "http://x/2"]


def test_missing_column_lists_the_columns_that_exist(parquet_dir):
    with pytest.raises(SourceError) as err:
        open_source(str(parquet_dir)).require_columns({"image_url": "--url-col"})
    assert "no column 'image_url' (--url-col)" in str(err.value)
    assert "its columns: key, url, llava_caption, alt_txt" in str(err.value)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"not parquet at all"), "not a readable parquet file"),
        (lambda p: None, "no such file or directory"),
    ],
)
def test_unreadable_sources_fail_with_one_line(tmp_path, make, message):
    path = tmp_path / "bad.parquet"
    make(path)
    with pytest.raises(SourceError, match=message) as err:
        open_source(str(path)).count_rows()
    assert "\n" not in str(err.value)


def test_unknown_and_mixed_formats_are_refused(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(SourceError, match="unknown format"):
        open_source(str(tmp_path / "a.txt"))
    (tmp_path / "b.csv").write_text("url\nx\n")
    (tmp_path / "c.jsonl").write_text('{"url": "x"}\n')
    with pytest.raises(SourceError, match="mixes formats"):
        open_source(str(tmp_path))


def test_the_caption_column_is_picked_from_relaion_pop_columns_and_said_so():
    columns = ["key", "url", "alt_txt", "cogvlm_caption", "llava_caption"]
    chosen, extras, note = pick_caption_column(columns, None)
    assert chosen == "llava_caption" and extras == ("cogvlm_caption", "alt_txt")
    assert "picked automatically" in note
    assert pick_caption_column(["url", "alt_txt"], None)[0] == "alt_txt"
    assert pick_caption_column(columns, "alt_txt")[:2] == ("alt_txt", ("llava_caption", "cogvlm_caption"))
    with pytest.raises(SourceError, match="no caption column.*its columns: url, width"):
        pick_caption_column(["url", "width"], None)


@pytest.mark.parametrize(
    "name, uri, expected",
    [
        (None, "/data/relaion-pop.parquet", "relaion-pop"),
        (None, "/data/pop/", "pop"),
        (None, "/data/pop/*.parquet", "pop"),
        ("My Source!", "/x.csv", "my-source"),
    ],
)
def test_source_ids(name, uri, expected):
    assert source_id(name, uri) == expected


def test_a_csv_value_that_is_not_utf8_costs_its_row_only(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b"url,caption\nhttp://h/1.jpg,a cat\nhttp://h/2.jpg,a \xff dog\nhttp://h/\xfe.jpg,a bird\n")
    rows = open_source(str(path)).read_rows(["url", "caption"], 0, 3)
    # Missing values: the downloader records row 1 as empty_caption and row 2 as invalid_url.
    assert rows == {"url": ["http://h/1.jpg", "http://h/2.jpg", None], "caption": ["a cat", None, "a bird"]}


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_files_of_one_source_that_disagree_on_columns_are_refused_naming_the_file(tmp_path, suffix):
    folder = tmp_path / "src"
    folder.mkdir()
    for name, caption_col in (("a", "caption"), ("b", "alt_txt")):
        table = pa.table({"url": ["http://h/1.jpg"], caption_col: ["a cat"]})
        if suffix == ".parquet":
            pq.write_table(table, folder / f"{name}{suffix}")
        else:
            (folder / f"{name}{suffix}").write_text(f"url,{caption_col}\nhttp://h/1.jpg,a cat\n")
    with pytest.raises(SourceError, match=rf"b{suffix}: columns url, alt_txt differ"):
        print(open_source(str(folder)).columns)
