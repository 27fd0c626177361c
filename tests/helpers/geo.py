"""Geo test fixtures: a tiny generated geo world, a colour encoder with known similarities, colour samples."""

from __future__ import annotations

import io
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dlgpr.data.geo import GeoSample
from dlgpr.data.shards import Manifest
from dlgpr.data.streaming import Preprocessing
from dlgpr.data.synth import SynthCitiesConfig, generate_synthcities


def make_geo_world(root: Path, num_cities: int = 4, countries: int = 2, places_per_city: int = 6, views: int = 2) -> Manifest:
    """A tiny geo world (32 px images; cities grouped in countries), split 50/25/25 by place."""
    config = SynthCitiesConfig(num_cities=num_cities, countries=countries, places_per_city=places_per_city,
                               views_per_place=views, image_size=32, num_workers=1, split_fractions=[0.5, 0.25, 0.25])
    return generate_synthcities(config, root)


class ColourEncoder(nn.Module):
    """A duck-typed retriever whose image embedding is the image's mean RGB, normalised: images of
    chosen plain colours have known cosine similarities."""

    def __init__(self, constant: bool = False) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.constant = constant

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(image_size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x.mean(dim=(2, 3)) * self.scale  # [B, 3]
        if self.constant:  # the degenerate encoder: every image the same embedding
            rgb = torch.ones_like(rgb)
        return F.normalize(rgb, dim=-1)


def png(colour: tuple[int, int, int], size: int = 8) -> bytes:
    """A plain-colour PNG (lossless: the colour comes back exactly)."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def colour_sample(key: str, lat: float, lon: float, colour: tuple[int, int, int], place_id: int | None = None,
                  city: str = "", country: str = "", size: int = 8) -> GeoSample:
    """A geo sample whose image is a plain ``colour`` PNG of ``size`` pixels."""
    return GeoSample(key=key, lat=lat, lon=lon, city=city, country=country, place_id=place_id, image_bytes=png(colour, size))
