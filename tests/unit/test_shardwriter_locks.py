"""The part lock: exclusive between processes and threads, gone once released, bounded waits."""

from __future__ import annotations

import os
import threading
import time

import pytest

from streamcap.shardwriter.locks import PartLockBusy, lock_path, part_lock


def test_a_second_holder_waits_for_the_first_and_the_lock_file_goes_with_the_last(tmp_path):
    order: list[str] = []
    first_in = threading.Event()

    def second() -> None:
        first_in.wait()
        with part_lock(tmp_path, "src", 3):
            order.append("second")

    waiter = threading.Thread(target=second)
    waiter.start()
    with part_lock(tmp_path, "src", 3):
        first_in.set()
        time.sleep(0.3)  # the waiter polls meanwhile; it must not get in
        order.append("first")
    waiter.join(10)
    assert order == ["first", "second"]
    assert not lock_path(tmp_path, "src", 3).exists()


def test_other_parts_are_not_held_up(tmp_path):
    with part_lock(tmp_path, "src", 3), part_lock(tmp_path, "src", 4, timeout_s=0):
        pass


def test_a_wait_past_the_timeout_fails_naming_the_holder(tmp_path, caplog):
    with part_lock(tmp_path, "src", 3):
        with pytest.raises(PartLockBusy, match=rf"part src:3: its files are locked by pid {os.getpid()} on "):
            with part_lock(tmp_path, "src", 3, timeout_s=0.2):
                pass
    assert f"part src:3: waiting for pid {os.getpid()} on " in caplog.text


def test_a_lock_file_left_by_a_killed_holder_does_not_block(tmp_path):
    lock_path(tmp_path, "src", 3).write_text("pid 1 on elsewhere")  # no flock on it: its holder died
    with part_lock(tmp_path, "src", 3, timeout_s=0):
        pass
    assert not lock_path(tmp_path, "src", 3).exists()
