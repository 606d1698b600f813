"""CaptionModel: shapes, causality, tied embeddings, presets, freezing, preprocessing."""

from __future__ import annotations

import pickle

import pytest
import torch
from PIL import Image

from streamcap.model.caption_model import (
    IMAGE_MEAN,
    PRESETS,
    CaptionModel,
    ModelConfig,
    format_parameter_counts,
    image_transform,
)

MICRO = dict(
    backbone="resnet10",
    image_size=64,
    d_model=32,
    n_layers=2,
    n_heads=2,
    d_ff=64,
    max_len=12,
    vocab_size=20,
    dropout=0.0,
    pretrained=False,
)


@pytest.fixture(scope="module")
def model() -> CaptionModel:
    torch.manual_seed(0)
    return CaptionModel(ModelConfig(**MICRO)).eval()


def test_forward_shapes(model):
    images, tokens = torch.randn(2, 3, 64, 64), torch.randint(4, 20, (2, 7))
    assert model.encode(images).shape == (2, 4, 32)  # 64 px / 32 = a 2x2 grid
    assert model.encoder.forward_features(images).shape == (2, 512, 2, 2)
    assert model(images, tokens).shape == (2, 7, 20)


def test_decoder_is_causal(model):
    images = torch.randn(1, 3, 64, 64)
    a = torch.tensor([[2, 5, 6, 7, 8]])
    b = a.clone()
    b[0, 3:] = torch.tensor([9, 10])
    la, lb = model(images, a), model(images, b)
    assert torch.allclose(la[:, :3], lb[:, :3], atol=1e-6)  # positions before the change: same
    assert not torch.allclose(la[:, 3:], lb[:, 3:])


def test_output_layer_is_the_token_embedding(model):
    vocab_by_width = [n for n, p in model.named_parameters() if p.shape == (20, 32)]
    assert vocab_by_width == ["decoder.tok_emb.weight"]  # no separate output matrix
    counts = model.parameter_counts()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["encoder"] + counts["decoder"] == counts["total"]
    assert "total" in format_parameter_counts(counts)


def test_too_long_input_is_a_clear_error(model):
    with pytest.raises(ValueError, match="exceeds the model's max_len 12"):
        model(torch.randn(1, 3, 64, 64), torch.zeros(1, 13, dtype=torch.long))


def test_presets_and_config_checks():
    assert set(PRESETS) >= {"tiny", "small", "base"}
    base = ModelConfig.from_preset("base")
    assert (base.backbone, base.vocab_size) == ("resnet101", 15000)
    assert ModelConfig.from_preset("tiny", d_model=64).d_model == 64
    assert ModelConfig.from_dict(base.to_dict()) == base
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        ModelConfig.from_preset("huge")
    with pytest.raises(ValueError, match="must split into n_heads"):
        ModelConfig(**{**MICRO, "n_heads": 3})
    with pytest.raises(ValueError, match="backbone must be one of"):
        ModelConfig(**{**MICRO, "backbone": "vgg16"})
    with pytest.raises(ValueError, match="eos_id must be a token id below vocab_size"):
        ModelConfig(**{**MICRO, "eos_id": 20})


def test_freezing_the_encoder_trunk():
    torch.manual_seed(0)
    m = CaptionModel(ModelConfig(**MICRO))
    m.set_encoder_trainable(False)
    m.train()
    assert all(not p.requires_grad for p in m.encoder.trunk.parameters())
    assert m.encoder.proj.weight.requires_grad and not m.encoder.trunk.training and m.decoder.training
    running = m.encoder.trunk.bn1.running_mean.clone()
    m(torch.randn(2, 3, 64, 64), torch.randint(4, 20, (2, 5))).sum().backward()
    assert torch.equal(running, m.encoder.trunk.bn1.running_mean)  # BatchNorm statistics stay put
    assert m.encoder.trunk.conv1.weight.grad is None and m.decoder.tok_emb.weight.grad is not None
    m.set_encoder_trainable(True)
    assert m.encoder.trunk.training and all(p.requires_grad for p in m.encoder.trunk.parameters())
    groups = m.param_groups(lr=1e-4, encoder_lr=1e-5)
    assert [g["lr"] for g in groups] == [1e-5, 1e-4]
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))


def test_image_transform_normalises_any_mode():
    cfg = ModelConfig(**MICRO)
    x = image_transform(cfg)(Image.new("L", (100, 80), color=124))
    assert x.shape == (3, 64, 64)
    expected = (124 / 255 - IMAGE_MEAN[0]) / 0.229
    assert abs(float(x[0, 32, 32]) - expected) < 1e-3
    assert image_transform(cfg)(Image.new("RGBA", (30, 300))).shape == (3, 64, 64)
    again = pickle.loads(pickle.dumps(image_transform(cfg)))  # DataLoader workers receive it pickled
    assert torch.equal(
        again(Image.new("RGB", (70, 70), (1, 2, 3))), image_transform(cfg)(Image.new("RGB", (70, 70), (1, 2, 3)))
    )


def test_unloadable_imagenet_weights_mean_one_warning_and_random_weights(caplog):
    from torchvision.models import resnet

    from streamcap.model.encoder import _load_imagenet_weights

    class OfflineWeights:  # what torchvision's weights enum does on a machine without network
        name = "IMAGENET1K_V1"

        def get_state_dict(self, progress: bool = True):
            raise OSError("<urlopen error [Errno -2] Name or service not known>")

    net = resnet.resnet18(weights=None)
    before = net.conv1.weight.clone()
    with caplog.at_level("INFO", logger="streamcap.model.encoder"):
        _load_imagenet_weights(net, "resnet18", OfflineWeights())
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "ImageNet weights for resnet18 could not be loaded (OSError" in caplog.text
    assert "random weights" in caplog.text and torch.equal(before, net.conv1.weight)
