"""Where training metrics go (rank 0): a local JSONL log, Weights & Biases, a loss-curve PNG.

    sink = MetricsSink.open(cfg, run_dir, run, config_dict)
    sink.log(step, {"loss": 2.3, "loss/ce": 2.2, "loss/eos": 0.1, "lr": 1e-4, ...})
    sink.histograms(step, model)                       # W&B only, at a low rate
    sink.samples(step, images_uint8, predicted, reference)
    sink.plot()                                        # <run_dir>/loss.png
    sink.close()

`metrics.jsonl` gets one JSON object per logged step ({"step": N, "time": ts, ...metrics}) and
one per sample-caption batch ({"step": N, "samples": [{"predicted", "reference"}]}); it works
with W&B off. W&B mode: `--wandb-mode auto` is online when an API key is configured, offline
otherwise (sync later with `wandb sync`); WANDB_MODE in the environment wins, which is how the
tests turn it off.

A resumed run continues the same W&B run: its id (a fresh one for each run that starts at step 0)
is kept in the training state, and each step reaches W&B exactly once across crashes. W&B
already holds the steps it committed before the crash, which may end before the checkpoint (a
killed W&B process loses what it had not written) or after it (steps the resumed run computes
again). So the resumed sink asks which steps W&B has: online the server (`wandb_run.step`, the
next step it accepts), offline the run's earlier `.wandb` files (`trainer.wandb_files`: offline
W&B ignores `resume` and would start at step 0). It sends the steps between those and the
checkpoint from `metrics.jsonl` (scalars only), then live steps past what W&B has.
`metrics.jsonl` is cut back to the checkpoint and gets every step again.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from streamcap.common.files import atomic_writer, keep_jsonl_steps
from streamcap.common.wandb_mode import resolve_wandb_mode
from streamcap.trainer.wandb_files import last_logged_step

log = logging.getLogger(__name__)

PLOTTED = ("loss", "loss/ce", "loss/eos")


class MetricsSink:
    def __init__(self, run_dir: Path | None, wandb_run: Any = None, wandb_from: int = 0) -> None:
        self.run_dir, self.wandb = run_dir, wandb_run
        # The first step W&B lacks: 0 for a new run, past its last committed step for a resumed one.
        self.wandb_from = wandb_from
        self.history: dict[str, list[tuple[int, float]]] = {name: [] for name in PLOTTED}
        self._file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if run_dir else None

    @classmethod
    def disabled(cls) -> MetricsSink:
        """What ranks other than 0 use: accepts everything, writes nothing."""
        return cls(None)

    @classmethod
    def open(
        cls,
        *,
        run_dir: Path,
        run: str,
        mode: str,
        project: str,
        name: str | None,
        config: dict[str, Any],
        wandb_id: str,
        resume_step: int | None = None,
    ) -> MetricsSink:
        """Open the run's log; a resumed run first drops records past its checkpoint's step and
        sends W&B the steps up to the checkpoint that it lacks."""
        if resume_step is not None:
            _truncate_after(run_dir / "metrics.jsonl", resume_step)
        mode = resolve_wandb_mode(mode)
        wandb_run, wandb_from = None, 0
        if mode != "disabled":
            import wandb

            # Read before init: the files of earlier starts of this run, not the one init makes.
            committed = last_logged_step(run_dir / "wandb", wandb_id) if mode != "online" else -1
            wandb_run = wandb.init(
                project=project,
                name=name or run,
                id=wandb_id,
                resume="allow",
                mode=mode,
                dir=str(run_dir),
                config=config,
            )
            wandb_from = int(wandb_run.step or 0) if mode == "online" else committed + 1
            log.info(
                "Weights & Biases run %s, id %s (%s mode)%s",
                name or run,
                wandb_id,
                mode,
                f", continued after step {wandb_from - 1}" if wandb_from else "",
            )
        sink = cls(run_dir, wandb_run, wandb_from)
        sink._load_history()
        if resume_step is not None:
            sink._send_logged(resume_step)
        return sink

    def log(self, step: int, metrics: dict[str, float], extra: dict[str, Any] | None = None) -> None:
        """One step's metrics; `extra` (e.g. sample keys) goes to metrics.jsonl only.

        A NaN or infinite value is kept, never dropped: it is what a diverging run must show.
        metrics.jsonl spells it "nan", "inf" or "-inf" (strict JSON has no such numbers; `float()`
        reads them back); W&B gets the float itself. The loss curve leaves it out.
        """
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        written = {k: v if math.isfinite(v) else str(v) for k, v in values.items()}
        self._write({"step": step, "time": round(time.time(), 3), **written, **(extra or {})})
        for name in PLOTTED:
            if name in values and math.isfinite(values[name]):
                self.history[name].append((step, values[name]))
        self._to_wandb(step, values)

    def histograms(self, step: int, model: torch.nn.Module) -> None:
        """Parameter and gradient histograms (W&B only: too big for the JSONL log)."""
        if self.wandb is None or step < self.wandb_from:
            return
        import wandb

        data = {}
        for name, p in model.named_parameters():
            data[f"params/{name}"] = wandb.Histogram(p.detach().float().cpu().numpy())
            if p.grad is not None:
                data[f"grads/{name}"] = wandb.Histogram(p.grad.detach().float().cpu().numpy())
        self._to_wandb(step, data)

    def samples(self, step: int, images: torch.Tensor, predicted: list[str], reference: list[str]) -> None:
        """A few greedy captions next to their references (and images, in W&B)."""
        self._write({"step": step, "samples": [{"predicted": p, "reference": r} for p, r in zip(predicted, reference)]})
        for p, r in zip(predicted[:2], reference[:2]):
            log.info("step %d sample: %r (reference %r)", step, p, r)
        if self.wandb is not None and step >= self.wandb_from:
            import wandb

            pictures = [
                wandb.Image(img.permute(1, 2, 0).cpu().numpy(), caption=f"{p}  |  ref: {r}")
                for img, p, r in zip(images, predicted, reference)
            ]
            self._to_wandb(step, {"samples": pictures})

    def _to_wandb(self, step: int, data: dict[str, Any]) -> None:
        if self.wandb is None or step < self.wandb_from:
            return  # a step a resumed run's W&B history already has: W&B would drop it with a warning
        self.wandb.log(data, step=step)

    def plot(self) -> Path | None:
        """Write the loss curves to <run_dir>/loss.png (matplotlib, no display needed)."""
        if self.run_dir is None or not self.history["loss"]:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        for name in PLOTTED:
            if self.history[name]:
                steps, values = zip(*self.history[name])
                ax.plot(steps, values, label=name, linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = self.run_dir / "loss.png"
        try:
            with atomic_writer(path) as f:
                fig.savefig(f, format="png", bbox_inches="tight")
        finally:
            plt.close(fig)
        return path

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def _send_logged(self, resume_step: int) -> None:
        """Send W&B the steps of metrics.jsonl it lacks up to the checkpoint: the resumed run
        trains only past it, so W&B would never get them otherwise."""
        if self.wandb is None or self._file is None:
            return
        for record in read_metrics(self.run_dir / "metrics.jsonl"):
            step = int(record["step"])
            if self.wandb_from <= step <= resume_step:
                self.wandb.log(_scalars(record), step=step)
        self.wandb_from = max(self.wandb_from, resume_step + 1)

    def _load_history(self) -> None:
        """A resumed run's curve continues the earlier one."""
        if self._file is None:
            return
        for record in read_metrics(self.run_dir / "metrics.jsonl"):
            for name in PLOTTED:
                if name in record and math.isfinite(float(record[name])):
                    self.history[name].append((int(record["step"]), float(record[name])))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The step records of a metrics.jsonl (sample-caption records left out)."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
        if isinstance(record, dict) and "samples" not in record and "step" in record:
            out.append(record)
    return out


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl step record's metrics as W&B got them (its extras, lists and words, left out)."""
    out = {}
    for key, value in record.items():
        if key in ("step", "time") or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) or value in ("nan", "inf", "-inf"):
            out[key] = float(value)
    return out


def _truncate_after(path: Path, step: int) -> None:
    """Keep the records of steps <= `step` (what a crash after the checkpoint logged is redone)."""
    keep_jsonl_steps(path, lambda logged: logged <= step)
