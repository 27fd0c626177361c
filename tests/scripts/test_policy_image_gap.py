"""scripts/policy_image_gap.py: the loss gap between right and rotated images, on a tiny geo world."""

from __future__ import annotations

import pytest
import torch

from datamodules.geo_policy import GeoPolicyDataModule
from dlgpr.models.prompting import PromptConfig
from dlgpr.models.questioner import GEO_FORMAT_TAGS, PolicyConfig, load_policy, train_corpus_tokenizer
from tests.helpers.geo import make_geo_world
from tests.helpers.scripts import load_script
from tests.modules.test_globe_policy import IMAGE, TEXTS

gap_script = load_script("policy_image_gap")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("gap")
    make_geo_world(root / "world")
    train_corpus_tokenizer(TEXTS, vocab_size=400, tags=GEO_FORMAT_TAGS).save_pretrained(str(root / "tok"))
    torch.manual_seed(0)
    model, processor = load_policy(PolicyConfig(model=str(root / "tok"), image=IMAGE))
    dm = GeoPolicyDataModule(task="caption", world_dir=str(root / "world"), max_caption_words=6, val_batch_size=4,
                             max_val_samples=None, prompt=PromptConfig(max_prompt_tokens=128))
    dm.set_processor(processor, True, "sft")
    dm.setup("fit")
    return model, dm


def test_a_policy_blind_to_its_image_has_no_gap(setup) -> None:
    model, dm = setup
    with torch.no_grad():  # the prefix is the projector's bias alone: the same for every image
        model.projector[1].weight.zero_()
        model.projector[1].bias.normal_()
    out = gap_script.image_gap(model, dm)
    assert out["gap"] == 0.0 and out["right"] == out["rotated"] > 0.0
    assert out["examples"] == 8  # the tiny world's val images


def test_a_policy_that_reads_its_image_shows_a_gap_and_it_is_restored(setup) -> None:
    model, dm = setup
    with torch.no_grad():
        model.projector[1].weight.normal_(std=3.0)  # a strong, image-dependent prefix
    model.train()
    out = gap_script.image_gap(model, dm)
    assert out["gap"] != 0.0 and all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert model.training  # the model's mode comes back as it was
    # the rotated loss is the right loss of the same batches with the images moved by one
    batches = list(dm.val_dataloader())
    moved = [dict(b, images=b["images"][1:] + b["images"][:1]) for b in batches]
    model.eval()
    assert gap_script.completion_loss(model, moved, False) == pytest.approx(out["rotated"], rel=1e-6)


def test_city_probe_scores_at_the_majority_rate_on_constant_embeddings(setup) -> None:
    model, dm = setup
    out = gap_script.city_probe(model, dm.world_dir)
    assert 0.0 <= out["accuracy"] <= 1.0 and out["examples"] == 8 and 0.0 < out["majority"] <= 1.0

    class Constant(torch.nn.Module):  # an image tower that sees nothing: every embedding the same
        def encode_image(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ones(x.shape[0], 4)

    tower, model.tower = model.tower, Constant()
    try:
        blind = gap_script.city_probe(model, dm.world_dir)
    finally:
        model.tower = tower
    # one answer for every image: at most the majority rate
    assert blind["accuracy"] <= blind["majority"]
