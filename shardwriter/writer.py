"""The rolling part writer: one part's samples into deterministic, atomically finalized shards.

    claim = PartClaim(r, keys, entry_id, consumer)           # optional, but what a worker passes
    with PartWriter(shard_dir, part, max_samples=1000, max_bytes=256 << 20, owner=consumer, claim=claim) as w:
        w.add(row=17_003, image=jpeg, image_ext="jpg", caption="a dog", meta={"url": ...})
        w.fail(17_004, "http://...", "timeout")
        stats = w.finish(bytes_downloaded=123_456)          # shards + stats file on disk
    commit_part(r, keys, stats, entry_id, consumer=consumer)

Shards are named `shard_name(source, part, seq)`: a redelivered part overwrites its own files
instead of adding new ones. Each shard is written under an owner-stamped temporary name
(`tempfiles`); `finish` fsyncs them and, holding the part's lock (`locks`), renames them once
the claim is confirmed; then the directory is fsynced and the stats file written atomically.
Invariant: a stats file on disk always describes the shard files on disk (a new attempt
deletes it before touching any shard), which is what `streamcap shards reconcile` relies on.

Tars are written with the standard library's `tarfile` headers, as webdataset's TarWriter
does, without importing webdataset (it imports torch, ~3 s per downloader process).
"""

from __future__ import annotations

import json
import os
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from streamcap.formats.records import FAILURE_REASONS, FailedRow, PartRecord, PartStats, ShardRecord
from streamcap.formats.shards import IMAGE_EXTS, SHARD_SUFFIX, part_prefix, sample_key, shard_name, stats_name
from streamcap.shardwriter import faults, tempfiles
from streamcap.shardwriter.commit import CONFIRMED, PartClaim, confirm_claim
from streamcap.shardwriter.locks import part_lock
from streamcap.shardwriter.registry import read_part_stats

_BLOCK = tarfile.BLOCKSIZE
_END_OF_ARCHIVE = b"\0" * (2 * _BLOCK)


class PartSuperseded(RuntimeError):
    """The part was committed or reclaimed by another worker; this attempt's output was dropped."""

    def __init__(self, part_id: str, status: str) -> None:
        self.part_id, self.status = part_id, status
        super().__init__(f"part {part_id}: {status}; another worker owns it, this attempt's shards were discarded")


def _member_size(n: int) -> int:
    return _BLOCK + (n + _BLOCK - 1) // _BLOCK * _BLOCK


@dataclass
class _Shard:
    seq: int
    temp: Path
    file: BinaryIO | None
    samples: int = 0
    bytes: int = 0
    first_row: int = -1
    last_row: int = -1


