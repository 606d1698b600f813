"""What a W&B run's local transaction logs (`<dir>/wandb/*-<id>/run-<id>.wandb`) hold.

    history_steps(path)                  # [1, 2, ..., 43]: the steps a .wandb file committed
    last_logged_step(wandb_dir, run_id)  # 43: the highest step of every earlier file of the run

W&B writes every run, online or offline, to a local `.wandb` file first: a LevelDB-style log
(a 7-byte header, then 32 KiB blocks of records, each a CRC32, a length, a type and a piece of a
serialized `wandb.proto` Record). An offline run that is resumed cannot ask a server which steps
it already has (wandb ignores `resume` offline: `resumed=False, starting_step=0`), so the sink
reads them here. A file cut short by a crash ends at its last whole, checksummed record.
"""

from __future__ import annotations

import glob
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

MAGIC = b":W&B"
HEADER = 7  # ":W&B", a 2-byte magic number, a version byte
BLOCK = 32 * 1024
RECORD_HEADER = 7  # CRC32 of type + data, 2-byte length, 1-byte type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[bytes]:
    """The serialized Records of a .wandb file, up to the first torn or corrupt one."""
    data = path.read_bytes()
    if data[:4] != MAGIC:
        return
    pos, pieces = HEADER, b""
    while pos + RECORD_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD_HEADER:  # a block's tail too short for a record header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + RECORD_HEADER])
        body = data[pos + RECORD_HEADER : pos + RECORD_HEADER + length]
        if kind == 0 and length == 0:  # zero padding up to the block's end
            pos += left
            continue
        if len(body) < length or zlib.crc32(bytes([kind]) + body) != crc:
            return  # the crash's torn write: everything before it is whole
        pos += RECORD_HEADER + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            pieces = body
        elif kind == MIDDLE:
            pieces += body
        elif kind == LAST:
            yield pieces + body


def history_steps(path: Path) -> list[int]:
    """The steps of the history rows committed to a .wandb file, in file order."""
    from wandb.proto import wandb_internal_pb2

    steps = []
    for raw in records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            steps.append(int(record.history.step.num))
    return steps


def run_files(wandb_dir: Path, run_id: str) -> list[Path]:
    """The .wandb files of one run id (one per start of it), oldest first."""
    found = wandb_dir.glob(f"*-{glob.escape(run_id)}/run-{glob.escape(run_id)}.wandb")
    return sorted(found, key=lambda p: (re.findall(r"\d{8}_\d{6}", p.parent.name) or [""])[0])


def last_logged_step(wandb_dir: Path, run_id: str) -> int:
    """The highest step any local file of the run holds; -1 when none holds a step."""
    return max((step for path in run_files(wandb_dir, run_id) for step in history_steps(path)), default=-1)
