"""Processes that must not outlive the process that started them.

    die_with_parent()      # first thing in a torchrun rank, a DataLoader worker, a downloader worker

A rank whose launcher was SIGKILLed (the OOM killer, a lost SSH session) would otherwise keep
training, writing checkpoints and consuming fresh shards, and a `--resume` started meanwhile
would run a second incarnation on the same run directory and consumer names. A `--processes`
downloader worker would keep claiming parts with nobody left to stop it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> bool:
    """On Linux, have the kernel send `sig` to this process when its parent exits; False elsewhere.

    The signal comes when the parent *thread* that started this process exits, so call it only in
    processes started from their parent's main thread (torchrun's ranks, DataLoader workers,
    the downloader's `--processes` workers). `parent` is the pid the parent had when it started
    this process (os.getpid() there): one that died even before this call then counts too.
    """
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid() if parent is None else parent
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the parent died before the request was in place
        os.kill(os.getpid(), sig)
    return True
