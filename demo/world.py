"""A small captioning world the demo can download, learn and be scored on, with no internet.

Each scene is two coloured shapes in a spatial relation on a textured background:

    scene = Scene.sample(random.Random(7))
    scene.render(320)            # a PIL image
    scene.references()           # five paraphrases, Flickr30K style: "a red circle above a blue square"
    scene.llava_caption()        # a RELAION-POP-style paragraph whose first sentence is the short caption

The scene is fully determined by (seed, index), so the HTTP server renders an image from its URL
alone and the parquet, the server and the held-out references always agree.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 170),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
# relation of the first shape to the second -> (phrases, inverse relation, offset of the first)
RELATIONS = {
    "above": (("above", "on top of", "over"), "below", (0, -1)),
    "below": (("below", "under", "beneath"), "above", (0, 1)),
    "left": (("to the left of", "left of", "beside and left of"), "right", (-1, 0)),
    "right": (("to the right of", "right of", "beside and right of"), "left", (1, 0)),
}
TEXTURES = ("plain", "stripes", "checks", "noise", "gradient")
_TEXTURE_WORDS = {
    "plain": "plain",
    "stripes": "striped",
    "checks": "checkered",
    "noise": "grainy",
    "gradient": "shaded",
}
_BACKGROUNDS = ((200, 190, 170), (150, 170, 190), (170, 200, 160), (120, 120, 120), (210, 180, 200))


@dataclass(frozen=True)
class Scene:
    colour_a: str
    shape_a: str
    colour_b: str
    shape_b: str
    relation: str
    texture: str
    background: tuple[int, int, int]
    jitter: int

    @classmethod
    def sample(cls, rng: random.Random) -> Scene:
        colour_a, colour_b = rng.sample(sorted(COLOURS), 2)
        return cls(
            colour_a=colour_a,
            shape_a=rng.choice(SHAPES),
            colour_b=colour_b,
            shape_b=rng.choice(SHAPES),
            relation=rng.choice(sorted(RELATIONS)),
            texture=rng.choice(TEXTURES),
            background=rng.choice(_BACKGROUNDS),
            jitter=rng.randrange(1 << 30),
        )

    @classmethod
    def for_index(cls, seed: int, index: int) -> Scene:
        return cls.sample(random.Random(f"{seed}:{index}"))

    # --- captions ---
    def short_caption(self, rng: random.Random | None = None, swap: bool = False) -> str:
        """'a red circle above a blue square' (or the same scene told from the other shape)."""
        phrases, inverse, _ = RELATIONS[self.relation]
        first, second, relation = (self.colour_a, self.shape_a), (self.colour_b, self.shape_b), self.relation
        if swap:
            first, second, relation = second, first, inverse
            phrases = RELATIONS[relation][0]
        phrase = rng.choice(phrases) if rng else phrases[0]
        return f"{_a(first[0])} {first[0]} {first[1]} {phrase} {_a(second[0])} {second[0]} {second[1]}"

    def references(self, n: int = 5) -> list[str]:
        """n paraphrases, as five annotators might write them."""
        rng = random.Random(self.jitter)
        forms = [
            lambda: self.short_caption(),
            lambda: self.short_caption(swap=True),
            lambda: "there is " + self.short_caption(rng),
            lambda: self.short_caption(rng) + f" on a {_TEXTURE_WORDS[self.texture]} background",
            lambda: self.short_caption(rng, swap=True),
        ]
        return [forms[i % len(forms)]() for i in range(n)]

    def llava_caption(self) -> str:
        """A paragraph in RELAION-POP's LLaVA style; its first sentence is the short caption."""
        first = self.short_caption()
        return (
            f"{first[0].upper()}{first[1:]}. The {self.shape_a} is {self.colour_a} and the "
            f"{self.shape_b} is {self.colour_b}. The background is {_TEXTURE_WORDS[self.texture]} in muted tones, "
            f"giving the composition a calm and simple look."
        )

    def alt_text(self) -> str:
        return f"{self.colour_a} {self.shape_a} and {self.colour_b} {self.shape_b}"

    # --- pixels ---
    def render(self, size: int = 320) -> Image.Image:
        rng = random.Random(self.jitter)
        image = _texture(self.texture, self.background, size, rng)
        draw = ImageDraw.Draw(image)
        shape_size = int(size * rng.uniform(0.2, 0.28))
        dx, dy = RELATIONS[self.relation][2]
        gap = shape_size * rng.uniform(0.75, 1.0)
        cx, cy = size / 2 + rng.uniform(-0.08, 0.08) * size, size / 2 + rng.uniform(-0.08, 0.08) * size
        _shape(draw, self.shape_a, (cx + dx * gap, cy + dy * gap), shape_size, COLOURS[self.colour_a])
        _shape(draw, self.shape_b, (cx - dx * gap, cy - dy * gap), shape_size, COLOURS[self.colour_b])
        return image.filter(ImageFilter.GaussianBlur(0.6))


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _texture(kind: str, base: tuple[int, int, int], size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(image)
    darker = tuple(max(0, c - 35) for c in base)
    step = max(4, size // rng.randint(8, 16))
    if kind == "stripes":
        for x in range(-size, size, step * 2):
            draw.polygon([(x, 0), (x + step, 0), (x + step + size, size), (x + size, size)], fill=darker)
    elif kind == "checks":
        for y in range(0, size, step):
            for x in range((y // step % 2) * step, size, step * 2):
                draw.rectangle([x, y, x + step - 1, y + step - 1], fill=darker)
    elif kind == "noise":
        noise = Image.effect_noise((size, size), 40).convert("RGB")
        image = Image.blend(image, noise, 0.25)
    elif kind == "gradient":
        for y in range(size):
            t = y / size
            draw.line([(0, y), (size, y)], fill=tuple(int(c * (1 - 0.4 * t)) for c in base))
    return image


def _shape(draw: ImageDraw.ImageDraw, shape: str, centre: tuple[float, float], size: int, colour) -> None:
    x, y = centre
    r = size / 2
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(0, 0, 0))
    elif shape == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=colour, outline=(0, 0, 0))
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=colour, outline=(0, 0, 0))
    else:  # star
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = math.pi / 2 + i * math.pi / 5
            points.append((x + radius * math.cos(angle), y - radius * math.sin(angle)))
        draw.polygon(points, fill=colour, outline=(0, 0, 0))
