"""`python -m streamcap.trainer.launch [TORCHRUN OPTIONS] [TRAINER OPTIONS]`: torchrun for the trainer,
with stop signals that mean what they say.

    python -m streamcap.trainer.launch --standalone --nproc-per-node 4 --tokenizer vocab.txt

Everything before the trainer's own options is torchrun's (see `torchrun --help`); the module it runs
is always `streamcap.trainer`. Plain torchrun answers a SIGTERM (`docker compose stop`) by raising
`SignalException` once the ranks are gone: a traceback and exit 1, so a clean stop looks like a crash
and `restart: on-failure` starts the run again. This launcher runs torchrun in its own session and
hands a SIGTERM or Ctrl-C to the ranks themselves: each one checkpoints and exits 0, torchrun sees
every rank succeed and exits 0, and so does the launcher. A launcher killed outright (SIGKILL) ends
the same way: torchrun (`trainer.torchrun`) gets its death as a signal that asks each rank to
checkpoint. A rank that fails still fails the launch: the exit code is torchrun's.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from streamcap.common.lifetime import die_with_parent
from streamcap.common.logs import setup_logging

log = logging.getLogger(__name__)

# torchrun's parent-death signal (trainer.torchrun): not among TORCHELASTIC_SIGNALS_TO_HANDLE,
# so torchrun lets its handler ask the ranks to checkpoint instead of tearing them down.
LAUNCHER_GONE = signal.SIGUSR2


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(torchrun's arguments, the trainer's): torchrun's end at the first option it does not know."""
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    known = {opt for action in parser._actions for opt in action.option_strings}
    takes_value = {opt for action in parser._actions if action.nargs != 0 for opt in action.option_strings}
    launcher: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        name = word.split("=", 1)[0]
        if name not in known:
            break
        launcher.append(word)
        if name in takes_value and "=" not in word and i + 1 < len(argv):
            launcher.append(argv[i + 1])
            i += 1
        i += 1
    return launcher, argv[i:]


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc): torchrun's ranks."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def main(argv: list[str] | None = None) -> int:
    setup_logging("launcher")
    launcher, trainer = split_args(list(sys.argv[1:] if argv is None else argv))
    command = [sys.executable, "-m", "streamcap.trainer.torchrun", *launcher, "-m", "streamcap.trainer", *trainer]
    # Its own session: a terminal's Ctrl-C reaches this process alone, and is passed on from here.
    # This process's death, even by SIGKILL, reaches torchrun as LAUNCHER_GONE: the ranks checkpoint.
    torchrun = subprocess.Popen(command, start_new_session=True, preexec_fn=lambda: die_with_parent(LAUNCHER_GONE))

    def pass_on(signum: int, frame: object) -> None:
        ranks = child_pids(torchrun.pid)
        log.info("%s: asking %d rank(s) to checkpoint and stop", signal.Signals(signum).name, len(ranks))
        for pid in ranks or [torchrun.pid]:  # no ranks yet: torchrun ends its rendezvous
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, pass_on)
    code = torchrun.wait()
    if code < 0:  # torchrun itself was killed by a signal
        code = 128 - code
    log.info("torchrun exited %d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
