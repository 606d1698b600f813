"""The image encoder: a torchvision ResNet trunk, a projection to the decoder width, 2D positions.

    encoder = ImageEncoder(ModelConfig.from_preset("base"))   # ImageNet weights when loadable
    feats = encoder.forward_features(images)                  # [B,2048,12,12] for 384 px
    memory = encoder(images)                                   # [B,144,768]: what the decoder attends to

ImageNet weights come through torchvision (its cache under TORCH_HOME, else a download); when
they cannot be loaded (no network) one warning says so and the trunk keeps random weights.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import OrderedDict

import torch
import torch.nn as nn

from streamcap.common.logs import first_line
from streamcap.model.config import ModelConfig

log = logging.getLogger(__name__)


def build_trunk(backbone: str, pretrained: bool) -> tuple[nn.Sequential, int]:
    """A torchvision ResNet without its pooling and classifier, and its output channels."""
    from torchvision.models import get_model_weights, resnet

    if backbone == "resnet10":
        net = resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1])
        if pretrained:
            log.warning("no ImageNet weights exist for resnet10: the encoder starts from random weights")
    else:
        net = getattr(resnet, backbone)(weights=None)
        if pretrained:
            _load_imagenet_weights(net, backbone, get_model_weights(backbone).DEFAULT)
    stages = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    trunk = nn.Sequential(OrderedDict((name, getattr(net, name)) for name in stages))
    return trunk, net.fc.in_features


def _load_imagenet_weights(net: nn.Module, backbone: str, weights) -> None:
    # torchvision reads its cache (TORCH_HOME) first and downloads otherwise; on a machine
    # without network that fails, and training from random weights is still useful.
    try:
        # torch.hub prints its own "Downloading: ..." line to stdout, which --json output cannot have.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            state = weights.get_state_dict(progress=False)
        net.load_state_dict(state)
        log.info("encoder: %s with ImageNet weights %s", backbone, weights.name)
    except Exception as e:  # URLError, timeouts, a corrupt cache file: all mean "no weights"
        reason = first_line(e)
        log.warning(
            "ImageNet weights for %s could not be loaded (%s: %s): the encoder starts from random weights",
            backbone,
            type(e).__name__,
            reason,
        )


def grid_positions(h: int, w: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed 2D sine/cosine positions [h*w, dim]: a quarter of the channels each for sin/cos of y/x."""
    quarter = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    y = ys.reshape(-1, 1).float() * omega  # [h*w, quarter]
    x = xs.reshape(-1, 1).float() * omega
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1).to(dtype)


class ImageEncoder(nn.Module):
    """ResNet trunk -> projection to d_model -> LayerNorm + 2D positions: [B,3,H,W] -> [B,S,D]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.trunk, channels = build_trunk(cfg.backbone, cfg.pretrained)
        self.proj = nn.Linear(channels, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.trunk_frozen = False

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The trunk's last feature map: [B,3,H,W] -> [B,C,H/32,W/32]."""
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(images)  # [B,C,h,w]
        _, _, h, w = feats.shape
        x = self.norm(self.proj(feats.flatten(2).transpose(1, 2)))  # [B,h*w,D]
        return self.drop(x + grid_positions(h, w, x.shape[-1], x.device, x.dtype))
