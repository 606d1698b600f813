"""Durable files: the new content lands whole, and a failed write leaves the old file and no temporary file."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from streamcap.common import files
from streamcap.common.files import atomic_write_bytes, atomic_write_text, atomic_writer


def test_writes_the_content_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "vocab.txt"
    atomic_write_text(target, "[PAD]\nhello\n")
    atomic_write_bytes(tmp_path / "blob.bin", b"\x00\x01")
    with atomic_writer(tmp_path / "stream.bin") as f:
        f.write(b"one ")
        f.write(b"two")
    assert target.read_bytes() == b"[PAD]\nhello\n"
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "stream.bin").read_bytes() == b"one two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin", "stream.bin", "vocab.txt"]


def test_replaces_an_existing_file(tmp_path):
    target = tmp_path / "latest.json"
    target.write_text("old")
    with atomic_writer(target, "w", newline="\n") as f:
        f.write("new\n")
    assert target.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["latest.json"]


@pytest.mark.parametrize("error", [RuntimeError("half-way"), KeyboardInterrupt()])
def test_an_error_mid_write_leaves_the_target_and_no_temp_file(tmp_path, error):
    target = tmp_path / "step-1.pt"
    target.write_bytes(b"old checkpoint")
    with pytest.raises(type(error)):
        with atomic_writer(target) as f:
            f.write(b"new but incomplete")
            raise error
    assert target.read_bytes() == b"old checkpoint"
    assert os.listdir(tmp_path) == ["step-1.pt"]


def test_a_full_disk_at_fsync_leaves_the_target_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "scores.json"
    target.write_text("{}")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError) as e:
        atomic_write_text(target, '{"CIDEr": 1.0}')
    assert e.value.errno == errno.ENOSPC
    assert target.read_text() == "{}"
    assert os.listdir(tmp_path) == ["scores.json"]


def test_a_failing_close_leaves_no_temp_file(tmp_path, monkeypatch):
    """close() is where a network file system reports a full disk for data already "written"."""
    target = tmp_path / "loss.png"
    with pytest.raises(OSError) as e:
        with atomic_writer(target) as f:
            f.write(b"data")
            real_close = f.close

            def close_on_full_disk() -> None:
                real_close()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(f, "close", close_on_full_disk)
    assert e.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_a_missing_directory_is_an_error_not_a_leftover(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "missing" / "x.json", b"{}")
    assert os.listdir(tmp_path) == []


def test_permissions_follow_the_umask_unless_given(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "shared.json", b"{}")
        atomic_write_bytes(tmp_path / "private.pt", b"x", perms=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.pt").stat().st_mode) == 0o600


def test_a_named_temp_file_is_used_and_removed_on_error(tmp_path):
    target, temp = tmp_path / "source.json", tmp_path / ".tmp~owner~source.json"
    atomic_write_bytes(target, b"{}", temp=temp)
    assert target.read_bytes() == b"{}" and not temp.exists()
    with pytest.raises(ValueError):
        with atomic_writer(target, temp=temp) as f:
            f.write(b"partial")
            assert temp.exists()
            raise ValueError("bad row")
    assert os.listdir(tmp_path) == ["source.json"]


def test_only_whole_file_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_writer(tmp_path / "x", "ab"):
            pass
    assert os.listdir(tmp_path) == []
