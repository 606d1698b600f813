"""`streamcap eval score` and `streamcap eval run` as a user runs them: real subprocesses, real files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import timing
from tests.support.evalsets import karpathy_set, tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def streamcap(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamcap", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=timing.scaled(timeout),
    )


@pytest.fixture
def caption_files(tmp_path) -> tuple[Path, Path]:
    predictions = {"1": "A dog runs on the grass.", "2": "Two men play football.", "3": "a red car"}
    references = {
        "1": ["A dog running on grass.", "The brown dog runs."],
        "2": ["Two men are playing soccer.", "Men play football in a park."],
        "3": ["A red car parked on a street.", "the car is red"],
    }
    (tmp_path / "pred.json").write_text(json.dumps(predictions))
    (tmp_path / "refs.json").write_text(json.dumps(references))
    return tmp_path / "pred.json", tmp_path / "refs.json"


def test_score_prints_json(caption_files):
    out = streamcap("eval", "score", *map(str, caption_files), "--json", "--no-meteor")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["images"] == 3
    assert set(doc["scores"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr", "ROUGE-L"}
    assert 0 < doc["scores"]["BLEU-1"] <= 1 and doc["scores"]["CIDEr"] > 0
    assert "internet" in doc["skipped"]["SPICE"] and "--no-meteor" in doc["skipped"]["METEOR"]


def test_score_mismatched_ids_is_one_line_listing_them(caption_files, tmp_path):
    predictions, references = caption_files
    predictions.write_text(json.dumps({"1": "a dog", "9": "a cat"}))
    out = streamcap("eval", "score", str(predictions), str(references))
    assert out.returncode == 1
    assert out.stderr == ("streamcap: error: 1 id(s) without references: 9; 2 id(s) without a prediction: 2, 3\n")


def test_score_bad_file_is_one_line(caption_files):
    predictions, references = caption_files
    references.write_text(json.dumps({"1": "not a list"}))
    out = streamcap("eval", "score", str(predictions), str(references))
    assert out.returncode == 1
    assert out.stderr.startswith("streamcap: error: ") and out.stderr.count("\n") == 1
    assert "references of id '1' is not as" in out.stderr


def test_meteor_runs_where_java_is_and_is_skipped_with_a_reason_where_not(caption_files):
    no_java = streamcap(
        "eval", "score", *map(str, caption_files), "--json", env={"PATH": str(Path(sys.executable).parent)}
    )
    assert json.loads(no_java.stdout)["skipped"]["METEOR"].startswith("no `java` on PATH")
    if shutil.which("java"):  # the branch this machine can run; the other one ran just above
        with_java = json.loads(streamcap("eval", "score", *map(str, caption_files), "--json", timeout=110).stdout)
        assert 0 < with_java["scores"]["METEOR"] < 1 and "METEOR" not in with_java["skipped"]


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evalrun")
    data = karpathy_set(root, test=5, val=2, train=1)
    return {"root": root, "data": data, "checkpoint": tiny_checkpoint(root / "ckpt" / "step-100.pt", step=100)}


def test_run_writes_predictions_scores_report_and_results(eval_files, tmp_path):
    out_dir = tmp_path / "evals"
    out = streamcap(
        "eval",
        "run",
        str(eval_files["checkpoint"]),
        "--data",
        str(eval_files["data"]),
        "--images",
        str(eval_files["root"] / "images"),
        "--split",
        "val",
        "--beam",
        "3",
        "--min-tokens",
        "2",
        "--max-tokens",
        "5",
        "--no-meteor",
        "--out-dir",
        str(out_dir),
        "--json",
        env={"STREAMCAP_PROGRESS_EVERY": "0.1"},
    )
    assert out.returncode == 0, out.stderr
    # Progress in a pipe: plain lines of images captioned, the last one when all are scored.
    progress = [line for line in out.stderr.splitlines() if line.startswith("eval: ")]
    assert progress and all(re.match(r"eval: \d/2 images \(\d+\.\d %\), [\d.]+ images/s", p) for p in progress)
    assert progress[-1].startswith("eval: 2/2 images (100.0 %)") and "; done; took " in progress[-1]
    assert "\r" not in out.stderr and "\x1b" not in out.stderr
    result = json.loads(out.stdout)
    assert (result["status"], result["step"], result["run"], result["images"]) == ("ok", 100, "r1", 2)
    assert result["dataset"] == "dataset_flickr30k.json:val"
    folder = out_dir / "r1" / "step-000000100"
    predictions = json.loads((folder / "predictions.json").read_text())
    assert sorted(predictions) == ["1005.jpg", "1006.jpg"]
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["corpus"] == result["scores"] and sorted(scores["per_image"]) == sorted(predictions)
    rescored = streamcap(
        "eval", "score", str(folder / "predictions.json"), str(folder / "references.json"), "--json", "--no-meteor"
    )
    assert json.loads(rescored.stdout)["scores"] == result["scores"]  # the same numbers from the files
    page = (folder / "report.html").read_text()
    assert "The 1 best images by CIDEr" in page and "The 1 worst images by CIDEr" in page
    assert [json.loads(line)["step"] for line in (out_dir / "results.jsonl").read_text().splitlines()] == [100]
    assert (out_dir / "metrics.png").read_bytes().startswith(b"\x89PNG")


def test_run_with_a_missing_image_is_one_line(eval_files, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(eval_files["root"] / "images", images)
    (images / "1002.jpg").unlink()
    out = streamcap(
        "eval",
        "run",
        str(eval_files["checkpoint"]),
        "--data",
        str(eval_files["data"]),
        "--images",
        str(images),
        "--out-dir",
        str(tmp_path / "evals"),
    )
    assert out.returncode == 1
    assert out.stderr.startswith("streamcap: error: ") and "1 image(s) not found: 1002.jpg" in out.stderr
    assert "Traceback" not in out.stderr


def test_run_with_a_damaged_checkpoint_names_the_file(eval_files, tmp_path):
    from streamcap.eval.config import EvalSettings
    from streamcap.eval.datasets import load_eval_set
    from streamcap.eval.evaluate import evaluate_checkpoint
    from streamcap.model.checkpoint import CheckpointError

    bad = tmp_path / "step-5.pt"
    bad.write_bytes(b"not a checkpoint")
    evalset = load_eval_set(eval_files["data"], image_dir=eval_files["root"] / "images")
    with pytest.raises(CheckpointError, match=f"^{bad}: not a readable checkpoint"):
        evaluate_checkpoint(EvalSettings(out_dir=tmp_path / "evals"), bad, evalset, "cpu")


def test_device_cuda_without_a_gpu_is_a_setting_error():
    import torch

    from streamcap.common.settings import ConfigError
    from streamcap.eval.captioner import pick_device
    from streamcap.eval.config import EvalSettings

    if torch.cuda.is_available():
        assert pick_device(EvalSettings(device="cuda")).type == "cuda"
    else:
        with pytest.raises(ConfigError, match="^--device / STREAMCAP_EVAL_DEVICE: expected auto or cpu: no CUDA"):
            pick_device(EvalSettings(device="cuda"))
    assert pick_device(EvalSettings(device="cpu")).type == "cpu"
