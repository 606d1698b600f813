"""Checkpoints: self-contained round trip, atomic writes, readable errors."""

from __future__ import annotations

import threading

import pytest
import torch

from streamcap.model.caption_model import CaptionModel, ModelConfig
from streamcap.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from streamcap.model.decoding import beam_search_with_scores
from streamcap.text.tokenizer import WordPieceTokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "on", "the", "beach", "."]


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(1)
    tok = WordPieceTokenizer.from_vocab(VOCAB)
    cfg = ModelConfig.from_preset("tiny", tokenizer=tok, d_model=32, n_heads=2, d_ff=64, image_size=32)
    return CaptionModel(cfg), tok


def test_round_trip_rebuilds_the_same_model(trained, tmp_path):
    model, tok = trained
    path = tmp_path / "ckpt" / "step-7.pt"
    save_checkpoint(path, model, tok, step=7, run="r1", extra={"loss": 1.5, "note": "x"})
    assert [p.name for p in path.parent.iterdir()] == ["step-7.pt"]  # no temp file left behind
    loaded = load_checkpoint(path)
    assert (loaded.step, loaded.run, loaded.extra) == (7, "r1", {"loss": 1.5, "note": "x"})
    assert loaded.config == model.cfg and loaded.tokenizer.vocab == tok.vocab
    assert not loaded.model.training
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    assert beam_search_with_scores(loaded.model, images, max_len=6) == beam_search_with_scores(model, images, max_len=6)


def test_wrapped_models_are_unwrapped(trained, tmp_path):
    model, tok = trained

    class Wrapper(torch.nn.Module):  # what DDP looks like from here: the model under .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    save_checkpoint(tmp_path / "w.pt", Wrapper(model), tok, step=1, run="r")
    assert set(load_checkpoint(tmp_path / "w.pt").model.state_dict()) == set(model.state_dict())


def test_tokenizer_must_match_the_model(trained, tmp_path):
    model, _ = trained
    other = WordPieceTokenizer.from_vocab(VOCAB + ["extra"])
    with pytest.raises(ValueError, match="disagree"):
        save_checkpoint(tmp_path / "x.pt", model, other, step=1, run="r")


def test_unreadable_files_give_one_line_reasons(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a streamcap checkpoint"):
        load_checkpoint(foreign)


def test_a_pickled_model_is_one_clean_line_without_torchs_advice(trained, tmp_path):
    model, _ = trained
    pickled = tmp_path / "model.pt"
    torch.save(model, pickled)  # a whole-module torch.save: loading it would run pickled code
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(pickled)
    line = str(caught.value)
    assert line.startswith(f"{pickled}: not a readable checkpoint (it holds pickled Python objects (a streamcap.")
    assert "\n" not in line and "\x1b" not in line and "weights_only" not in line and "trust" not in line


def test_a_failed_write_leaves_the_previous_checkpoint_intact(trained, tmp_path):
    model, tok = trained
    path = tmp_path / "latest.pt"
    save_checkpoint(path, model, tok, step=1, run="r")
    with pytest.raises(TypeError, match="cannot pickle"):  # breaks torch.save half-way through the file
        save_checkpoint(path, model, tok, step=2, run="r", extra={"bad": threading.Lock()})
    assert load_checkpoint(path).step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]
