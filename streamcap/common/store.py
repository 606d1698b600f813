"""Where shard files live: a local directory or an S3-compatible bucket, behind one small API.

    store = open_store("s3://bucket/prefix")      # or open_store(Path("shards"))
    store.put_file(Path("spool/relaion-000003-0000.tar"), "relaion-000003-0000.tar")
    info = store.get_file("relaion-000003-0000.tar", Path("cache/relaion-000003-0000.tar"))  # None: gone
    store.head(name), store.list(suffix=".tar"), store.list("sources/"), store.delete(name)
    store.move(name, "quarantine/" + name)
    store.read_bytes("x.stats.json"), store.write_bytes("sources/relaion.json", data)
    store.locate(name)      # how people name it: 'shards/x.tar' or 's3://bucket/prefix/x.tar'
    store.space()           # (free, total) bytes of a directory's filesystem; None for a bucket
    store.local_dir         # the directory (writers' temporary files, part locks); None for a bucket

Names are relative to the store's root ("sources/x.json" is below it); `list` without a
trailing-slash prefix lists only the root's own files, as the shard dir's `*.tar` glob does.

The S3 store takes its endpoint and credentials where every AWS tool does (boto3's chain):
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or
AWS_PROFILE and ~/.aws), AWS_REGION / AWS_DEFAULT_REGION; so AWS S3, R2, B2, GCS's interop
endpoint and SeaweedFS differ only in those variables (docs/operations.md). With a custom
endpoint it addresses buckets by path (what SeaweedFS and MinIO need, and R2/B2 accept).

Objects appear whole or not at all: a PUT, or a multipart upload's completion, makes the object
visible under its key in one step, so a reader never sees half a shard. `put_file` stores the
file's CRC32 in the object's metadata and `get_file` checks it (and the length) before the copy
takes its final local name: a torn download or a changed object is a StoreCorrupt, never a
silently different shard.

Why boto3 and not obstore (measured on SeaweedFS 4.48, 127.0.0.1, 2 shared cores, docs/
operations.md): obstore was about 1.5x faster on one stream (a 64 MiB GET 280 vs 170 MB/s,
PUT 90 vs 60 MB/s), but both are far above what a downloader produces or a trainer consumes,
while boto3 resolves credentials the standard way (profiles, SSO, instance roles, the
service-specific endpoint variable) and names its errors by S3 code, which is what tells a
missing object from a wrong key or a missing bucket here.

Failures: an object that is not there is None (or False); the environment failing (endpoint
unreachable or timing out, bucket missing, credentials refused, a 5xx) is StoreUnavailable
with one line saying which; the caller decides whether to wait or pause.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamcap.common.files import atomic_write_bytes, fsync_dir

S3_SCHEME = "s3://"
# AWS wants 3-63 characters; SeaweedFS and MinIO take shorter names, so only the alphabet is checked.
_URL = re.compile(r"^s3:/+([a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?)(?:/(.*))?$")
MULTIPART_BYTES = 64 * 2**20  # above this a file goes up in parts of this size, in parallel
_CHUNK = 1 << 20
CRC_META = "crc32"  # object metadata key (sent as x-amz-meta-crc32)


class StoreError(RuntimeError):
    """A store operation failed; the message is one line."""


class StoreUnavailable(StoreError):
    """The store itself failed (endpoint down, bucket missing, credentials refused): not the object's fault."""


class StoreCorrupt(StoreError):
    """An object's bytes do not match the length or checksum it was stored with."""


@dataclass(frozen=True)
class ObjectInfo:
    name: str  # relative to the store's root
    size: int
    mtime: float = 0.0
    crc32: int | None = None


def is_store_url(value: object) -> bool:
    """Does a --shard-dir value name a bucket rather than a directory? (Path("s3://b") reads "s3:/b".)"""
    return str(value).startswith("s3:/")


def store_url_problem(value: object) -> str | None:
    """None for a usable s3://bucket[/prefix] URL, else what was expected."""
    if _URL.match(str(value)):
        return None
    return "an S3 URL like s3://bucket/prefix (bucket: lowercase letters, digits, '.' or '-')"


