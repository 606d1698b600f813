"""The evaluation report: one self-contained HTML page per evaluation, and the metric plot.

    write_report(path, result, evalset, predictions, per_image, gallery=24, plot=Path("evals/metrics.png"))
    plot_history(read_results(out_dir), out_dir / "metrics.png")

The page shows the metrics table (with the metrics that were skipped and why), the metrics over
training steps, and a gallery: thumbnails with the predicted caption, the references and the
image's CIDEr, the best images first, then the worst. Thumbnails and the plot are embedded
(base64), so the page can be copied or mailed on its own.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import time
from pathlib import Path

from PIL import Image

from streamcap.eval.datasets import EvalImage, EvalSet
from streamcap.eval.metrics import METRICS
from streamcap.eval.outputs import EvalResult

log = logging.getLogger(__name__)

THUMBNAIL_PX = 320

_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px; color: #1d2330; background: #f6f7f9; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 10px; }
.meta { color: #5b6475; font-size: 13px; }
table.metrics { border-collapse: collapse; background: #fff; box-shadow: 0 1px 3px #0002; }
table.metrics th, table.metrics td { padding: 7px 16px; border-bottom: 1px solid #e4e7ec; text-align: left; }
table.metrics td.num { text-align: right; font-variant-numeric: tabular-nums; font-weight: 600; }
tr.chosen td { background: #eef6ee; } td.skip { color: #8a6d1f; font-size: 13px; }
img.plot { max-width: 100%; background: #fff; box-shadow: 0 1px 3px #0002; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 14px; }
.card { background: #fff; border-radius: 6px; box-shadow: 0 1px 3px #0002; overflow: hidden; }
.card img { width: 100%; height: 210px; object-fit: cover; display: block; background: #ddd; }
.card .body { padding: 10px 12px; font-size: 13px; }
.pred { font-size: 15px; font-weight: 600; margin: 2px 0 8px; }
.score { float: right; font-weight: 700; padding: 1px 7px; border-radius: 10px; color: #fff; }
.good { background: #2e7d32; } .bad { background: #c62828; }
.refs { margin: 0; padding-left: 18px; color: #444; } .id { color: #8a90a0; font-size: 11px; margin-top: 6px; }
"""


def write_report(
    path: Path,
    result: EvalResult,
    evalset: EvalSet,
    predictions: dict[str, str],
    per_image: dict[str, dict[str, float]],
    *,
    gallery: int,
    plot: Path | None,
) -> Path:
    """Write the HTML report of one evaluation to `path`."""
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(result.run)} step {result.step}: {_e(result.dataset)}</title><style>{_STYLE}</style></head><body>",
        _header(result),
        "<h2>Metrics</h2>",
        _metrics_table(result),
    ]
    if plot is not None and plot.is_file():
        parts += [
            "<h2>Over training</h2>",
            f"<img class='plot' alt='metrics over steps' src='{_data_uri(plot.read_bytes(), 'png')}'>",
        ]
    best, worst = gallery_images(evalset, per_image, gallery)
    for title, images, good in (
        (f"The {len(best)} best images by CIDEr", best, True),
        (f"The {len(worst)} worst images by CIDEr", worst, False),
    ):
        if images:
            parts += [
                f"<h2>{title}</h2><div class='grid'>",
                *(_card(im, predictions[im.id], per_image[im.id]["CIDEr"], good=good) for im in images),
                "</div>",
            ]
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def gallery_images(
    evalset: EvalSet, per_image: dict[str, dict[str, float]], size: int
) -> tuple[list[EvalImage], list[EvalImage]]:
    """(best, worst) images by CIDEr, `size` in all: best first in the one, worst first in the other.

    Halves of min(size, images), so the two never overlap, also on a set smaller than `size`.
    """
    ranked = sorted(evalset.images, key=lambda im: (-per_image[im.id]["CIDEr"], im.id))
    shown = min(size, len(ranked))
    best = ranked[: (shown + 1) // 2]
    worst = ranked[::-1][: shown // 2]
    return best, worst


def _header(result: EvalResult) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(result.created or time.time()))
    s = result.settings
    decoding = f"beam {s.get('beam')}, alpha {s.get('alpha')}, at most {s.get('max_tokens')} tokens"
    return (
        f"<h1>{_e(result.run)} &middot; step {result.step:,}</h1>"
        f"<div class='meta'>{_e(result.checkpoint)}<br>{_e(result.dataset)}: {result.images:,} images &middot; "
        f"{_e(decoding)} &middot; {result.seconds:.1f} s &middot; {when}<br>"
        f"empty captions: {100 * result.empty_share:.1f}% of images<br>"
        "<a href='predictions.json'>predictions.json</a> &middot; <a href='scores.json'>scores.json</a> "
        "(per-image scores)</div>"
    )


def _metrics_table(result: EvalResult) -> str:
    rows = ["<table class='metrics'><tr><th>metric</th><th>score</th></tr>"]
    for name in (*METRICS, "METEOR", "SPICE"):
        chosen = " class='chosen'" if name == result.metric else ""
        if name in result.scores:
            rows.append(f"<tr{chosen}><td>{_e(name)}</td><td class='num'>{result.scores[name]:.4f}</td></tr>")
        elif name in result.skipped:
            rows.append(f"<tr><td>{_e(name)}</td><td class='skip'>skipped: {_e(result.skipped[name])}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _card(image: EvalImage, prediction: str, cider: float, *, good: bool) -> str:
    refs = "".join(f"<li>{_e(r)}</li>" for r in image.references)
    return (
        f"<div class='card'><img loading='lazy' alt='{_e(image.id)}' src='{_thumbnail(image)}'>"
        f"<div class='body'><span class='score {'good' if good else 'bad'}'>CIDEr {cider:.2f}</span>"
        f"<div class='pred'>{_e(prediction) or '<i>(empty)</i>'}</div><ol class='refs'>{refs}</ol>"
        f"<div class='id'>{_e(image.id)}</div></div></div>"
    )


def _thumbnail(image: EvalImage) -> str:
    try:
        with Image.open(image.path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=82)
        return _data_uri(buf.getvalue(), "jpeg")
    except OSError as e:  # the report still renders; the card says the image is gone
        log.warning("no thumbnail for %s: %s", image.id, e)
        return ""


def _data_uri(data: bytes, kind: str) -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def plot_history(results: list[EvalResult], path: Path) -> Path | None:
    """One panel per metric, score over training step, a line per training run."""
    if not results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in (*METRICS, "METEOR") if any(m in r.scores for r in results)]
    cols = 3
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    runs = sorted({r.run for r in results})
    for ax, name in zip(axes.flat, names):
        for run in runs:
            points = sorted((r.step, r.scores[name]) for r in results if r.run == run and name in r.scores)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=run)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    if len(runs) > 1:
        axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
