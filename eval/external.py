"""METEOR and SPICE: only through pycocoevalcap's Java scorers, and only where they can run.

    result = java_metrics(tokenized_candidates, tokenized_references)
    result.scores      # {"METEOR": 0.21} where java and pycocoevalcap are installed
    result.skipped     # {"SPICE": "needs Stanford CoreNLP models ..."} - metric -> reason

Both take captions already normalised by `eval.ptb` (what the COCO evaluation feeds them).
METEOR runs pycocoevalcap's jar with pycocoevalcap's arguments and protocol, but from our own
client: pycocoevalcap's `Meteor` takes a lock around every exchange and takes it again in its
finaliser, so a Ctrl-C in the middle left the lock held and the finaliser waiting on it
forever. Here nothing is locked: the JVM is ours, killed in a `finally` and by a watchdog after
METEOR_TIMEOUT_S, so an interrupt or SIGTERM ends the command within seconds.
Nothing here downloads anything: pycocoevalcap's SPICE fetches Stanford CoreNLP models from
the internet on first use, so SPICE is always reported as skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streamcap.common.logs import first_line

log = logging.getLogger(__name__)

# Loading the paraphrase table takes ~10 s; scoring a 5,000-image split a minute or two.
METEOR_TIMEOUT_S = 900.0

SPICE_SKIPPED = (
    "needs Stanford CoreNLP 3.6.0 models that pycocoevalcap downloads from the internet on first use; "
    "streamcap never downloads at run time"
)


@dataclass
class JavaMetrics:
    scores: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def meteor_unavailable() -> str | None:
    """Why METEOR cannot run here, or None when it can."""
    if shutil.which("java") is None:
        return "no `java` on PATH (METEOR runs pycocoevalcap's Java scorer)"
    if importlib.util.find_spec("pycocoevalcap") is None:
        return "pycocoevalcap is not installed (pip install pycocoevalcap)"
    return None


def java_metrics(
    candidates: Mapping[str, str], references: Mapping[str, Sequence[str]], *, meteor: bool = True
) -> JavaMetrics:
    """METEOR where possible (or the reason it was skipped), and SPICE as skipped."""
    result = JavaMetrics()
    reason = "turned off (--no-meteor / STREAMCAP_EVAL_METEOR=0)" if not meteor else meteor_unavailable()
    if reason:
        result.skipped["METEOR"] = reason
    else:
        try:
            result.scores["METEOR"] = _meteor(candidates, references)
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            log.warning("METEOR failed: %s", e)
            why = first_line(e)
            result.skipped["METEOR"] = f"pycocoevalcap's METEOR failed: {why}"
    result.skipped["SPICE"] = SPICE_SKIPPED
    return result


def _meteor(
    candidates: Mapping[str, str], references: Mapping[str, Sequence[str]], timeout_s: float = METEOR_TIMEOUT_S
) -> float:
    """pycocoevalcap's METEOR 1.5 corpus score: one SCORE line per image, then one EVAL line."""
    spec = importlib.util.find_spec("pycocoevalcap")
    assert spec is not None and spec.submodule_search_locations is not None  # meteor_unavailable said so
    jar = Path(next(iter(spec.submodule_search_locations))) / "meteor" / "meteor-1.5.jar"
    cmd = ["java", "-jar", "-Xmx2G", jar.name, "-", "-", "-stdio", "-l", "en", "-norm"]
    proc = subprocess.Popen(
        cmd, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    # A JVM that stops answering would block the readline below for good: kill it, and the
    # read ends with EOF (reported as METEOR failing, the other scores kept).
    watchdog = threading.Timer(timeout_s, proc.kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        stats = []
        for key, candidate in candidates.items():
            hypothesis = candidate.replace("|||", "").replace("  ", " ")
            stats.append(_ask(proc, " ||| ".join(("SCORE", " ||| ".join(references[key]), hypothesis))))
        _ask(proc, " ||| ".join(("EVAL", *stats)))  # first the per-image scores, then the corpus one
        for _ in range(len(stats) - 1):
            _read(proc)
        return float(_read(proc))
    finally:
        watchdog.cancel()
        proc.kill()  # no lock, no join under one: an interrupt anywhere above ends here
        proc.wait()


def _ask(proc: subprocess.Popen, line: str) -> str:
    assert proc.stdin is not None
    proc.stdin.write(f"{line}\n".encode())
    proc.stdin.flush()
    return _read(proc)


def _read(proc: subprocess.Popen) -> str:
    assert proc.stdout is not None
    answer = proc.stdout.readline().decode().strip()
    if not answer:
        raise ValueError(f"the METEOR scorer ended without an answer (exit code {proc.poll()})")
    return answer