def canonical_url(value: object) -> str:
    """'s3://bucket/prefix' from a URL that went through Path() ('s3:/bucket/prefix//' too)."""
    match = _URL.match(str(value))
    if not match:
        raise ValueError(f"not an S3 URL: {value!r}")
    prefix = "/".join(p for p in (match.group(2) or "").split("/") if p)
    return f"{S3_SCHEME}{match.group(1)}/{prefix}" if prefix else f"{S3_SCHEME}{match.group(1)}"


def file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


class ShardStore:
    """What the pipeline does with shard files, wherever they live. See the module docstring."""

    url: str  # how people name it: a directory path or s3://bucket/prefix
    remote: bool = False

    def put_file(self, local: Path, name: str) -> ObjectInfo:
        raise NotImplementedError

    def get_file(self, name: str, dest: Path) -> ObjectInfo | None:
        raise NotImplementedError

    def head(self, name: str) -> ObjectInfo | None:
        raise NotImplementedError

    def list(self, prefix: str = "", suffix: str = "") -> list[ObjectInfo]:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def move(self, name: str, new_name: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes | None:
        raise NotImplementedError

    def write_bytes(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    @contextmanager
    def local_copy(self, name: str, scratch: Path | None = None) -> Iterator[Path | None]:
        """A local file with the object's bytes for the body of the `with` (None: no such object)."""
        raise NotImplementedError
        yield  # pragma: no cover

    @property
    def local_dir(self) -> Path | None:
        """The directory itself, where writers keep temporary files and part locks beside the
        shards; None for a bucket (those stay on each writer's own disk)."""
        return None

    def space(self) -> tuple[int, int] | None:
        """(free, total) bytes where the shards live; None when that has no fixed size (a bucket)."""
        return None

    def locate(self, name: str) -> str:
        """The name people use for an object: a path, or its URL."""
        return f"{self.url}/{name}"

    def __str__(self) -> str:
        return self.url


class LocalStore(ShardStore):
    """A directory: what every worker mounted before buckets (a shared volume in compose)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(root)

    def _path(self, name: str) -> Path:
        return self.root / name

    @property
    def local_dir(self) -> Path | None:
        return self.root

    def space(self) -> tuple[int, int] | None:
        path = self.root
        while not path.exists() and path != path.parent:  # a shard dir not made yet: its disk
            path = path.parent
        usage = shutil.disk_usage(path)
        return usage.free, usage.total

    def locate(self, name: str) -> str:
        return os.path.normpath(self._path(name))  # "shards/../quarantine/x.tar" reads "quarantine/x.tar"

    def put_file(self, local: Path, name: str) -> ObjectInfo:
        target = self._path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(local).resolve() != target.resolve():
            tmp = target.with_name(f".put~{os.getpid()}~{threading.get_ident()}~{target.name}")
            shutil.copyfile(local, tmp)
            os.replace(tmp, target)
            fsync_dir(target.parent)
        return ObjectInfo(name, target.stat().st_size, target.stat().st_mtime, file_crc32(target))

    def get_file(self, name: str, dest: Path) -> ObjectInfo | None:
        source = self._path(name)
        dest = Path(dest)
        tmp = dest.with_name(f".get~{os.getpid()}~{threading.get_ident()}~{dest.name}")
        try:
            shutil.copyfile(source, tmp)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            return None
        os.replace(tmp, dest)
        return ObjectInfo(name, dest.stat().st_size, dest.stat().st_mtime)

    def head(self, name: str) -> ObjectInfo | None:
        try:
            st = self._path(name).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(name, st.st_size, st.st_mtime)

    def list(self, prefix: str = "", suffix: str = "") -> list[ObjectInfo]:
        folder, _, start = prefix.rpartition("/")
        base = self.root / folder if folder else self.root
        found = []
        try:
            entries = list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return []
        for entry in entries:
            # Dot files are writers' temporary files and locks: never part of a listing.
            if entry.name.startswith(".") or not entry.name.startswith(start) or not entry.name.endswith(suffix):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            found.append(ObjectInfo(f"{folder}/{entry.name}" if folder else entry.name, st.st_size, st.st_mtime))
        return sorted(found, key=lambda i: i.name)

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def move(self, name: str, new_name: str) -> bool:
        target = self._path(new_name)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.move(str(self._path(name)), target)
        except FileNotFoundError:
            return False
        return True

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None

    def write_bytes(self, name: str, data: bytes) -> None:
        target = self._path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(
            target, data, temp=target.with_name(f".w~{os.getpid()}~{threading.get_ident()}~{target.name}")
        )

    @contextmanager
    def local_copy(self, name: str, scratch: Path | None = None) -> Iterator[Path | None]:
        path = self._path(name)
        yield path if path.is_file() else None


class S3Store(ShardStore):
    """A bucket (and key prefix) of an S3-compatible service. See the module docstring."""

    remote = True

    def __init__(self, url: str, *, connect_timeout: float = 5.0, read_timeout: float = 30.0, attempts: int = 3):
        self.url = canonical_url(url)
        bucket, _, prefix = self.url[len(S3_SCHEME) :].partition("/")
        self.bucket, self.prefix = bucket, (prefix + "/" if prefix else "")
        self._timeouts = (connect_timeout, read_timeout, attempts)
        self._client: Any = None
        self._pid = 0
        self._lock = threading.Lock()

    # --- the client: made lazily, once per process (a forked loader worker makes its own) ---------

    @property
    def client(self) -> Any:
        if self._client is None or self._pid != os.getpid():
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    self._client, self._pid = _make_client(*self._timeouts), os.getpid()
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"], state["_pid"], state["_lock"] = None, 0, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _key(self, name: str) -> str:
        return self.prefix + name

    # --- operations ---------------------------------------------------------------------------

    def put_file(self, local: Path, name: str) -> ObjectInfo:
        from boto3.s3.transfer import TransferConfig

        crc, size = file_crc32(local), Path(local).stat().st_size
        config = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES)
        extra = {"Metadata": {CRC_META: str(crc)}}
        self._call(
            f"upload {name}",
            lambda: self.client.upload_file(str(local), self.bucket, self._key(name), ExtraArgs=extra, Config=config),
        )
        return ObjectInfo(name, size, time.time(), crc)

    def get_file(self, name: str, dest: Path) -> ObjectInfo | None:
        dest = Path(dest)
        tmp = dest.with_name(f".get~{os.getpid()}~{threading.get_ident()}~{dest.name}")
        try:
            reply = self._call(
                f"download {name}", lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(name))
            )
            if reply is None:
                return None
            expected = _crc_of(reply.get("Metadata"))
            crc, size = 0, 0
            body = reply["Body"]
            try:
                with open(tmp, "wb") as f:
                    for chunk in body.iter_chunks(_CHUNK):
                        crc = zlib.crc32(chunk, crc)
                        size += len(chunk)
                        f.write(chunk)
            except Exception as e:  # a connection lost mid-body: the store's fault, not the object's
                raise StoreUnavailable(f"download of {name} from {self.url} broke off: {_one_line(e)}") from None
            finally:
                body.close()
            if size != reply.get("ContentLength", size) or (expected is not None and crc != expected):
                raise StoreCorrupt(
                    f"{self.url}/{name}: {size} bytes with CRC32 {crc}, stored as "
                    f"{reply.get('ContentLength')} bytes with CRC32 {expected}"
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return ObjectInfo(name, size, time.time(), crc)

    def head(self, name: str) -> ObjectInfo | None:
        reply = self._call(f"look up {name}", lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(name)))
        if reply is None:
            return None
        mtime = reply["LastModified"].timestamp() if reply.get("LastModified") else 0.0
        return ObjectInfo(name, int(reply["ContentLength"]), mtime, _crc_of(reply.get("Metadata")))

    def list(self, prefix: str = "", suffix: str = "") -> list[ObjectInfo]:
        folder = prefix.rpartition("/")[0]
        found = []

        def pages() -> list[dict]:
            paginator = self.client.get_paginator("list_objects_v2")
            # The delimiter keeps the listing to one level, like the directory's glob.
            return list(paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix), Delimiter="/"))

        for page in self._call(f"list {prefix or 'the shards'}", pages) or []:
            for obj in page.get("Contents", []):
                name = obj["Key"][len(self.prefix) :]
                base = name.rpartition("/")[2]
                # (SeaweedFS lists an emptied folder as a key ending in "/": no file)
                if not base or name.rpartition("/")[0] != folder or base.startswith(".") or not name.endswith(suffix):
                    continue
                found.append(ObjectInfo(name, int(obj["Size"]), obj["LastModified"].timestamp()))
        return sorted(found, key=lambda i: i.name)

    def delete(self, name: str) -> None:
        self._call(f"delete {name}", lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(name)))

    def move(self, name: str, new_name: str) -> bool:
        source = {"Bucket": self.bucket, "Key": self._key(name)}
        copied = self._call(
            f"copy {name} to {new_name}",
            lambda: self.client.copy_object(
                Bucket=self.bucket, Key=self._key(new_name), CopySource=source, MetadataDirective="COPY"
            ),
        )
        if copied is None:
            return False
        self.delete(name)
        return True

    def read_bytes(self, name: str) -> bytes | None:
        reply = self._call(f"read {name}", lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(name)))
        if reply is None:
            return None
        try:
            return reply["Body"].read()
        except Exception as e:
            raise StoreUnavailable(f"read of {name} from {self.url} broke off: {_one_line(e)}") from None

    def write_bytes(self, name: str, data: bytes) -> None:
        meta = {CRC_META: str(zlib.crc32(data))}
        self._call(
            f"write {name}",
            lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data, Metadata=meta),
        )

    @contextmanager
    def local_copy(self, name: str, scratch: Path | None = None) -> Iterator[Path | None]:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="streamcap-s3-", dir=scratch) as tmp:
            yield self.get_file(name, Path(tmp) / Path(name).name) and Path(tmp) / Path(name).name

    def check_access(self) -> None:
        """StoreUnavailable unless the bucket answers with these credentials (a start-up check)."""
        if self._call("reach the bucket", lambda: self.client.head_bucket(Bucket=self.bucket)) is None:
            raise StoreUnavailable(f"{self.url}: bucket {self.bucket!r} does not exist ({self.endpoint})")

    @property
    def endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    def _call(self, what: str, fn):
        """`fn()`; None when the object is not there; StoreUnavailable when the store failed."""
        from botocore import exceptions as bx

        try:
            return fn()
        except (bx.BotoCoreError, bx.ClientError, OSError, Exception) as e:
            # boto3's transfer manager wraps a refused upload's ClientError in its own exception
            inner = e if isinstance(e, bx.ClientError) else (e.__cause__ or e.__context__)
            if isinstance(inner, bx.ClientError):
                code = str(inner.response.get("Error", {}).get("Code", ""))
                status = int(inner.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
                if code in ("NoSuchKey", "NotFound", "404") or (status == 404 and code != "NoSuchBucket"):
                    return None
                raise StoreUnavailable(self._why(what, code, status, inner)) from None
            if isinstance(e, (bx.BotoCoreError, OSError)) or type(e).__name__ == "S3UploadFailedError":
                # no connection, timeouts, no credentials at all
                raise StoreUnavailable(f"cannot {what} in {self.url}: {_one_line(e)}") from None
            raise

    def _why(self, what: str, code: str, status: int, e: Exception) -> str:
        if code == "NoSuchBucket":
            return f"cannot {what}: bucket {self.bucket!r} does not exist at {self.endpoint} (create it, or fix --shard-dir)"
        if (
            code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "403")
            or status == 403
        ):
            return (
                f"cannot {what} in {self.url}: the credentials were refused ({code or status}); "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            )
        return f"cannot {what} in {self.url}: {code or status}: {_one_line(e)}"


def _make_client(connect_timeout: float, read_timeout: float, attempts: int) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    scoped = session._session.get_scoped_config()  # the profile's settings (~/.aws/config)
    custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or scoped.get("endpoint_url")
    s3_options = {"addressing_style": "path"} if custom else {}
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"max_attempts": attempts, "mode": "standard"},
        s3=s3_options,
        max_pool_connections=32,
        # Checksums only when S3 requires them: R2, B2 and SeaweedFS reject some of the new defaults.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.client("s3", config=config)


def _crc_of(meta: dict | None) -> int | None:
    value = (meta or {}).get(CRC_META)
    return int(value) if value and str(value).isdigit() else None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def open_store(location: ShardStore | Path | str) -> ShardStore:
    """The store a --shard-dir value names (a store passes through: callers that use one often
    keep it, since each S3 store makes its own client, ~50 ms)."""
    if isinstance(location, ShardStore):
        return location
    if is_store_url(location):
        return S3Store(str(location))
    return LocalStore(Path(location))
