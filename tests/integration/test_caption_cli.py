"""`streamcap caption` as a user runs it: a real subprocess on a tiny checkpoint and real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from streamcap.model.caption_model import CaptionModel, ModelConfig
from streamcap.model.checkpoint import save_checkpoint
from streamcap.text.tokenizer import WordPieceTokenizer
from tests.support import timing

ROOT = Path(__file__).resolve().parents[2]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "cat", "on", "the", "beach", "grass", "."]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    tok = WordPieceTokenizer.from_vocab(VOCAB)
    cfg = ModelConfig.from_preset("tiny", tokenizer=tok, d_model=32, n_heads=2, d_ff=64)
    path = tmp_path_factory.mktemp("ckpt") / "step-5.pt"
    save_checkpoint(path, CaptionModel(cfg), tok, step=5, run="test")
    return path


@pytest.fixture
def files(tmp_path) -> Path:
    album = tmp_path / "album"
    album.mkdir()
    Image.new("RGB", (80, 60), (200, 30, 30)).save(album / "red.png")
    Image.new("RGB", (64, 64), (20, 200, 30)).save(album / "green.jpg")
    (album / "notes.txt").write_text("not an image")  # ignored inside a directory: wrong suffix
    (tmp_path / "fake.jpg").write_text("not an image either")  # named explicitly: a per-file error
    Image.new("L", (50, 90), 128).save(tmp_path / "grey.webp")
    return tmp_path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamcap", "caption", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timing.scaled(90),
    )


def run_here(capsys, monkeypatch, *args: str, cwd: Path) -> tuple[int, str, str]:
    """The same command in this process (torch is imported already: seconds cheaper than a subprocess)."""
    from streamcap.cli import app
    from streamcap.entrypoint import run_app

    monkeypatch.chdir(cwd)
    code = run_app(app, ["caption", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_captions_files_directories_and_globs_and_reports_bad_ones(checkpoint, files):
    out = run(
        str(checkpoint),
        "album",
        "fake.jpg",
        "missing.png",
        "*.webp",
        "nothing-*.png",
        "--beam",
        "3",
        "--json",
        cwd=files,
    )
    assert out.returncode == 1, out.stderr  # some files failed: exit 1, but everything else captioned
    results = {r["path"]: r for r in json.loads(out.stdout)}
    assert list(results) == [
        "album/green.jpg",
        "album/red.png",
        "fake.jpg",
        "missing.png",
        "grey.webp",
        "nothing-*.png",
    ]
    for ok in ("album/green.jpg", "album/red.png", "grey.webp"):
        assert isinstance(results[ok]["caption"], str) and results[ok]["score"] <= 0
    assert results["fake.jpg"]["error"].startswith("not an image")
    assert results["missing.png"]["error"] == "no such file"
    assert results["nothing-*.png"]["error"] == "no file matches this pattern"


def test_plain_output_is_one_line_per_image_and_errors_on_stderr(checkpoint, files, capsys, monkeypatch):
    code, out, err = run_here(
        capsys, monkeypatch, str(checkpoint), "album/red.png", "fake.jpg", "album/green.jpg", "--beam", "1", cwd=files
    )
    assert code == 1
    assert [line.split("\t")[0] for line in out.splitlines()] == ["album/red.png", "album/green.jpg"]
    assert err.strip() == "streamcap: error: fake.jpg: not an image (no format Pillow can read)"
    assert run_here(capsys, monkeypatch, str(checkpoint), "album", "--max-tokens", "4", cwd=files)[0] == 0


def test_bad_checkpoints_and_options_are_one_line_and_exit_1(files, checkpoint, capsys, monkeypatch):
    (files / "junk.pt").write_bytes(b"\x00" * 64)
    code, _, err = run_here(capsys, monkeypatch, "junk.pt", "album", cwd=files)
    assert code == 1 and err.startswith("streamcap: error: junk.pt: not a readable checkpoint")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, _, err = run_here(
        capsys, monkeypatch, str(checkpoint), "album", "--min-tokens", "9", "--max-tokens", "3", cwd=files
    )
    assert (code, err.strip()) == (1, "streamcap: error: --min-tokens 9 is larger than --max-tokens 3")
    code, _, err = run_here(capsys, monkeypatch, str(checkpoint), "album", "--device", "tpu", cwd=files)
    assert code == 1 and "--device tpu" in err
