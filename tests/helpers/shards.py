"""A tiny DQ-Cities dataset whose image colour and description word depend on the place (a learnable signal)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from dlgpr.data.schema import PlaceRecord, Region, make_key
from dlgpr.data.shards import Manifest, write_manifest, write_split

COLORS = [(200, 40, 40), (40, 160, 40), (40, 40, 200), (200, 200, 40), (160, 40, 160), (40, 160, 160)]
WORDS = ["red", "green", "blue", "yellow", "purple", "teal"]


def tiny_record(city: str, city_index: int, place: int, view: int, split: str) -> tuple[PlaceRecord, bytes]:
    """A record whose image colour and description word depend on the place (learnable signal)."""
    c = (place * 7 + city_index) % len(COLORS)
    img = Image.new("RGB", (32, 32), COLORS[c])
    img.paste((255 - view * 40, 255, 255), (view * 4, view * 4, view * 4 + 8, view * 4 + 8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    rec = PlaceRecord(
        key=make_key(city, place, view),
        place_id=city_index * 10**5 + place,
        city=city,
        lat=10.0 + place * 1e-3,
        lon=20.0 + city_index,
        view=view,
        initial_caption=f"a {WORDS[c]} building",
        description=f"a {WORDS[c]} building number {place} in {city}, view {view}",
        split=split,
        regions=(Region("the building", (0.1, 0.1, 0.9, 0.9)),),
        attributes={"facade_color": WORDS[c], "house_number": place},
    )
    return rec, buf.getvalue()


def make_tiny_dataset(
    root: Path, places: dict[str, int] | None = None, views: int = 2, per_shard: int = 8, cities: tuple[str, ...] = ("Alpha", "Beta")
) -> Manifest:
    """Write a small DQ-Cities dataset: ``places[split]`` places per city, ``views`` views each."""
    places = places or {"train": 12, "val": 4, "test": 4}
    shards = []
    offset = 0
    for split, n in places.items():
        samples = []
        for ci, city in enumerate(cities):
            for p in range(offset, offset + n):
                for v in range(views):
                    samples.append(tiny_record(city, ci, p, v, split))
        offset += n
        shards += write_split(root, split, samples, max_samples_per_shard=per_shard)
    manifest = Manifest(name="tiny", shards=shards, extra={"generator": "tests"})
    write_manifest(root, manifest)
    return manifest
