"""GRPOModule's geo validation (``val_world``): accuracy at 1 / 25 / 200 / 750 / 2500 km, city and
country accuracy and the format rate, from greedy replies the test controls, against hand-computed values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer

import dlgpr.modules.dqpilot as dqpilot
from dlgpr.data.geo import GeoSample
from dlgpr.models.prompting import PromptConfig
from dlgpr.models.questioner import GEO_FORMAT_TAGS, PolicyConfig, train_corpus_tokenizer
from dlgpr.modules.dqpilot import GRPOConfig, GRPOModule
from dlgpr.rewards import GeoFormatReward, WeightedReward
from tests.helpers.geo import make_geo_world, png
from tests.modules.test_globe_policy import IMAGE, TEXTS

# the world of make_geo_world(num_cities=4, countries=2): Aurelia and Borgo in Valdoria, Caldera and Dunmore in Ostmark
CENTRES = {"Aurelia": (11.5957, 3.7814), "Borgo": (10.8949, 4.2487), "Caldera": (15.9652, 13.8733), "Dunmore": (16.8779, 13.5807)}
GOOD = "<think>Yellow walls.</think>\n<answer>{}</answer>"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("geo") / "world"
    manifest = make_geo_world(out)
    assert {c["name"]: (c["lat"], c["lon"]) for c in manifest.extra["cities"]} == CENTRES  # the hand computation's map
    return out


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_corpus_tokenizer(TEXTS, vocab_size=400, tags=GEO_FORMAT_TAGS).save_pretrained(str(out))
    return out


def sample(key: str, city: str, country: str, dlat: float = 0.0) -> GeoSample:
    lat, lon = CENTRES[city]
    return GeoSample(key=key, lat=lat + dlat, lon=lon, city=city, country=country, place_id=None, image_bytes=png((200, 100, 50), 32))


class FixedReplies:
    """Stands in for ``generate``: the prompt followed by the tokens of the next scripted replies."""

    def __init__(self, tokenizer: Any, replies: list[str]) -> None:
        self.tokenizer, self.replies, self.calls = tokenizer, list(replies), 0

    def __call__(self, model: Any, tokenizer: Any, enc: Any, max_new_tokens: int, do_sample: bool = False, **kw: Any) -> torch.Tensor:
        assert not do_sample and kw["num_return_sequences"] == 1  # validation replies greedily, once per image
        self.calls += 1
        rows = [self.tokenizer(self.replies.pop(0), add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
                for _ in range(enc["input_ids"].shape[0])]
        out = torch.full((len(rows), max(map(len, rows))), self.tokenizer.pad_token_id)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return torch.cat([enc["input_ids"], out], dim=1)


def test_validation_logs_hand_computed_geo_accuracies(world: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    m = GRPOModule(PolicyConfig(model=str(tokenizer_dir), image=IMAGE), [WeightedReward("format", GeoFormatReward(), 1.0)],
                   GRPOConfig(group_size=2, max_new_tokens=64, beta=0.0), prompt=PromptConfig(max_prompt_tokens=128), val_world=str(world))
    samples = [
        sample("a", "Aurelia", "Valdoria", dlat=0.05),  # right city, 0.05 deg north: 5.6 km
        sample("b", "Borgo", "Valdoria"),  # says Aurelia: right country, Aurelia-Borgo 92 km
        sample("c", "Caldera", "Ostmark"),  # malformed reply: no coordinates, nothing right
        sample("d", "Dunmore", "Ostmark"),  # says Aurelia: wrong country, about 1,200 km
        sample("e", "Caldera", "Ostmark"),  # right city at its centre: 0 km
    ]
    replies = [GOOD.format("Aurelia, Valdoria"), GOOD.format("Aurelia, Valdoria"), "I think it is somewhere warm.",
               GOOD.format("Aurelia, Valdoria"), GOOD.format("Caldera, Ostmark")]
    right = [GOOD.format(f"{s.city}, {s.country}") for s in samples]
    fake = FixedReplies(m.tokenizer, replies + right)
    monkeypatch.setattr(dqpilot, "generate", fake)
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(samples, batch_size=3, shuffle=False, collate_fn=lambda b: b)  # two batches: 3 + 2
    expected = {
        "val/acc@1km": 1 / 5,  # e
        "val/acc@25km": 2 / 5,  # a, e
        "val/acc@200km": 3 / 5,  # a, b, e
        "val/acc@750km": 3 / 5,
        "val/acc@2500km": 4 / 5,  # a, b, d, e
        "val/city_acc": 2 / 5,  # a, e
        "val/country_acc": 3 / 5,  # a, b, e
        "val/format_rate": 4 / 5,  # all but c
        "val/reward/format": 4 / 5,
    }
    [metrics] = trainer.validate(m, loader, verbose=False)
    assert {k: round(metrics[k], 6) for k in expected} == {k: round(v, 6) for k, v in expected.items()}

    # a second epoch starts afresh: every reply names the right city (a's image is 5.6 km from its centre)
    [metrics] = trainer.validate(m, loader, verbose=False)
    expected = {k: 1.0 for k in expected} | {"val/acc@1km": 4 / 5}
    assert {k: round(metrics[k], 6) for k in expected} == {k: round(v, 6) for k, v in expected.items()}
    assert fake.calls == 4 and not fake.replies
