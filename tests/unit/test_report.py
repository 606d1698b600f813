"""The HTML report and the metric plot, from hand-made results (no model needed)."""

from __future__ import annotations

import re

from streamcap.eval.datasets import load_eval_set
from streamcap.eval.outputs import EvalResult, append_result, read_results
from streamcap.eval.report import gallery_images, plot_history, write_report
from tests.support.evalsets import karpathy_set

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def result(step: int, cider: float, run: str = "r1") -> EvalResult:
    scores = {"BLEU-1": 0.5, "BLEU-2": 0.3, "BLEU-3": 0.2, "BLEU-4": 0.1, "CIDEr": cider, "ROUGE-L": 0.4}
    return EvalResult(
        checkpoint=f"/ckpt/{run}/step-{step}.pt",
        step=step,
        run=run,
        dataset="set.json:test",
        images=6,
        scores=scores,
        skipped={"SPICE": "needs models from the internet"},
        settings={"beam": 5, "alpha": 0.6, "max_tokens": 20},
        created=1_700_000_000.0,
    )


def test_gallery_shows_best_then_worst_without_overlap(tmp_path):
    evalset = load_eval_set(karpathy_set(tmp_path, test=6, val=0, train=0), image_dir=tmp_path / "images")
    ciders = dict(zip((im.id for im in evalset.images), [0.5, 2.0, 0.0, 1.0, 3.0, 0.1]))
    per_image = {k: {"CIDEr": v} for k, v in ciders.items()}
    best, worst = gallery_images(evalset, per_image, 4)
    assert [im.id for im in best] == ["1004.jpg", "1001.jpg"]
    assert [im.id for im in worst] == ["1002.jpg", "1005.jpg"]
    best, worst = gallery_images(evalset, per_image, 24)  # a gallery larger than the set: halves of it
    assert len(best) == 3 and len(worst) == 3 and not {im.id for im in best} & {im.id for im in worst}


def test_report_has_metrics_gallery_and_embedded_images(tmp_path):
    evalset = load_eval_set(karpathy_set(tmp_path, test=4, val=0, train=0), image_dir=tmp_path / "images")
    predictions = {im.id: f"caption <{i}> & more" for i, im in enumerate(evalset.images)}
    per_image = {im.id: {"CIDEr": float(i)} for i, im in enumerate(evalset.images)}
    plot = plot_history([result(100, 0.2), result(200, 0.4)], tmp_path / "metrics.png")
    page = write_report(
        tmp_path / "out" / "report.html", result(200, 0.4), evalset, predictions, per_image, gallery=4, plot=plot
    ).read_text()
    assert "<td>CIDEr</td><td class='num'>0.4000</td>" in page
    assert "skipped: needs models from the internet" in page
    assert "caption &lt;3&gt; &amp; more" in page  # escaped
    assert page.index("The 2 best images") < page.index("CIDEr 3.00") < page.index("The 2 worst images")
    assert page.index("The 2 worst images") < page.index("CIDEr 0.00") < page.index("CIDEr 1.00")
    assert "A dog runs on the beach." in page  # references
    assert len(re.findall(r"src='data:image/jpeg;base64,", page)) == 4  # thumbnails
    assert "src='data:image/png;base64," in page  # the plot


def test_plot_history_draws_each_metric_per_run(tmp_path):
    results = [result(100, 0.1), result(200, 0.3), result(100, 0.2, run="r2")]
    path = plot_history(results, tmp_path / "metrics.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert plot_history([], tmp_path / "none.png") is None


def test_results_file_keeps_the_last_result_per_step(tmp_path):
    append_result(tmp_path, result(100, 0.1))
    append_result(tmp_path, result(100, 0.7))  # re-evaluated after a crash
    append_result(tmp_path, result(200, 0.2))
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write('{"checkpoint": "cut sh')  # a line cut short by a crash
    assert [(r.step, r.scores["CIDEr"]) for r in read_results(tmp_path)] == [(100, 0.7), (200, 0.2)]
