"""Telling a part's failure from the environment's (streamcap.downloader.failures)."""

from __future__ import annotations

import errno
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamcap.downloader.failures import environment_failure
from streamcap.downloader.part import PoisonRow
from streamcap.downloader.sources import SourceError, SourceUnavailable, open_source


def _oserror(code: int, filename: str | None) -> OSError:
    return OSError(code, os.strerror(code), filename)


def test_a_full_disk_is_the_environment_wherever_it_happens(tmp_path):
    reason = environment_failure(_oserror(errno.ENOSPC, None), tmp_path)
    assert reason == "disk_full: No space left on device (shard dir)"
    assert environment_failure(_oserror(errno.EDQUOT, "/elsewhere/x"), tmp_path).startswith("disk_full: ")


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EPERM])
def test_a_shard_dir_that_cannot_be_written_is_the_environment(tmp_path, code):
    reason = environment_failure(_oserror(code, str(tmp_path / ".tmp~h~1~2~src-000000-0000.tar")), tmp_path)
    assert reason.startswith(f"shard dir not writable: {os.strerror(code)} (")
    # The same error on a file outside the shard dir is not the shard dir's.
    assert environment_failure(_oserror(code, "/somewhere/else"), tmp_path) is None


def test_a_missing_or_unreadable_source_is_the_environment_a_corrupt_one_is_the_parts(tmp_path):
    with pytest.raises(SourceUnavailable) as missing:
        open_source(str(tmp_path / "gone.parquet"))
    assert (
        environment_failure(missing.value, tmp_path)
        == f"source unreadable: {tmp_path}/gone.parquet: no such file or directory"
    )
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"url": ["http://a/1"], "caption": ["c"]}), good)
    (tmp_path / "cut.parquet").write_bytes(good.read_bytes()[:50])
    with pytest.raises(SourceError) as corrupt:
        open_source(str(tmp_path / "cut.parquet")).read_rows(["url"], 0, 1)
    assert not isinstance(corrupt.value, SourceUnavailable)
    assert environment_failure(corrupt.value, tmp_path) is None


def test_a_poison_row_and_an_ordinary_error_are_the_parts(tmp_path):
    assert environment_failure(PoisonRow(5, "http://a/5", "the image worker died"), tmp_path) is None
    assert environment_failure(ValueError("bad"), tmp_path) is None
    assert environment_failure(_oserror(errno.ECONNRESET, None), tmp_path) is None
