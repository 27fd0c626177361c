"""PIL renderer of SynthCities street views.

A place is drawn once onto a square *canonical canvas* twice the output size (static scene:
sky, neighbours, facade with material texture, roof, windows, ground floor, street furniture).
Each view is then a crop of that canvas (camera shift and zoom) resized to the output size,
with transient distractors (cars, pedestrians, bicycles, a close vehicle or passer-by that
occludes part of the frame) drawn on top and a per-view lighting change. Drawing once at
double resolution keeps sign text legible after the zoom and makes several views per place cheap.

Distractors are exactly what descriptions never mention: they change the image, not the place.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dlgpr.data.schema import Region
from dlgpr.data.synth.layout import CURB_Y, GROUND_Y, Box, Layout
from dlgpr.data.synth.text import region_phrase
from dlgpr.data.synth.world import NONE

RGB = tuple[int, int, int]

COLOR_RGB: dict[str, RGB] = {
    "red": (200, 40, 40), "orange": (230, 130, 40), "yellow": (235, 200, 60), "green": (60, 150, 70),
    "blue": (50, 90, 190), "teal": (40, 150, 150), "purple": (120, 60, 150), "pink": (235, 140, 170),
    "white": (240, 240, 235), "grey": (140, 140, 140), "black": (35, 35, 35), "brown": (120, 75, 40),
    "beige": (220, 200, 160),
}
_GLASS: RGB = (60, 80, 105)
_DARK: RGB = (30, 30, 35)
_ROOF_RGB: dict[str, RGB] = {"gabled": (150, 65, 45), "mansard": (75, 80, 90), "hipped": (100, 72, 55)}
_SIDEWALK_RGB: dict[str, RGB] = {"cobblestone": (150, 140, 125), "paved": (185, 180, 170), "asphalt": (90, 90, 95)}
_STREET: RGB = (65, 65, 70)
_NEIGHBOUR_TONES: tuple[RGB, ...] = ((170, 165, 155), (150, 150, 155), (185, 175, 160), (130, 125, 120),
                                     (160, 150, 140))
_SKIES: tuple[RGB, ...] = ((140, 185, 230), (175, 205, 235), (195, 205, 215), (160, 195, 225))
_TRANSIENT_COLORS: tuple[RGB, ...] = ((200, 30, 30), (30, 60, 160), (230, 230, 230), (20, 20, 20), (120, 120, 125),
                                      (200, 170, 40), (40, 120, 60), (150, 60, 130))
_SKIN: tuple[RGB, ...] = ((240, 200, 170), (200, 150, 110), (140, 95, 65), (95, 65, 45))

#: Minimum side (relative to the view) of a region box that is kept after clipping to the frame.
_MIN_REGION_SIDE = 0.01
#: Fraction of an element's area that must be inside the frame for its region to be kept.
_MIN_VISIBLE_FRACTION = 0.2


@dataclass(frozen=True)
class ViewParams:
    """Per-view nuisance settings (the generation config's rendering knobs)."""

    distractor_rate: float = 1.0
    occlusion_prob: float = 0.3
    occlusion_max_fraction: float = 0.35
    min_zoom: float = 0.70  # side of the crop relative to the canonical canvas (smaller = closer)
    max_zoom: float = 0.92


def shade(rgb: RGB, factor: float) -> RGB:
    """Darken (factor < 1) or lighten towards white (factor > 1)."""
    if factor <= 1.0:
        return tuple(int(c * factor) for c in rgb)  # type: ignore[return-value]
    t = min(1.0, factor - 1.0)
    return tuple(int(c + (255 - c) * t) for c in rgb)  # type: ignore[return-value]


def _text_color(rgb: RGB) -> RGB:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (20, 20, 20) if luminance > 140 else (250, 250, 245)


@lru_cache(maxsize=64)
def _font(size_px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(6, size_px))  # type: ignore[return-value]


@lru_cache(maxsize=32)
def _texture(kind: str, side: int) -> Image.Image:
    """An ``L`` mask of joints/speckle over the whole canvas for a facade material or sidewalk.

    Masks are cached per process; they are pure functions of ``kind`` and ``side`` (the speckle
    uses a fixed seed), so every worker draws the same texture.
    """
    yy, xx = np.indices((side, side))
    u = side / 256  # texture periods are set for a 256 px canvas and scale with it

    def grid(row_h: float, col_w: float, stagger: bool, line: int = 1) -> np.ndarray:
        row_h, col_w = max(2, round(row_h * u)), max(3, round(col_w * u))
        course = yy // row_h
        shift = (course % 2) * (col_w // 2) if stagger else 0
        return ((yy % row_h) < line) | (((xx + shift) % col_w) < line)

    speckle_rng = np.random.default_rng(1234)
    if kind == "brick":
        mask = grid(4, 10, True).astype(np.uint8) * 200
    elif kind == "stone":
        mask = grid(9, 16, True).astype(np.uint8) * 210
    elif kind == "wood":
        plank = max(2, round(5 * u))  # horizontal planks with butt joints scattered along each row
        mask = ((yy % plank) == 0) | (((xx + (yy // plank) * round(13 * u)) % max(4, round(60 * u))) == 0)
        mask = mask.astype(np.uint8) * 170
    elif kind == "concrete":
        mask = grid(26, 34, False).astype(np.uint8) * 150 + (speckle_rng.random((side, side)) < 0.05) * 60
    elif kind == "glass":
        mask = grid(14, 18, False, line=max(1, round(2 * u))).astype(np.uint8) * 255
    elif kind == "stucco":
        mask = (speckle_rng.random((side, side)) < 0.08).astype(np.uint8) * 70
    elif kind == "cobblestone":
        mask = grid(5, 6, True).astype(np.uint8) * 170
    elif kind == "paved":
        mask = grid(14, 22, False).astype(np.uint8) * 150
    elif kind == "asphalt":
        mask = (speckle_rng.random((side, side)) < 0.10).astype(np.uint8) * 90
    else:
        raise ValueError(f"unknown texture {kind!r}")
    return Image.fromarray(mask.astype(np.uint8), mode="L")


# Colour of the joints drawn through the texture mask, as a shade of the surface colour.
_JOINT_SHADE = {"brick": 1.45, "stone": 0.65, "wood": 0.6, "concrete": 0.75, "glass": 0.35, "stucco": 0.85,
                "cobblestone": 0.6, "paved": 0.7, "asphalt": 1.35}


class _Canvas:
    """Drawing helpers in canonical relative coordinates."""

    def __init__(self, side: int) -> None:
        self.side = side
        self.image = Image.new("RGB", (side, side))
        self.draw = ImageDraw.Draw(self.image)
        self.line_w = max(1, side // 160)

    def px(self, box: Box) -> tuple[float, float, float, float]:
        s = self.side
        # The -1 makes the far edge inclusive; at small sides a part thinner than a pixel would end
        # before it starts (PIL rejects that), so it is clamped to one pixel. Wider parts are unchanged.
        x0, y0 = box[0] * s, box[1] * s
        return (x0, y0, max(x0, box[2] * s - 1), max(y0, box[3] * s - 1))

    def rect(self, box: Box, fill: RGB, outline: RGB | None = None) -> None:
        self.draw.rectangle(self.px(box), fill=fill, outline=outline, width=self.line_w)

    def ellipse(self, box: Box, fill: RGB, outline: RGB | None = None) -> None:
        self.draw.ellipse(self.px(box), fill=fill, outline=outline, width=self.line_w)

    def polygon(self, points: list[tuple[float, float]], fill: RGB, outline: RGB | None = None) -> None:
        self.draw.polygon([(x * self.side, y * self.side) for x, y in points], fill=fill, outline=outline)

    def line(self, points: list[tuple[float, float]], fill: RGB, width: float) -> None:
        self.draw.line([(x * self.side, y * self.side) for x, y in points], fill=fill,
                       width=max(1, round(width * self.side)))

    def texture(self, box: Box, kind: str, base: RGB) -> None:
        s = self.side
        ibox = (max(0, round(box[0] * s)), max(0, round(box[1] * s)), min(s, round(box[2] * s)), min(s, round(box[3] * s)))
        if ibox[2] > ibox[0] and ibox[3] > ibox[1]:
            self.image.paste(shade(base, _JOINT_SHADE[kind]), ibox, _texture(kind, s).crop(ibox))

    def text(self, box: Box, text: str, fill: RGB, height_frac: float = 0.72) -> None:
        s = self.side
        w_px, h_px = (box[2] - box[0]) * s, (box[3] - box[1]) * s
        size = int(h_px * height_frac)
        font = _font(size)
        while size > 6 and font.getlength(text) > w_px * 0.9:
            size -= 1
            font = _font(size)
        self.draw.text(((box[0] + box[2]) / 2 * s, (box[1] + box[3]) / 2 * s), text, font=font, fill=fill, anchor="mm")


def _draw_backdrop(c: _Canvas, layout: Layout, rng: random.Random) -> None:
    sky = rng.choice(_SKIES)
    for i in range(6):  # sky brightening towards the horizon
        c.rect((0.0, i / 6 * GROUND_Y, 1.0, (i + 1) / 6 * GROUND_Y + 0.01), shade(sky, 1.0 + 0.05 * i))
    for _ in range(rng.randint(0, 2)):
        cx, cy, w = rng.uniform(0.0, 1.0), rng.uniform(0.03, 0.25), rng.uniform(0.1, 0.25)
        c.ellipse((cx - w / 2, cy - w / 6, cx + w / 2, cy + w / 6), (245, 245, 248))
    fx0, _, fx1, _ = layout.facade
    for x0, x1 in ((0.0, fx0), (fx1, 1.0)):  # neutral neighbouring buildings
        tone, top = rng.choice(_NEIGHBOUR_TONES), rng.uniform(0.15, 0.55)
        c.rect((x0, top, x1, GROUND_Y), tone)
        for wy in np.arange(top + 0.04, GROUND_Y - 0.08, 0.11):
            for wx in np.arange(x0 + 0.02, x1 - 0.04, 0.07):
                c.rect((wx, wy, wx + 0.035, wy + 0.05), shade(tone, 0.5))
    c.rect(layout.street, _STREET)
    c.line([(0.0, 0.965), (1.0, 0.965)], (225, 225, 215), 0.006)
    for x in np.arange(0.03, 1.0, 0.12):  # lane dashes on top of the solid edge line
        c.line([(x, 0.965), (x + 0.05, 0.965)], _STREET, 0.006)


def _draw_sidewalk(c: _Canvas, layout: Layout, kind: str) -> None:
    base = _SIDEWALK_RGB[kind]
    c.rect(layout.sidewalk, base)
    c.texture(layout.sidewalk, kind, base)
    c.line([(0.0, CURB_Y), (1.0, CURB_Y)], shade(base, 0.55), 0.006)


def _draw_facade(c: _Canvas, layout: Layout, attrs: dict[str, Any]) -> None:
    base, trim = COLOR_RGB[attrs["facade_color"]], COLOR_RGB[attrs["trim_color"]]
    c.rect(layout.facade, base)
    c.texture(layout.facade, attrs["material"], base)
    x0, top, x1, _ = layout.facade
    roof = attrs["roof"]
    rx0, ry0, rx1, ry1 = layout.roof
    if roof == "flat":
        c.rect(layout.roof, trim, _DARK)
    elif roof == "gabled":
        c.polygon([(rx0, ry1), ((rx0 + rx1) / 2, ry0), (rx1, ry1)], _ROOF_RGB[roof], _DARK)
    elif roof == "hipped":
        c.polygon([(rx0, ry1), (rx0 + 0.12, ry0), (rx1 - 0.12, ry0), (rx1, ry1)], _ROOF_RGB[roof], _DARK)
    else:  # mansard, with a dormer per window column
        c.polygon([(rx0, ry1), (rx0 + 0.04, ry0), (rx1 - 0.04, ry0), (rx1, ry1)], _ROOF_RGB[roof], _DARK)
        n = attrs["windows_per_floor"]
        for i in range(n):
            cx = x0 + (i + 0.5) * (x1 - x0) / n
            c.rect((cx - 0.015, ry0 + 0.03, cx + 0.015, ry1 - 0.015), _GLASS, trim)
    if attrs["floors"] > 1:  # string course between the shop floor and the floors above
        c.rect((x0, layout.floors[0][1] - 0.006, x1, layout.floors[0][1] + 0.004), trim)


def _draw_window(c: _Canvas, box: Box, style: str, trim: RGB) -> None:
    x0, y0, x1, y1 = box
    pad = 0.004
    if style == "round":
        c.ellipse(box, trim)
        c.ellipse((x0 + pad, y0 + pad, x1 - pad, y1 - pad), _GLASS)
        return
    if style == "arched":
        w = x1 - x0
        c.ellipse((x0, y0, x1, y0 + w), trim)
        c.rect((x0, y0 + w / 2, x1, y1), trim)
        c.ellipse((x0 + pad, y0 + pad, x1 - pad, y0 + w - pad), _GLASS)
        c.rect((x0 + pad, y0 + w / 2, x1 - pad, y1 - pad), _GLASS)
    else:
        c.rect(box, trim)
        c.rect((x0 + pad, y0 + pad, x1 - pad, y1 - pad), _GLASS)
    c.line([((x0 + x1) / 2, y0 + pad), ((x0 + x1) / 2, y1 - pad)], trim, 0.003)  # mullion
    c.line([(x0 + pad * 2, y0 + pad * 2), (x0 + (x1 - x0) * 0.45, y0 + pad * 2)], (150, 175, 200), 0.003)  # glint


def _draw_openings(c: _Canvas, layout: Layout, attrs: dict[str, Any]) -> None:
    trim = COLOR_RGB[attrs["trim_color"]]
    if attrs["shutters"] != NONE:
        col = COLOR_RGB[attrs["shutters"]]
        for box in layout.shutters:
            c.rect(box, col, shade(col, 0.6))
    for box in layout.windows:
        _draw_window(c, box, attrs["window_style"], trim)
    for box in layout.shop_windows:
        c.rect(box, trim)
        c.rect((box[0] + 0.005, box[1] + 0.005, box[2] - 0.005, box[3] - 0.005), _GLASS)
        c.line([(box[0] + 0.01, box[1] + 0.012), (box[0] + (box[2] - box[0]) * 0.5, box[1] + 0.012)],
               (150, 175, 200), 0.004)
    if attrs["flower_boxes"] != NONE:
        bloom = COLOR_RGB[attrs["flower_boxes"]]
        for box in layout.flower_boxes:
            x0, y0, x1, y1 = box
            for k in range(4):
                fx = x0 + (k + 0.5) * (x1 - x0) / 4
                c.ellipse((fx - 0.008, y0 - 0.012, fx + 0.008, y0 + 0.004), (50, 120, 50))
                c.ellipse((fx - 0.005, y0 - 0.014, fx + 0.005, y0 - 0.004), bloom)
            c.rect(box, (120, 80, 45), _DARK)
    if layout.balcony is not None:
        _draw_balcony(c, layout.balcony, attrs["balcony"])


def _draw_balcony(c: _Canvas, box: Box, kind: str) -> None:
    x0, y0, x1, y1 = box
    slab = (x0 - 0.005, y1 - 0.012, x1 + 0.005, y1)
    if kind == "iron":
        c.line([(x0, y0), (x1, y0)], _DARK, 0.005)
        for x in np.arange(x0, x1 + 1e-6, 0.012):
            c.line([(x, y0), (x, y1)], _DARK, 0.003)
        c.rect(slab, (110, 110, 115))
    elif kind == "stone":
        c.rect(box, (205, 200, 185), (120, 115, 105))
        for x in np.arange(x0 + 0.015, x1 - 0.01, 0.025):
            c.rect((x, y0 + 0.012, x + 0.01, y1 - 0.015), (150, 145, 135))
        c.rect(slab, (170, 165, 150))
    else:  # wooden
        c.rect(box, (140, 95, 50), (80, 50, 25))
        for x in np.arange(x0 + 0.012, x1, 0.014):
            c.line([(x, y0), (x, y1)], (95, 60, 30), 0.002)
        c.rect(slab, (100, 65, 35))


def _draw_ground_floor(c: _Canvas, layout: Layout, attrs: dict[str, Any]) -> None:
    door_col, trim = COLOR_RGB[attrs["door_color"]], COLOR_RGB[attrs["trim_color"]]
    x0, y0, x1, y1 = layout.door
    c.rect((x0 - 0.006, y0 - 0.006, x1 + 0.006, y1), trim)
    c.rect(layout.door, door_col, _DARK)
    pw, ph = (x1 - x0) * 0.3, (y1 - y0) * 0.3
    for py in (y0 + 0.1 * (y1 - y0), y0 + 0.55 * (y1 - y0)):
        c.rect((x0 + 0.12 * (x1 - x0), py, x0 + 0.12 * (x1 - x0) + pw, py + ph), shade(door_col, 0.8))
        c.rect((x1 - 0.12 * (x1 - x0) - pw, py, x1 - 0.12 * (x1 - x0), py + ph), shade(door_col, 0.8))
    c.ellipse((x1 - 0.014, (y0 + y1) / 2, x1 - 0.006, (y0 + y1) / 2 + 0.008), (210, 180, 60))
    c.rect(layout.number_plate, (235, 235, 240), (40, 50, 110))
    c.text(layout.number_plate, str(attrs["house_number"]), (30, 40, 110), height_frac=0.85)
    if layout.sign is not None:
        col = COLOR_RGB[attrs["sign_color"]]
        c.rect(layout.sign, col, shade(col, 0.5))
        c.text(layout.sign, attrs["shop_sign"], _text_color(col))
    if layout.awning is not None:
        _draw_awning(c, layout.awning, COLOR_RGB[attrs["awning"]], attrs["awning_pattern"] == "striped")


def _draw_awning(c: _Canvas, box: Box, col: RGB, striped: bool) -> None:
    x0, y0, x1, y1 = box
    inset = 0.015
    c.polygon([(x0 + inset, y0), (x1 - inset, y0), (x1, y1), (x0, y1)], col, shade(col, 0.5))
    if striped:
        n = 7
        for k in range(1, n, 2):  # white bands, each a slice of the trapezoid
            t0, t1 = k / n, (k + 1) / n
            top0, top1 = x0 + inset + t0 * (x1 - x0 - 2 * inset), x0 + inset + t1 * (x1 - x0 - 2 * inset)
            bot0, bot1 = x0 + t0 * (x1 - x0), x0 + t1 * (x1 - x0)
            c.polygon([(top0, y0), (top1, y0), (bot1, y1), (bot0, y1)], (245, 245, 240))
    c.line([(x0, y1), (x1, y1)], shade(col, 0.6), 0.004)


def _draw_street_furniture(c: _Canvas, layout: Layout, attrs: dict[str, Any]) -> None:
    if layout.bench is not None:
        x0, y0, x1, y1 = layout.bench
        h = y1 - y0
        c.rect((x0 + 0.01, y0 + 0.45 * h, x0 + 0.016, y1), _DARK)
        c.rect((x1 - 0.016, y0 + 0.45 * h, x1 - 0.01, y1), _DARK)
        c.rect((x0, y0, x1, y0 + 0.2 * h), (125, 85, 45), (70, 45, 20))  # backrest
        c.rect((x0, y0 + 0.45 * h, x1, y0 + 0.62 * h), (125, 85, 45), (70, 45, 20))  # seat
    if layout.phone_booth is not None:
        col = COLOR_RGB[attrs["phone_booth_color"]]
        x0, y0, x1, y1 = layout.phone_booth
        c.rect(layout.phone_booth, col, shade(col, 0.5))
        c.rect((x0, y0, x1, y0 + 0.02), shade(col, 0.7))
        c.rect((x0 + 0.008, y0 + 0.024, x1 - 0.008, y0 + 0.032), (245, 245, 240))  # "PHONE" band
        for row in range(3):
            py = y0 + 0.04 + row * 0.045
            c.rect((x0 + 0.01, py, x1 - 0.01, py + 0.037), (175, 205, 225))
    if layout.tree is not None and layout.tree_crown is not None:
        cx0, cy0, cx1, cy1 = layout.tree_crown
        tx = (cx0 + cx1) / 2
        c.rect((tx - 0.012, (cy0 + cy1) / 2, tx + 0.012, layout.tree[3]), (95, 65, 40))
        r = (cx1 - cx0) / 2
        for dx, dy, k, tone in ((0.0, 0.0, 1.0, (55, 120, 50)), (-0.45, 0.2, 0.65, (70, 140, 60)),
                                (0.45, 0.15, 0.7, (45, 105, 45)), (0.1, -0.4, 0.6, (80, 150, 70))):
            ex, ey = tx + dx * r, (cy0 + cy1) / 2 + dy * r
            c.ellipse((ex - k * r, ey - k * r, ex + k * r, ey + k * r), tone)
    if layout.street_lamp is not None:
        x0, y0, x1, y1 = layout.street_lamp
        lx = (x0 + x1) / 2
        c.line([(lx, y1), (lx, y0 + 0.03)], (40, 40, 45), 0.008)
        c.rect((x0 + 0.006, y0 + 0.008, x1 - 0.006, y0 + 0.04), (250, 230, 150), (40, 40, 45))
        c.polygon([(x0, y0 + 0.01), (lx, y0), (x1, y0 + 0.01)], (40, 40, 45))


def render_place(attrs: dict[str, Any], layout: Layout, side: int, rng: random.Random) -> Image.Image:
    """The static scene of a place on a ``side x side`` canonical canvas; ``rng`` picks the backdrop."""
    c = _Canvas(side)
    _draw_backdrop(c, layout, rng)
    _draw_sidewalk(c, layout, attrs["sidewalk"])
    _draw_facade(c, layout, attrs)
    _draw_openings(c, layout, attrs)
    _draw_ground_floor(c, layout, attrs)
    _draw_street_furniture(c, layout, attrs)
    return c.image


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _draw_car(d: ImageDraw.ImageDraw, rng: random.Random, x: float, base: float, k: float) -> None:
    length, height = 0.30 * k, 0.10 * k
    col, wheel_r = rng.choice(_TRANSIENT_COLORS), 0.022 * k
    d.rounded_rectangle((x, base - 0.55 * height - wheel_r * 0.6, x + length, base - wheel_r * 0.6),
                        radius=max(1.0, 0.15 * height), fill=col, outline=shade(col, 0.5))
    d.polygon([(x + 0.2 * length, base - 0.55 * height - wheel_r * 0.6), (x + 0.3 * length, base - height),
               (x + 0.72 * length, base - height), (x + 0.82 * length, base - 0.55 * height - wheel_r * 0.6)],
              fill=col, outline=shade(col, 0.5))
    d.polygon([(x + 0.29 * length, base - 0.6 * height), (x + 0.34 * length, base - 0.93 * height),
               (x + 0.69 * length, base - 0.93 * height), (x + 0.76 * length, base - 0.6 * height)],
              fill=(120, 150, 175))
    for wx in (x + 0.2 * length, x + 0.8 * length):
        d.ellipse((wx - wheel_r, base - 2 * wheel_r, wx + wheel_r, base), fill=(20, 20, 20))


def _draw_pedestrian(d: ImageDraw.ImageDraw, rng: random.Random, x: float, base: float, k: float) -> None:
    h = rng.uniform(0.17, 0.21) * k
    head, shirt, legs = rng.choice(_SKIN), rng.choice(_TRANSIENT_COLORS), rng.choice(_TRANSIENT_COLORS[1:5])
    w = 0.28 * h
    d.line([(x + 0.3 * w, base - 0.45 * h), (x + 0.15 * w, base)], fill=legs, width=max(1, round(0.1 * h)))
    d.line([(x + 0.7 * w, base - 0.45 * h), (x + 0.85 * w, base)], fill=legs, width=max(1, round(0.1 * h)))
    d.rounded_rectangle((x, base - 0.82 * h, x + w, base - 0.42 * h), radius=max(1.0, 0.2 * w), fill=shirt)
    d.ellipse((x + 0.2 * w, base - h, x + 0.8 * w, base - 0.8 * h), fill=head)


def _draw_bicycle(d: ImageDraw.ImageDraw, rng: random.Random, x: float, base: float, k: float) -> None:
    r, col = 0.035 * k, rng.choice(_TRANSIENT_COLORS)
    lw = max(1, round(0.006 * k))
    back, front = (x + r, base - r), (x + 3.2 * r, base - r)
    for cx, cy in (back, front):
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(25, 25, 25), width=lw)
    seat, bar = (x + 1.6 * r, base - 2.3 * r), (x + 2.9 * r, base - 2.5 * r)
    d.line([back, seat, (x + 2.0 * r, base - r), back], fill=col, width=lw)
    d.line([seat, bar, front], fill=col, width=lw)
    d.line([(x + 2.0 * r, base - r), bar], fill=col, width=lw)


def _draw_occluder(d: ImageDraw.ImageDraw, rng: random.Random, size: int, max_fraction: float) -> None:
    """A vehicle or passer-by right in front of the camera, covering one side of the frame."""
    frac = rng.uniform(min(0.1, max_fraction), max_fraction)
    w, top = frac * size, size * (1.0 - rng.uniform(0.35, 0.65))
    x0 = 0.0 if rng.random() < 0.5 else size - w
    col = rng.choice(_TRANSIENT_COLORS)
    if rng.random() < 0.6:  # the side of a parked van
        d.rounded_rectangle((x0 - 2, top, x0 + w + 2, size + 4), radius=0.06 * size, fill=col, outline=shade(col, 0.5))
        d.rectangle((x0 + 0.1 * w, top + 0.08 * size, x0 + 0.9 * w, top + 0.2 * size), fill=(110, 135, 160))
        wheel = 0.09 * size
        wx = x0 + w / 2
        d.ellipse((wx - wheel, size - wheel, wx + wheel, size + wheel), fill=(20, 20, 20))
    else:  # a passer-by close to the lens: head and shoulders
        cx = x0 + w / 2
        d.rounded_rectangle((x0, top + 0.35 * (size - top), x0 + w, size + 10), radius=0.25 * w, fill=col)
        hr = min(0.3 * w, 0.2 * (size - top))
        d.ellipse((cx - hr, top, cx + hr, top + 2.2 * hr), fill=rng.choice(_SKIN))


def _light_lut(rng: random.Random) -> list[int]:
    """Brightness and colour temperature of the moment the view was taken, as a ``point`` table."""
    brightness, warmth = rng.uniform(0.72, 1.18), rng.uniform(-0.08, 0.08)
    gains = np.array([brightness * (1 + warmth), brightness, brightness * (1 - warmth)])
    return np.minimum(255, np.arange(256)[None, :] * gains[:, None]).astype(np.uint8).ravel().tolist()


def _to_view(box: Box, crop: tuple[float, float, float]) -> tuple[float, float, float, float] | None:
    """Canonical box -> view box clipped to the frame, or None if (mostly) out of frame."""
    cx0, cy0, s = crop
    x0, y0, x1, y1 = ((box[0] - cx0) / s, (box[1] - cy0) / s, (box[2] - cx0) / s, (box[3] - cy0) / s)
    area = (x1 - x0) * (y1 - y0)
    x0, y0, x1, y1 = round(max(0.0, x0), 4), round(max(0.0, y0), 4), round(min(1.0, x1), 4), round(min(1.0, y1), 4)
    if x1 - x0 < _MIN_REGION_SIDE or y1 - y0 < _MIN_REGION_SIDE:
        return None
    if (x1 - x0) * (y1 - y0) < _MIN_VISIBLE_FRACTION * area:
        return None
    return x0, y0, x1, y1


def render_view(canvas: Image.Image, layout: Layout, attrs: dict[str, Any], size: int, rng: random.Random,
                params: ViewParams) -> tuple[Image.Image, list[Region]]:
    """One ``size x size`` view of a place and the regions of its static elements in that view.

    ``rng`` decides the camera crop, distractors, occlusion and lighting of this view only.
    """
    s = rng.uniform(params.min_zoom, params.max_zoom)
    # The camera may cut off either end of the facade but always keeps the door in frame.
    cx0 = rng.uniform(max(0.0, layout.door[2] - s), min(1.0 - s, layout.door[0]))
    cy0 = rng.uniform(max(0.0, CURB_Y + 0.04 - s), 1.0 - s)  # keep the sidewalk and kerb in frame
    side = canvas.size[0]
    view = canvas.resize((size, size), Image.Resampling.BILINEAR,
                         box=(cx0 * side, cy0 * side, (cx0 + s) * side, (cy0 + s) * side))
    d = ImageDraw.Draw(view)
    k = size / s  # view pixels per canonical unit

    def to_px_y(y: float) -> float:
        return (y - cy0) / s * size

    # Far-to-near: pedestrians on the sidewalk are behind the cars on the street.
    items = []
    for _ in range(_poisson(rng, params.distractor_rate)):
        kind = rng.choices(("car", "pedestrian", "bicycle"), weights=(0.45, 0.4, 0.15))[0]
        y = rng.uniform(CURB_Y + 0.05, CURB_Y + 0.095) if kind == "car" else rng.uniform(GROUND_Y + 0.03, CURB_Y)
        items.append((y, kind, rng.uniform(-0.15, 0.95) * size))
    for y, kind, x in sorted(items):
        {"car": _draw_car, "pedestrian": _draw_pedestrian, "bicycle": _draw_bicycle}[kind](d, rng, x, to_px_y(y), k)
    if rng.random() < params.occlusion_prob:
        _draw_occluder(d, rng, size, params.occlusion_max_fraction)
    view = view.point(_light_lut(rng))

    crop = (cx0, cy0, s)
    regions = []
    for element, box in layout.element_boxes().items():
        vbox = _to_view(box, crop)
        if vbox is not None:
            regions.append(Region(phrase=region_phrase(element, attrs), box=vbox))
    return view, regions
