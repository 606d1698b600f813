"""The captioning model: a torchvision ResNet encoder and a Transformer decoder written here.

    cfg = ModelConfig.from_preset("tiny", tokenizer=tok)   # vocab_size and special ids from tok
    model = CaptionModel(cfg)
    logits = model(images, tokens)          # [B,3,H,W] normalised, [B,T] from BOS -> [B,T,V]
    print(format_parameter_counts(model.parameter_counts()))

    python -m streamcap.model base small tiny   # parameter counts of each preset, per part

Encoder (streamcap.model.encoder): the ResNet trunk up to its last feature map (`forward_features`),
a linear projection to the decoder width, LayerNorm and fixed 2D sine/cosine positions.
Decoder: token + learned position embeddings, pre-LayerNorm blocks of causal self-attention,
cross-attention over the image grid and a GELU feed-forward, tied input/output embeddings.
Attention is written out here; `F.scaled_dot_product_attention` is only the kernel. Decoding
goes through `init_cache`/`step`: self-attention K/V are cached per layer, the image's
cross-attention K/V are computed once (streamcap.model.decoding).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from streamcap.model.config import PRESETS, ModelConfig
from streamcap.model.encoder import ImageEncoder

__all__ = [
    "IMAGE_MEAN",
    "IMAGE_STD",
    "ModelConfig",
    "PRESETS",
    "CaptionModel",
    "ImageEncoder",
    "CaptionDecoder",
    "KVCache",
    "image_transform",
    "format_parameter_counts",
]

IMAGE_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics the torchvision trunks were trained with
IMAGE_STD = (0.229, 0.224, 0.225)


# --- decoder ---------------------------------------------------------------------------------


def _split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    b, t, d = x.shape
    return x.view(b, t, n_heads, d // n_heads).transpose(1, 2)  # [B,H,T,dh]


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)  # [B,T,D]


class LayerKV:
    """One block's decoding state: self-attention K/V so far (preallocated), the image's cross K/V."""

    def __init__(self, cross_k: torch.Tensor, cross_v: torch.Tensor, capacity: int) -> None:
        n, h, _, dh = cross_k.shape
        self.cross_k, self.cross_v = cross_k, cross_v  # [N,H,S,dh], computed once per image
        self.k = cross_k.new_empty(n, h, capacity, dh)
        self.v = cross_v.new_empty(n, h, capacity, dh)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store K/V of the new positions [N,H,T,dh]; return K/V of every position so far."""
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions, {end} requested")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        # Cross K/V stay: every row of one image holds the same ones, and rows never change image.
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)


class KVCache:
    """Decoding state of N sequences across all blocks; `reorder` follows beam search's choices."""

    def __init__(self, layers: list[LayerKV]) -> None:
        self.layers = layers

    @property
    def length(self) -> int:
        return self.layers[0].length

    def reorder(self, index: torch.Tensor) -> None:
        """Row i becomes old row index[i]; index[i] must be a row of the same image (beam search's
        reordering), since the image's cross-attention K/V are not moved."""
        for layer in self.layers:
            layer.reorder(index)


class SelfAttention(nn.Module):
    """Causal multi-head self-attention; with a LayerKV it attends to the cached positions too."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, cache: LayerKV | None = None) -> torch.Tensor:
        t = x.shape[1]
        q, k, v = (_split_heads(z, self.n_heads) for z in self.qkv(x).chunk(3, dim=2))  # [B,H,T,dh]
        p = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            k, v = cache.append(k, v)  # [B,H,past+T,dh]
            past = k.shape[2] - t
            # One new token sees everything cached; several see up to their own position.
            mask = None if t == 1 else torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(_merge_heads(y))


class CrossAttention(nn.Module):
    """Multi-head attention from the caption positions to the image grid."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the image grid [B,S,D] -> 2 x [B,H,S,dh]."""
        k, v = self.kv(memory).chunk(2, dim=2)
        return _split_heads(k, self.n_heads), _split_heads(v, self.n_heads)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = _split_heads(self.q(x), self.n_heads)  # [B,H,T,dh]
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(_merge_heads(y))


