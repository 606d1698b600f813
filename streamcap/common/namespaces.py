"""Which namespace a shard location belongs to, so that namespaces sharing a Redis server and a
folder never read, audit or reconcile each other's shards.

    claim(location, "exp2")          # enqueue, download, reconcile: mark the location on first use
    check(location, "exp2")          # every command with --shard-dir: ConfigError if another owns it

A location's owner is written in its marker, `.streamcap-namespace` (one line: the namespace),
in the directory or at the bucket prefix's root. A dot file, so no shard listing, glob or gc
count ever sees it. A location without a marker (made before markers, or only read so far) has
no owner yet: every namespace may use it, and the first that writes into it claims it.

Without --shard-dir, a namespace other than the default one uses `shards-<namespace>`
(`streamcap.common.settings.default_shard_dir`), a sibling of `shards`, not a folder inside it: nothing of
the default namespace (gc's disk count, `shards verify` of the directory, a bucket listing
under its prefix) can then see another namespace's files, and no namespace name (`quarantine`,
`sources`, `..`) can land on a folder the shard tools use or climb out of the parent.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

from streamcap.common.settings import ConfigError, default_shard_dir
from streamcap.common.store import ShardStore, StoreUnavailable, is_store_url, open_store

MARKER = ".streamcap-namespace"
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK}


def owner(location: ShardStore | Path | str) -> str | None:
    """The namespace in the location's marker; None without one, or while the bucket is
    unreachable (the command that needs it then says so itself)."""
    try:
        raw = open_store(location).read_bytes(MARKER)
    except (StoreUnavailable, NotADirectoryError, PermissionError):
        return None
    if raw is None:
        return None
    return raw.decode(errors="replace").strip() or None


def check(location: ShardStore | Path | str, namespace: str) -> None:
    """Raise a one-line ConfigError if another namespace owns the location."""
    found = owner(location)
    if found is not None and found != namespace:
        raise ConfigError(_refusal(location, found, namespace))


def claim(location: ShardStore | Path | str, namespace: str) -> None:
    """`check`, then write the marker if the location has none yet. A location that cannot be
    written now (a read-only mount, a bucket out of reach) stays unclaimed: the writers report
    that themselves, and the next writer claims it."""
    check(location, namespace)
    store = open_store(location)
    data = f"{namespace}\n".encode()
    try:
        if store.remote:
            if store.read_bytes(MARKER) is None:
                store.write_bytes(MARKER, data)
        else:
            _create_once(Path(str(location)), data)
    except (StoreUnavailable, OSError):
        return
    check(location, namespace)  # two first writers at once: the one that lost refuses here


def _create_once(directory: Path, data: bytes) -> None:
    """Write the marker unless it exists, atomically: linking a complete temporary file either
    makes the marker whole or fails because another writer's is there."""
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / MARKER
    if marker.exists():
        return
    temp = directory / f".tmp-marker~{os.getpid()}~{secrets.token_hex(4)}"
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(temp, marker)
    except FileExistsError:
        pass
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        if not marker.exists():  # a file system without hard links: a narrower race than none
            os.replace(temp, marker)
    finally:
        temp.unlink(missing_ok=True)


def _refusal(location: ShardStore | Path | str, found: str, namespace: str) -> str:
    where = str(location)
    own = default_shard_dir(namespace)
    leave_out = "" if is_store_url(where) or Path(where) == own else f"leave --shard-dir out to use {own}, or "
    return (
        f"--shard-dir / STREAMCAP_SHARD_DIR: {where} belongs to namespace {found!r} (its {MARKER} says so), "
        f"not to --namespace {namespace!r}; each namespace needs its own shard dir: "
        f"{leave_out}pass --namespace {found} to work on that one"
    )
