"""torchrun as the launcher (`trainer.launch`) starts it: the launcher's death, however it comes
(SIGKILL, the OOM killer, a closed terminal), asks each rank to checkpoint and stop.

    python -m streamcap.trainer.torchrun [TORCHRUN OPTIONS] -m streamcap.trainer [TRAINER OPTIONS]

Plain torchrun gets the launcher's death as a parent-death SIGTERM: it raises `SignalException`
and SIGTERMs each rank's whole process group, so the ranks' DataLoader workers die under them
(`DataLoader worker ... killed by signal` tracebacks, no checkpoint) and torchrun ends with a
traceback of its own. Here the parent-death signal is LAUNCHER_GONE instead, which torchrun does
not handle: each rank alone gets the SIGTERM a `docker compose stop` gives it (checkpoint, exit
0), and torchrun, seeing every rank succeed, exits 0.
"""

from __future__ import annotations

import os
import signal
import sys

from streamcap.trainer.launch import LAUNCHER_GONE, child_pids


def _ask_ranks_to_stop(signum: int, frame: object) -> None:
    ranks = child_pids(os.getpid())
    for pid in ranks:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if not ranks:  # still in rendezvous: nothing to checkpoint, and no rank may start orphaned
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    signal.signal(LAUNCHER_GONE, _ask_ranks_to_stop)
    from torch.distributed.run import main as torchrun

    sys.argv[0] = "torchrun"
    torchrun()


if __name__ == "__main__":
    main()
