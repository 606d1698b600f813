"""METEOR and SPICE: only through pycocoevalcap's Java scorers, and only where they can run.

    result = java_metrics(tokenized_candidates, tokenized_references)
    result.scores      # {"METEOR": 0.21} where java and pycocoevalcap are installed
    result.skipped     # {"SPICE": "needs Stanford CoreNLP models ..."} - metric -> reason

Both take captions already normalised by `eval.ptb` (what the COCO evaluation feeds them).
Nothing here downloads anything: pycocoevalcap's SPICE fetches Stanford CoreNLP models from
the internet on first use, so SPICE is always reported as skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from streamcap.common.logs import first_line

log = logging.getLogger(__name__)

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


def _meteor(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()  # starts `java -jar meteor-1.5.jar` (about 10 s to load its paraphrase table)
    try:
        score, _ = scorer.compute_score(
            {k: list(references[k]) for k in candidates}, {k: [v] for k, v in candidates.items()}
        )
        return float(score)
    finally:
        # pycocoevalcap only stops the JVM in __del__; stop it now, deterministically.
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
