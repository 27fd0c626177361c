"""Scene geometry of one place, shared by the renderer (what to draw where) and the text
generator (spatial relations such as "the phone booth stands left of the door").

All boxes are ``(x0, y0, x1, y1)`` in the coordinates of the square *canonical canvas* of the
place, relative to its side (0..1, y downwards). Views are crops of that canvas, so the
relations between static elements are the same in every view of a place.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from dlgpr.data.synth.world import NONE

Box = tuple[float, float, float, float]

GROUND_Y = 0.80  # base of the facade, top of the sidewalk
CURB_Y = 0.90  # sidewalk / street boundary
_SKY_MARGIN = 0.06  # minimum sky above the tallest roof
_GROUND_FLOOR_H = 0.22  # tall enough for a legible sign, an awning and a door
_MAX_UPPER_FLOOR_H = 0.13
ROOF_HEIGHT = {"flat": 0.02, "gabled": 0.12, "mansard": 0.10, "hipped": 0.07}
_SIGN_H = 0.06


@dataclass(frozen=True)
class Layout:
    facade: Box
    roof: Box  # bounding box of the roof shape, on top of the facade
    floors: tuple[Box, ...]  # index 0 is the ground floor
    windows: tuple[Box, ...]  # styled windows, row by row from the lowest floor that has them
    shop_windows: tuple[Box, ...]  # shop-front panes beside the door (multi-storey buildings only)
    shutters: tuple[Box, ...]
    flower_boxes: tuple[Box, ...]
    door: Box
    number_plate: Box
    sign: Box | None
    awning: Box | None
    balcony: Box | None
    phone_booth: Box | None
    bench: Box | None
    street_lamp: Box | None
    tree: Box | None
    tree_crown: Box | None
    sidewalk: Box
    street: Box

    def element_boxes(self) -> dict[str, Box]:
        """Boxes of the nameable static elements (region annotations); groups become their union box."""
        out: dict[str, Box] = {"facade": self.facade, "roof": self.roof, "door": self.door,
                               "house_number": self.number_plate, "sidewalk": self.sidewalk}
        for name, boxes in (("windows", self.windows), ("shop_windows", self.shop_windows),
                            ("shutters", self.shutters), ("flower_boxes", self.flower_boxes)):
            if boxes:
                out[name] = union(boxes)
        for name in ("sign", "awning", "balcony", "phone_booth", "bench", "street_lamp", "tree"):
            box = getattr(self, name)
            if box is not None:
                out[name] = box
        return out


def union(boxes: tuple[Box, ...] | list[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def center_x(box: Box) -> float:
    return (box[0] + box[2]) / 2


def _window_size(style: str, col_w: float, floor_h: float) -> tuple[float, float]:
    if style == "square":
        w = min(0.45 * col_w, 0.55 * floor_h)
        return w, w
    if style == "arched":
        w = min(0.40 * col_w, 0.45 * floor_h)
        return w, min(0.68 * floor_h, 1.5 * w)
    if style == "narrow":
        return min(0.25 * col_w, 0.30 * floor_h), 0.68 * floor_h
    d = min(0.40 * col_w, 0.50 * floor_h)  # round
    return d, d


def layout_place(attrs: dict[str, Any], rng: random.Random) -> Layout:
    """Place every static element; ``rng`` only jitters the facade extent."""
    x0, x1 = rng.uniform(0.14, 0.20), rng.uniform(0.80, 0.86)
    width = x1 - x0
    n_floors, n_cols = attrs["floors"], attrs["windows_per_floor"]
    roof_h = ROOF_HEIGHT[attrs["roof"]]
    upper_h = 0.0
    if n_floors > 1:
        upper_h = min(_MAX_UPPER_FLOOR_H, (GROUND_Y - _SKY_MARGIN - roof_h - _GROUND_FLOOR_H) / (n_floors - 1))
    ground_top = GROUND_Y - _GROUND_FLOOR_H
    top = ground_top - upper_h * (n_floors - 1)
    floors = [(x0, ground_top, x1, GROUND_Y)]
    floors += [(x0, ground_top - upper_h * k, x1, ground_top - upper_h * (k - 1)) for k in range(1, n_floors)]
    col_w = width / n_cols
    col_x = [x0 + (i + 0.5) * col_w for i in range(n_cols)]

    windows: list[Box] = []
    shutters: list[Box] = []
    if n_floors > 1:
        ww, wh = _window_size(attrs["window_style"], col_w, upper_h)
        for k in range(1, n_floors):
            cy = floors[k][1] + 0.48 * upper_h
            for cx in col_x:
                windows.append((cx - ww / 2, cy - wh / 2, cx + ww / 2, cy + wh / 2))

    door_w, door_h = min(0.08, 0.5 * col_w), 0.55 * _GROUND_FLOOR_H
    door_cx = {"left": col_x[0], "right": col_x[-1], "center": x0 + width / 2}[attrs["door_position"]]
    door = (door_cx - door_w / 2, GROUND_Y - door_h, door_cx + door_w / 2, GROUND_Y)

    margin = 0.012
    shop_windows: list[Box] = []
    if n_floors > 1:
        # The ground floor of a multi-storey building is a shop front: a large pane in every
        # window column the door does not take.
        for cx in col_x:
            if abs(cx - door_cx) < 1e-9:
                continue
            wx0, wx1 = cx - 0.36 * col_w, cx + 0.36 * col_w
            if wx0 < door[2] + margin and door[0] - margin < wx1:  # shrink away from a centred door
                if cx < door_cx:
                    wx1 = door[0] - margin
                else:
                    wx0 = door[2] + margin
            if wx1 - wx0 > 0.02:
                shop_windows.append((wx0, ground_top + 0.40 * _GROUND_FLOOR_H, wx1, GROUND_Y - 0.10 * _GROUND_FLOOR_H))
    else:
        # A one-storey building has its ``windows_per_floor`` styled windows on the ground floor,
        # split around the door (all on one side when the door is at an end).
        n_left = {"left": 0, "center": n_cols // 2, "right": n_cols}[attrs["door_position"]]
        slot_h = 0.55 * _GROUND_FLOOR_H
        for lo, hi, count in ((x0, door[0] - margin, n_left), (door[2] + margin, x1, n_cols - n_left)):
            if count == 0:
                continue
            slot_w = (hi - lo) / count
            ww, wh = _window_size(attrs["window_style"], slot_w, slot_h)
            cy = ground_top + 0.58 * _GROUND_FLOOR_H
            for i in range(count):
                cx = lo + (i + 0.5) * slot_w
                windows.append((cx - ww / 2, cy - wh / 2, cx + ww / 2, cy + wh / 2))

    if attrs["shutters"] != NONE:
        for w in windows:
            sw = 0.45 * (w[2] - w[0])
            shutters += [(w[0] - sw, w[1], w[0], w[3]), (w[2], w[1], w[2] + sw, w[3])]

    flower_boxes: list[Box] = []
    if attrs["flower_boxes"] != NONE:
        row = windows[:n_cols]  # the first upper floor, or the ground floor of a one-storey building
        flower_boxes = [(w[0] - 0.006, w[3], w[2] + 0.006, w[3] + 0.022) for w in row]

    balcony = None
    if attrs["balcony"] != NONE:
        bw = min(0.5 * width, 2 * col_w)
        first_upper = floors[1]
        balcony = (x0 + width / 2 - bw / 2, first_upper[3] - 0.4 * upper_h, x0 + width / 2 + bw / 2, first_upper[3] + 0.01)

    sign = None
    if attrs["shop_sign"] != NONE:
        sign_w = min(0.75 * width, 0.06 + 0.034 * len(attrs["shop_sign"]))
        sign = (x0 + width / 2 - sign_w / 2, ground_top + 0.012, x0 + width / 2 + sign_w / 2, ground_top + 0.012 + _SIGN_H)

    awning = None
    if attrs["awning"] != NONE:
        awning = (door[0] - 0.025, door[1] - 0.024, door[2] + 0.025, door[1] + 0.014)

    booth = None
    if attrs["phone_booth"] != NONE:
        bw, bh, base = 0.065, 0.19, GROUND_Y + 0.035
        bx0 = door[0] - 0.012 - bw if attrs["phone_booth"] == "left" else door[2] + 0.012
        booth = (bx0, base - bh, bx0 + bw, base)

    # The number plate goes on the side of the door away from the booth, so the booth never hides it.
    digits = len(str(attrs["house_number"]))
    pw, ph = 0.024 + 0.017 * digits, 0.04
    plate_left = attrs["phone_booth"] == "right"
    px0 = door[0] - 0.008 - pw if plate_left else door[2] + 0.008
    number_plate = (px0, door[1] + 0.02, px0 + pw, door[1] + 0.02 + ph)

    bench = None
    if attrs["bench"] != NONE:
        bw, bh, base = 0.12, 0.055, GROUND_Y + 0.06
        cx = x0 + 0.27 * width if attrs["bench"] == "left" else x1 - 0.27 * width
        bench = (cx - bw / 2, base - bh, cx + bw / 2, base)
        if booth is not None and overlaps(bench, booth):
            # Move the bench just outside the booth, towards its own end of the facade.
            cx = booth[0] - 0.01 - bw / 2 if attrs["bench"] == "left" else booth[2] + 0.01 + bw / 2
            bench = (cx - bw / 2, base - bh, cx + bw / 2, base)

    tree = crown = None
    if attrs["tree"] != NONE:
        tx = x0 + 0.06 if attrs["tree"] == "left" else x1 - 0.06
        r, cy = 0.11, GROUND_Y - 0.26
        crown = (tx - r, cy - r, tx + r, cy + r)
        tree = (tx - r, cy - r, tx + r, CURB_Y - 0.02)

    lamp = None
    if attrs["street_lamp"] != NONE:
        side = attrs["street_lamp"]
        # Beside a tree on the same side the lamp moves to the outer edge so the crown does not swallow it.
        offset = -0.03 if side == attrs["tree"] else 0.035
        lx = x0 + offset if side == "left" else x1 - offset
        lamp = (lx - 0.025, GROUND_Y - 0.36, lx + 0.025, CURB_Y - 0.005)

    roof = (x0 - 0.01, top - roof_h, x1 + 0.01, top)
    return Layout(facade=(x0, top, x1, GROUND_Y), roof=roof, floors=tuple(floors), windows=tuple(windows),
                  shop_windows=tuple(shop_windows), shutters=tuple(shutters), flower_boxes=tuple(flower_boxes),
                  door=door, number_plate=number_plate, sign=sign, awning=awning, balcony=balcony,
                  phone_booth=booth, bench=bench, street_lamp=lamp, tree=tree, tree_crown=crown,
                  sidewalk=(0.0, GROUND_Y, 1.0, CURB_Y), street=(0.0, CURB_Y, 1.0, 1.0))