class PartWriter:
    """Writes one part's samples into rolling shards in shard_dir. Context manager (abort on exception)."""

    def __init__(
        self,
        shard_dir: Path,
        part: PartRecord,
        *,
        max_samples: int,
        max_bytes: int,
        owner: str,
        claim: PartClaim | None = None,
        fsync: bool = True,
        temp_stale_s: float = 3600.0,
    ) -> None:
        if max_samples < 1 or max_bytes < 1:
            raise ValueError("max_samples and max_bytes must be >= 1")
        self.shard_dir = Path(shard_dir)
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.part, self.owner, self.claim = part, owner, claim
        self.max_samples, self.max_bytes, self.fsync = max_samples, max_bytes, fsync
        self.temp_stale_s = temp_stale_s
        self._mtime = int(time.time())
        self._seen: set[int] = set()
        self._failures: list[FailedRow] = []
        self._shards: list[_Shard] = []
        self._open: _Shard | None = None
        self._done = False
        self._sweep_crashed_attempts()

    def _sweep_crashed_attempts(self) -> None:
        """Temporary files of this part left by writers that are gone (a crashed earlier attempt)."""
        prefix = part_prefix(self.part.source, self.part.part)
        for path in tempfiles.temp_files(self.shard_dir):
            parsed = tempfiles.parse_temp_name(path.name)
            ours = parsed is not None and parsed[1].startswith((prefix + "-", prefix + "."))
            if ours and tempfiles.owner_gone(path, self.temp_stale_s):
                path.unlink(missing_ok=True)

    # --- samples and failures --------------------------------------------------------------------

    def add(self, *, row: int, image: bytes, image_ext: str, caption: str, meta: dict) -> None:
        """Append one sample (rows may arrive in any order; each row at most once)."""
        self._claim_row(row)
        if image_ext not in IMAGE_EXTS:
            raise ValueError(f"image_ext must be one of {IMAGE_EXTS}, got {image_ext!r}")
        key = sample_key(self.part.source, row)
        text = caption.encode("utf-8")
        # The stored image's checksum lets `shards verify` catch flipped bytes a JPEG decoder
        # would decode without complaint.
        meta = {**meta, "source": self.part.source, "row": row, "caption": caption, "image_crc32": zlib.crc32(image)}
        meta_bytes = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        members = ((f"{key}.{image_ext}", image), (f"{key}.txt", text), (f"{key}.json", meta_bytes))
        size = sum(_member_size(len(data)) for _, data in members)
        shard = self._open
        if shard is not None and (
            shard.samples >= self.max_samples or shard.bytes + size + len(_END_OF_ARCHIVE) > self.max_bytes
        ):
            self._close(shard)
            shard = None
        if shard is None:
            shard = self._open = self._new_shard()
        for name, data in members:
            self._write_member(shard.file, name, data)
        shard.samples += 1
        shard.bytes += size
        shard.first_row = row if shard.first_row < 0 else min(shard.first_row, row)
        shard.last_row = max(shard.last_row, row)

    def fail(self, row: int, url: str, reason: str, detail: str = "") -> None:
        """Record that `row` became no sample, and why (reason in records.FAILURE_REASONS)."""
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {reason!r}; expected one of {', '.join(FAILURE_REASONS)}")
        self._claim_row(row)
        self._failures.append(FailedRow(row=row, url=url, reason=reason, detail=detail[:500]))

    def _claim_row(self, row: int) -> None:
        if self._done:
            raise RuntimeError(f"part {self.part.part_id}: writer already finished or aborted")
        if not self.part.start <= row < self.part.end:
            raise ValueError(f"row {row} is outside part {self.part.part_id} [{self.part.start}, {self.part.end})")
        if row in self._seen:
            raise ValueError(f"row {row} of part {self.part.part_id} was already added or failed")
        self._seen.add(row)

    # --- tar writing -------------------------------------------------------------------------------

    def _new_shard(self) -> _Shard:
        seq = self.part.seq0 + len(self._shards)  # a retry part's shards follow the part's own
        temp = tempfiles.temp_path(self.shard_dir, shard_name(self.part.source, self.part.part, seq))
        shard = _Shard(seq=seq, temp=temp, file=open(temp, "wb", buffering=1 << 20))
        self._shards.append(shard)
        return shard

    def _write_member(self, f: BinaryIO, name: str, data: bytes) -> None:
        faults.maybe_disk_full(self.part.part_id, str(self.shard_dir))
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), self._mtime, 0o444
        f.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        f.write(data)
        pad = -len(data) % _BLOCK
        if pad:
            f.write(b"\0" * pad)

    def _close(self, shard: _Shard) -> None:
        """End the tar and flush it. The file stays open: `finish` fsyncs it, off the caller's
        event loop when the caller runs `finish` in a thread."""
        if self._open is shard:
            self._open = None
        if shard.file is None or shard.file.closed:
            return
        shard.file.write(_END_OF_ARCHIVE)
        shard.file.flush()
        shard.bytes = shard.file.tell()

    def _sync_all(self) -> None:
        for shard in self._shards:
            if shard.file is not None:
                if self.fsync:
                    os.fsync(shard.file.fileno())
                shard.file.close()
                shard.file = None

    # --- finalize ----------------------------------------------------------------------------------

    def finish(self, bytes_downloaded: int = 0) -> PartStats:
        """Finalize every shard (tmp -> fsync -> rename -> fsync dir), then write the stats file.

        With a claim, raises PartSuperseded (after removing this attempt's files) when another
        worker committed or reclaimed the part: the winner's files are never touched.
        """
        if self._done:
            raise RuntimeError(f"part {self.part.part_id}: writer already finished or aborted")
        if self._open is not None:
            self._close(self._open)
        faults.maybe_crash("after_temp_write", self.part.part_id)
        self._sync_all()
        faults.maybe_crash("after_fsync", self.part.part_id)
        stats = PartStats(
            source=self.part.source,
            part=self.part.part,
            start=self.part.start,
            end=self.part.end,
            samples=sum(s.samples for s in self._shards),
            bytes_downloaded=bytes_downloaded,
            failures=sorted(self._failures, key=lambda f: f.row),
            shards=[self._record(s) for s in self._shards],
        )
        # Under the part's lock, one confirmed claim covers every rename: a worker that reclaims
        # the part meanwhile renames only after we are done, over our files.
        with part_lock(self.shard_dir, self.part.source, self.part.part):
            self._ensure_claim()
            faults.maybe_crash("before_rename", self.part.part_id)
            stats_path = self.shard_dir / stats_name(self.part.source, self.part.part)
            if self.part.retry:
                stats = self._merge_retry(stats_path, stats)
            # An older attempt's stats file goes first, so no stats file ever describes a mix of attempts.
            elif stats_path.exists():
                tempfiles.remove_durably([stats_path], self.shard_dir)
            for shard in self._shards:
                tempfiles.publish(
                    shard.temp, self.shard_dir / shard_name(self.part.source, self.part.part, shard.seq), sync_dir=False
                )
            self._remove_stale_shards(self.part.seq0 + len(self._shards))
            tempfiles.fsync_dir(self.shard_dir)
            faults.maybe_crash("after_rename", self.part.part_id)
            record = stats.to_json() | {"owner": self.owner, "finished": time.time()}
            tempfiles.write_json_atomic(stats_path, record, compact=True)
        self._done = True
        return stats

    def _merge_retry(self, stats_path: Path, work: PartStats) -> PartStats:
        """A retry part's outcome merged into its committed part's stats (under the part's lock).

        The part's own shards stay as they are, so its stats file keeps describing the disk until
        the merged one replaces it; an earlier uncommitted attempt of this retry is undone first.
        """
        base = read_part_stats(stats_path)
        if base is None:
            raise RuntimeError(f"part {self.part.part_id} has no stats file in {self.shard_dir}: nothing to retry into")
        if self.part.retry in base.retries:
            base = base.without_retry(self.part.retry)
            tempfiles.write_json_atomic(stats_path, base.to_json() | {"owner": self.owner}, compact=True)
        return base.with_retry(self.part.retry, work, list(self.part.row_list), self.part.seq0, self.part.drop)

    def _record(self, shard: _Shard) -> ShardRecord:
        return ShardRecord(
            name=shard_name(self.part.source, self.part.part, shard.seq),
            source=self.part.source,
            part=self.part.part,
            seq=shard.seq,
            samples=shard.samples,
            bytes=shard.bytes,
            first_row=shard.first_row,
            last_row=shard.last_row,
        )

    def _ensure_claim(self) -> None:
        if self.claim is None:
            return
        status = confirm_claim(self.claim, self.part.done_id)
        if status != CONFIRMED:
            self.abort()
            raise PartSuperseded(self.part.part_id, status)

    def _remove_stale_shards(self, keep: int) -> None:
        """Shards of an earlier attempt with a higher sequence than this one wrote."""
        prefix = part_prefix(self.part.source, self.part.part) + "-"
        for path in self.shard_dir.glob(f"{prefix}*{SHARD_SUFFIX}"):
            seq = path.name[len(prefix) : -len(SHARD_SUFFIX)]
            if seq.isdigit() and int(seq) >= keep:
                path.unlink(missing_ok=True)

    def abort(self) -> None:
        """Close and remove this writer's temporary files; finalized files stay. Never raises
        for a file it cannot close: on a full disk, closing flushes the buffer and fails
        with ENOSPC again, and the temporary file (the disk's last free bytes) must go anyway."""
        self._done = True
        self._open = None
        for shard in self._shards:
            if shard.file is not None:
                try:
                    shard.file.close()  # a failed flush still closes the descriptor
                except OSError:
                    pass
                shard.file = None
            try:
                shard.temp.unlink(missing_ok=True)
            except OSError:  # the directory turned read-only: the sweeper removes it later
                pass

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._done or exc[0] is not None:
            self.abort()
