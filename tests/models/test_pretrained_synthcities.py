"""The SynthCities-pretrained towers shipped in the package: resolved by their tag, they read.

Zero-shot (no fine-tuning) on a small world the pretraining never saw (its own seed, its own
cities), full descriptions must find their place's image far above chance, and a collapsed copy of
the same towers (every image the same) must score at chance.
"""

import json

import pytest
import torch

from dlgpr.data.synth.generate import SynthCitiesConfig, make_world, render_place_views
from dlgpr.models.clip_backbone import DLGPR_PRETRAINED, CLIPBackbone, ClipBackboneConfig, resolve_pretrained
from dlgpr.ranking import rank_of_place

PLACES = 48


@pytest.fixture(scope="module")
def unseen_world():
    # cities 60-61 and seed 4242: neither the pretraining world (20-39, seed 1000) nor the default one
    config = SynthCitiesConfig(num_cities=2, first_city=60, places_per_city=PLACES // 2, views_per_place=1,
                               split_fractions=(1.0, 0.0, 0.0), seed=4242, num_workers=0)
    places = make_world(config).places
    views = [render_place_views(p, config)[0] for p in places]
    return [jpeg for jpeg, _, _ in views], [text for _, text, _ in views]


def _recall_at_1(backbone: CLIPBackbone, images: torch.Tensor, texts: list[str]) -> float:
    with torch.no_grad():
        img = torch.nn.functional.normalize(backbone.encode_image(images), dim=-1)
        txt = torch.nn.functional.normalize(backbone.encode_text(backbone.tokenizer()(texts)), dim=-1)
    labels = torch.arange(len(texts))
    ranks = rank_of_place(txt, labels, img, labels, k=len(texts), backend="torch")
    return float((ranks <= 1).float().mean())


def _image_tensor(jpeg: bytes, size: int) -> torch.Tensor:
    import io

    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((size, size))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255.0


def test_the_tag_resolves_to_the_shipped_file_with_its_record():
    path = resolve_pretrained("dlgpr-mini", "synthcities")
    assert ("dlgpr-mini", "synthcities") in DLGPR_PRETRAINED and path.endswith(".safetensors")
    record = json.loads(open(path.removesuffix(".safetensors") + ".json").read())
    import hashlib

    assert record["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()  # the record describes this very file
    assert record["steps"] > 0 and record["model_name"] == "dlgpr-mini"
    assert resolve_pretrained("dlgpr-mini", None) is None and resolve_pretrained("ViT-B-16", "openai") == "openai"


def test_shipped_towers_read_an_unseen_world_zero_shot(unseen_world):
    jpegs, texts = unseen_world
    backbone = CLIPBackbone(ClipBackboneConfig(model_name="dlgpr-mini", pretrained="synthcities")).eval()
    mean, std = torch.tensor(backbone.image_mean).view(3, 1, 1), torch.tensor(backbone.image_std).view(3, 1, 1)
    images = torch.stack([(_image_tensor(j, backbone.image_size) - mean) / std for j in jpegs])
    chance = 1.0 / len(texts)
    trained = _recall_at_1(backbone, images, texts)
    assert trained >= 8 * chance, f"zero-shot R@1 {trained:.3f} on an unseen world (chance {chance:.3f})"
    collapsed = _recall_at_1(backbone, images[:1].expand_as(images).contiguous(), texts)  # one image everywhere
    assert collapsed == 0.0  # all images tie: every expected rank is (G + 1) / 2, never 1