class DecoderBlock(nn.Module):
    """Pre-LN: x + SelfAttn(LN x), + CrossAttn(LN x, image), + FFN(LN x)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.self_attn = SelfAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.cross_attn = CrossAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ln3 = nn.LayerNorm(cfg.d_model)
        self.ffn = nn.Sequential(
            OrderedDict(
                fc=nn.Linear(cfg.d_model, cfg.d_ff),
                gelu=nn.GELU(),
                proj=nn.Linear(cfg.d_ff, cfg.d_model),
            )
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, mem_k: torch.Tensor, mem_v: torch.Tensor, cache: LayerKV | None = None
    ) -> torch.Tensor:
        x = x + self.drop(self.self_attn(self.ln1(x), cache))
        x = x + self.drop(self.cross_attn(self.ln2(x), mem_k, mem_v))
        return x + self.drop(self.ffn(self.ln3(x)))


class CaptionDecoder(nn.Module):
    """Tokens [N,T] and the image grid -> next-token logits [N,T,V] (output weights = embeddings)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Full (teacher-forced) pass; position t predicts token t+1."""
        return self.logits(self.hidden(tokens, memory))

    def hidden(self, tokens: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """The last block's output [N,T,D] for every position, without the cache."""
        x = self._embed(tokens, 0)
        for block in self.blocks:
            mem_k, mem_v = block.cross_attn.memory_kv(memory)
            x = block(x, mem_k, mem_v)
        return x

    def init_cache(self, memory: torch.Tensor, repeat: int = 1, capacity: int | None = None) -> KVCache:
        """Decoding state for memory [B,S,D], each image repeated `repeat` times (beams) in a row."""
        layers = []
        for block in self.blocks:
            k, v = block.cross_attn.memory_kv(memory)
            if repeat > 1:
                k, v = k.repeat_interleave(repeat, dim=0), v.repeat_interleave(repeat, dim=0)
            layers.append(LayerKV(k, v, capacity or self.cfg.max_len))
        return KVCache(layers)

    def step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits for tokens [N,T] that follow the cache.length tokens already fed; fills the cache."""
        x = self._embed(tokens, cache.length)
        for block, layer in zip(self.blocks, cache.layers):
            x = block(x, layer.cross_k, layer.cross_v, layer)
        return self.logits(x)

    def _embed(self, tokens: torch.Tensor, offset: int) -> torch.Tensor:
        t = tokens.shape[1]
        if offset + t > self.cfg.max_len:
            raise ValueError(f"sequence of {offset + t} tokens exceeds the model's max_len {self.cfg.max_len}")
        pos = torch.arange(offset, offset + t, device=tokens.device)
        return self.drop(self.tok_emb(tokens) + self.pos_emb(pos))  # [N,T,D]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states [N,T,D] -> logits [N,T,V] through the tied embedding."""
        return F.linear(self.ln_f(x), self.tok_emb.weight)


# --- the model -------------------------------------------------------------------------------


