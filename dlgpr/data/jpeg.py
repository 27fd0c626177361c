"""JPEG bytes of place shards: read them once, decode them when an image is needed.

Vision-language questioners see candidate images; keeping the compressed bytes of a split in
memory and decoding a view on demand costs a fraction of holding decoded images.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from dlgpr.data.shards import iter_tar_members


def read_shard_jpegs(data_dir: str | os.PathLike, shard_paths: Sequence[str]) -> dict[str, bytes]:
    """``sample key -> JPEG bytes`` of every image in the shards (decoded later, on demand)."""
    jpegs: dict[str, bytes] = {}
    for path in shard_paths:
        for name, data in iter_tar_members(Path(data_dir) / path):
            if name.endswith(".jpg"):
                jpegs[name[: -len(".jpg")]] = data
    return jpegs


def read_split_jpegs(data_dir: str | os.PathLike, split: str) -> dict[str, bytes]:
    """``sample key -> JPEG bytes`` of every image of one split of a DQ-Cities directory (its manifest's shards)."""
    from dlgpr.data.shards import read_manifest

    return read_shard_jpegs(data_dir, [s.path for s in read_manifest(data_dir).split_shards(split)])


def decode_jpeg(data: bytes) -> Image.Image:
    """The RGB image of JPEG bytes, fully decoded (a corrupt file raises here)."""
    return Image.open(io.BytesIO(data)).convert("RGB")


def shard_image_loader(data_dir: str | os.PathLike, shard_paths: Sequence[str], keys: Sequence[str]) -> Callable[[int], Image.Image]:
    """``gallery row -> PIL image`` from the shards' JPEG bytes, kept in memory."""
    jpegs = read_shard_jpegs(data_dir, shard_paths)
    return lambda i: decode_jpeg(jpegs[keys[i]])


__all__ = ["decode_jpeg", "read_shard_jpegs", "read_split_jpegs", "shard_image_loader"]