class CaptionModel(nn.Module):
    """Image encoder + caption decoder. `forward(images, tokens)` is the training pass."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ImageEncoder(cfg)
        self.decoder = CaptionDecoder(cfg)
        self._init_new_weights(cfg)

    def _init_new_weights(self, cfg: ModelConfig) -> None:
        # GPT-2 style: N(0, 0.02), residual output projections scaled down by depth.
        for module in [self.encoder.proj, *self.decoder.modules()]:
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for block in self.decoder.blocks:
            for proj in (block.self_attn.out, block.cross_attn.out, block.ffn.proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * cfg.n_layers))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [B,3,H,W] -> image grid memory [B,S,D]."""
        return self.encoder(images)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B,T] starting with BOS -> logits [B,T,V]; position t predicts token t+1."""
        return self.decoder(tokens, self.encode(images))

    @property
    def device(self) -> torch.device:
        return self.decoder.tok_emb.weight.device

    def parameter_counts(self) -> dict[str, int]:
        def count(m: nn.Module) -> int:
            return sum(p.numel() for p in m.parameters())

        trunk, encoder, decoder = count(self.encoder.trunk), count(self.encoder), count(self.decoder)
        embeddings = count(self.decoder.tok_emb) + count(self.decoder.pos_emb)
        return {
            "encoder": encoder,
            "encoder.trunk": trunk,
            "encoder.projection": encoder - trunk,
            "decoder": decoder,
            "decoder.embeddings": embeddings,
            "decoder.blocks": decoder - embeddings,
            "total": encoder + decoder,
        }

    def set_encoder_trainable(self, flag: bool) -> None:
        """Freeze (False) or unfreeze the ResNet trunk; projection and decoder always train.

        A frozen trunk also keeps its BatchNorm statistics fixed. Under DDP, change this before
        wrapping the model (DDP registers the parameters that require grad at construction).
        """
        for p in self.encoder.trunk.parameters():
            p.requires_grad_(flag)
        self.encoder.trunk_frozen = not flag
        self.train(self.training)

    def train(self, mode: bool = True) -> CaptionModel:
        super().train(mode)
        if self.encoder.trunk_frozen:
            self.encoder.trunk.eval()
        return self

    def param_groups(self, lr: float, encoder_lr: float | None = None, weight_decay: float = 0.0) -> list[dict]:
        """Optimizer groups: the trunk at `encoder_lr` (default: lr), the rest at `lr`."""
        trunk = list(self.encoder.trunk.parameters())
        trunk_ids = {id(p) for p in trunk}
        rest = [p for p in self.parameters() if id(p) not in trunk_ids]
        return [
            {
                "name": "encoder.trunk",
                "params": trunk,
                "lr": lr if encoder_lr is None else encoder_lr,
                "weight_decay": weight_decay,
            },
            {"name": "rest", "params": rest, "lr": lr, "weight_decay": weight_decay},
        ]


def format_parameter_counts(counts: dict[str, int]) -> str:
    """'encoder 44.1M (trunk 42.5M, projection 1.6M) | decoder ... | total ...'."""

    def m(n: int) -> str:
        return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n / 1e3:.1f}K"

    return (
        f"encoder {m(counts['encoder'])} (trunk {m(counts['encoder.trunk'])}, "
        f"projection {m(counts['encoder.projection'])}) | decoder {m(counts['decoder'])} "
        f"(embeddings {m(counts['decoder.embeddings'])}, blocks {m(counts['decoder.blocks'])}) | "
        f"total {m(counts['total'])}"
    )


class ImageTransform:
    """PIL image -> normalised [3,S,S] tensor: RGB, resize the short side, center crop.

    A class rather than a lambda pipeline so that DataLoader workers can pickle it.
    """

    def __init__(self, image_size: int) -> None:
        from torchvision import transforms

        self.image_size = image_size
        self._pipeline = transforms.Compose(
            [
                transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
                transforms.CenterCrop(image_size),
                transforms.ToTensor(),
                transforms.Normalize(IMAGE_MEAN, IMAGE_STD),
            ]
        )

    def __call__(self, image) -> torch.Tensor:
        return self._pipeline(image.convert("RGB") if image.mode != "RGB" else image)


def image_transform(cfg: ModelConfig) -> Callable[..., torch.Tensor]:
    """The inference/evaluation preprocessing the model expects (no augmentation)."""
    return ImageTransform(cfg.image_size)


def print_presets(names: list[str]) -> int:
    for name in names or sorted(PRESETS):
        cfg = ModelConfig.from_preset(name, pretrained=False)
        print(f"{name:6s} {cfg.backbone:9s} {format_parameter_counts(CaptionModel(cfg).parameter_counts())}")
    return 0
