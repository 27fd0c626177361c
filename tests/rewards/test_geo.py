"""GLOBE's rewards, by hand: format, R_geo, R_vis, R_loc, their weighted sum and its failure order."""

from pathlib import Path

import pytest
import torch

from dlgpr.data.geo import GeoSample
from dlgpr.data.schema import PlaceRecord, Region
from dlgpr.geo.gazetteer import GeoNamesGazetteer, WorldGazetteer
from dlgpr.rewards import (
    GeoAccuracyReward, GeoFormatReward, LocalizabilityReward, VisualGroundingReward, WeightedReward, check_failure_order,
    combine_rewards,
)
from dlgpr.rewards.geo import geo_accuracy, grounded_share
from tests.helpers.geo import png

WORLD = {
    "countries": [{"code": "XA", "name": "Valdoria", "lat": 10.7, "lon": 5.6}, {"code": "XB", "name": "Ostmark", "lat": 17.0, "lon": 18.3}],
    "cities": [{"name": "Borgo", "country": "XA", "lat": 10.45, "lon": 6.12}, {"name": "Aurelia", "country": "XA", "lat": 11.15, "lon": 5.65},
               {"name": "Fennwick", "country": "XB", "lat": 17.1, "lon": 18.0}, {"name": "São Tomé", "country": "XB", "lat": 16.5, "lon": 18.6}],
}


def reply(city: str, country: str, think: str = "a red awning") -> str:
    return f"<think>{think}</think>\n<answer>{city}, {country}</answer>"


def sample(city: str = "Borgo", country: str = "Valdoria", regions: tuple[str, ...] = (), key: str = "k") -> GeoSample:
    record = None
    if regions:
        record = PlaceRecord(key=key, place_id=1, city=city, lat=10.0, lon=6.0, view=0, initial_caption="a house",
                             description="a house", split="train", regions=[Region(p, (0.1, 0.1, 0.5, 0.5)) for p in regions])
    return GeoSample(key=key, lat=10.0, lon=6.0, city=city, country=country, image_bytes=png((200, 10, 10)), record=record)


MALFORMED = [
    "Borgo, Valdoria",  # no tags
    "<answer>Borgo, Valdoria</answer>",  # no reasoning block
    "<think>x</think><answer>Borgo, Valdoria</answer> trailing",  # text after the answer
]
NO_PLACE = [
    "<think>x</think><answer>Valdoria</answer>",  # one name only
    "<think>x</think><answer>country: Valdoria\ncity: unknown</answer>",
    "<think>x</think><answer> </answer>",
]


def test_format_reward_needs_the_format_and_both_names():
    good = [reply("Borgo", "Valdoria"), "<think>multi\nline</think><answer>country: Valdoria\ncity: Borgo</answer>"]
    fmt = GeoFormatReward()
    assert fmt(None, good + MALFORMED + NO_PLACE) == [1.0, 1.0] + [0.0] * 6
    assert fmt.last_stats == {"malformed": 3, "no_place": 3}


def test_geo_accuracy_formula():
    assert [geo_accuracy(True, True), geo_accuracy(False, True), geo_accuracy(True, False), geo_accuracy(False, False)] == \
        pytest.approx([1.0, 0.2, 0.0, 0.0])
    assert geo_accuracy(False, True, alpha=0.5) == pytest.approx(0.5)


def test_geo_accuracy_reward_on_the_world_gazetteer():
    r = GeoAccuracyReward.from_gazetteer(WorldGazetteer.from_manifest(WORLD))
    completions = [
        reply("Borgo", "Valdoria"),  # both right: 1.0
        reply("BORGO", "valdoria."),  # case and punctuation: 1.0
        reply("Aurelia", "Valdoria"),  # the country alone: 0.2
        reply("Fennwick", "Ostmark"),  # neither: 0
        reply("Borgo", "Ostmark"),  # the city in a wrong country: 0
        "<think>x</think><answer>country: XA\ncity: Borgo</answer>",  # the country's code: 1.0
        reply("Sao Tome", "Ostmark"),  # accents dropped, against the true "São Tomé": 1.0
    ] + MALFORMED + NO_PLACE
    truth = [sample()] * 6 + [sample("São Tomé", "Ostmark")] + [sample()] * 6
    assert r(None, completions, sample=truth) == pytest.approx([1.0, 1.0, 0.2, 0.0, 0.0, 1.0, 1.0] + [0.0] * 6)
    assert r.last_stats == {"malformed": 3, "no_place": 3, "city_right": 4, "country_right": 5}
    with pytest.raises(KeyError, match="'sample'"):
        r(None, completions)


def test_geo_accuracy_reward_reads_aliases_through_geonames():
    r = GeoAccuracyReward.from_gazetteer(GeoNamesGazetteer.cached())
    truth = [sample("Munich", "Germany"), sample("New York City", "United States"), sample("Munich", "Germany")]
    completions = [reply("München", "Deutschland"), reply("Brooklyn", "USA"), reply("Berlin", "DE")]
    assert r(None, completions, sample=truth) == pytest.approx([1.0, 0.2, 0.2])


def test_geo_accuracy_without_a_gazetteer_compares_normalised_names():
    r = GeoAccuracyReward.from_gazetteer(None)
    assert r(None, [reply("münchen", "GERMANY"), reply("Munich", "DE")], sample=[sample("München", "Germany")] * 2) == \
        pytest.approx([1.0, 0.0])


class TableEmbedder:
    """Unit vectors chosen by hand: a phrase's vector is looked up in a table (cosines known exactly)."""

    def __init__(self, table):
        self.table = table
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        return torch.nn.functional.normalize(torch.tensor([self.table[t] for t in texts], dtype=torch.float32), dim=-1)


def sentence_phrases(texts):
    """A stand-in for the spaCy extractor: the reasoning's phrases are its ';'-separated parts."""
    return [[p.strip() for p in t.split(";") if p.strip()] for t in texts]


def test_grounded_share_precision_and_recall():
    e = torch.eye(3)[[0, 1]]  # two entities
    r = torch.eye(3)[[0, 2, 2]]  # three regions: one matches entity 0, none entity 1
    assert grounded_share(e, r, 0.9, "precision") == pytest.approx(0.5)
    assert grounded_share(e, r, 0.9, "recall") == pytest.approx(1 / 3)
    assert grounded_share(e[:0], r, 0.9, "precision") == 0.0  # no entity gives 0
    assert grounded_share(e[:0], r, 0.9, "recall") == 0.0


def test_visual_grounding_reward_by_hand():
    table = {
        "a red awning": [1.0, 0.0, 0.0], "the red awning": [0.9, 0.1, 0.0],  # cosine 0.994: the same thing
        "a green door": [0.0, 1.0, 0.0], "the black door": [0.0, 0.6, 0.8],  # cosine 0.6: not the same
        "a bench": [0.0, 0.0, 1.0],
    }
    emb = TableEmbedder(table)
    r = VisualGroundingReward.from_parts(emb, sentence_phrases, place_names=["Borgo"], min_similarity=0.85)
    image = sample(regions=("the red awning", "the black door"))
    completions = [
        reply("Borgo", "Valdoria", "a red awning; a green door"),  # 1 of 2 entities in the image
        reply("Borgo", "Valdoria", "a red awning"),  # 1 of 1
        reply("Borgo", "Valdoria", "a green door; a bench"),  # 0 of 2
        reply("Borgo", "Valdoria", "Borgo"),  # a place name is no entity: 0
        MALFORMED[0],
    ]
    assert r(None, completions, sample=[image] * 5) == pytest.approx([0.5, 1.0, 0.0, 0.0, 0.0])
    assert emb.calls == 1  # one embedding call for all entities and regions of the batch
    assert r.last_stats["no_entities"] == 1 and r.last_stats["entities"] == 5 and r.last_stats["grounded_entities"] == 2
    # GLOBE's code instead: the share of the image's regions the reasoning names
    recall = VisualGroundingReward.from_parts(emb, sentence_phrases, mode="recall")
    assert recall(None, completions[:3], sample=[image] * 3) == pytest.approx([0.5, 0.5, 0.0])
    # detected regions given with the batch (real photos)
    detected = VisualGroundingReward.from_parts(emb, sentence_phrases, regions="batch")
    assert detected(None, completions[:1], sample=[sample()], regions=[["a bench", "the black door"]]) == [0.0]
    with pytest.raises(ValueError, match="record"):
        r(None, completions[:1], sample=[sample()])


class FakeDetector:
    """A phrase verifier whose images hold fixed phrases (None: an unreadable image); records its calls."""

    def __init__(self, in_image: dict[str, set[str] | None]) -> None:
        self.in_image, self.calls = in_image, []

    def present_many(self, samples, phrases_per_sample):
        self.calls.append([(s.key, list(ps)) for s, ps in zip(samples, phrases_per_sample)])
        return [None if self.in_image[s.key] is None else [p in self.in_image[s.key] for p in ps]
                for s, ps in zip(samples, phrases_per_sample)]


def test_visual_grounding_asks_a_detector_once_per_image():
    """``regions: detector`` (real photos): each reply's entities are prompts of the detector on its
    own image; the share found is the reward; one detector call per step, each image once with the
    union of its replies' entities; an unreadable image scores 0 and is counted."""
    det = FakeDetector({"a": {"a red awning", "a bench"}, "b": {"a green door"}, "bad": None})
    r = VisualGroundingReward.from_parts(None, sentence_phrases, place_names=["Borgo"], regions="detector", verifier=det)
    a, b, bad = sample(key="a"), sample(key="b"), sample(key="bad")
    completions = [
        reply("Borgo", "Valdoria", "a red awning; a green door"),  # image a: 1 of 2
        reply("Borgo", "Valdoria", "a bench; a red awning"),  # image a: 2 of 2
        reply("Borgo", "Valdoria", "a red awning; a green door; a bench"),  # image b: 1 of 3
        reply("Borgo", "Valdoria", "Borgo"),  # image b: no entity gives 0
        reply("Borgo", "Valdoria", "a bench"),  # unreadable image: 0
        MALFORMED[0],  # image b: failure value
    ]
    values = r(None, completions, sample=[a, a, b, b, bad, b])
    assert values == pytest.approx([0.5, 1.0, 1 / 3, 0.0, 0.0, 0.0])
    assert det.calls == [[("a", ["a red awning", "a green door", "a bench"]),
                          ("b", ["a red awning", "a green door", "a bench"]), ("bad", ["a bench"])]]
    st = r.last_stats
    assert (st["entities"], st["grounded_entities"], st["no_entities"], st["image_failures"], st["malformed"]) == (8, 4, 1, 1, 1)
    # a reply naming only a place asks the detector nothing
    det.calls.clear()
    assert r(None, [reply("Borgo", "Valdoria", "Borgo")], sample=[a]) == [0.0] and det.calls == []


def test_visual_grounding_detector_mode_builds_the_distillation_verifier():
    from dlgpr.pipeline.geo_validation import DetectorPhraseVerifier
    from dlgpr.pipeline.grounding import GroundingConfig

    r = VisualGroundingReward(regions="detector", detector=GroundingConfig(clip_pretrained=None, conf=0.1), min_score=0.3,
                              gazetteer="none", world=None)
    v = r.verifier()
    assert isinstance(v, DetectorPhraseVerifier) and v.min_score == 0.3 and v._config.conf == 0.1
    with pytest.raises(ValueError, match="only mode='precision'"):
        VisualGroundingReward(regions="detector", mode="recall", gazetteer="none", world=None)
    with pytest.raises(ValueError, match="'record', 'batch' or 'detector'"):
        VisualGroundingReward(regions="tags", gazetteer="none", world=None)


def test_paper_scale_globe_config_grounds_entities_with_the_detector():
    """configs/globe_grpo_qwen25vl7b.yaml's R_vis asks YOLO-World (nothing in GRPOModule fills ``regions: batch``)."""
    import yaml

    from dlgpr.pipeline.grounding import GroundingConfig

    root = Path(__file__).resolve().parents[2]
    rewards = yaml.safe_load((root / "configs" / "globe_grpo_qwen25vl7b.yaml").read_text())["model"]["init_args"]["rewards"]
    (visual,) = [r["fn"] for r in rewards if r["fn"]["class_path"] == "dlgpr.rewards.VisualGroundingReward"]
    args = dict(visual["init_args"], detector=GroundingConfig(**visual["init_args"]["detector"]))
    r = VisualGroundingReward(**args)
    assert r.regions == "detector" and r.mode == "precision"
    assert r.detector.model == "yolov8x-worldv2.yaml" and r.detector.conf <= r.min_score


def test_visual_grounding_with_spacy_and_minilm():
    """The default tools on a world-like reasoning: the entities in the regions count, a hallucinated one does not."""
    pytest.importorskip("spacy")
    from dlgpr.pipeline.phrases import load_spacy

    try:
        load_spacy()
    except OSError:
        pytest.skip("no spaCy English pipeline installed")
    r = VisualGroundingReward(gazetteer="none", world=None)
    image = sample(regions=("the red awning", "the white wooden door", "the yellow flower boxes"))
    think = ("The scene has a red awning, a white door and a blue phone booth. The red awning is common in Borgo. "
             "Taken together, this is most likely Borgo, in Valdoria.")
    assert r.entities([think], [("Borgo", "Valdoria")]) == [["a red awning", "a white door", "a blue phone booth", "The red awning"]]
    values = r(None, [reply("Borgo", "Valdoria", think), reply("Borgo", "Valdoria", "It looks like Borgo.")], sample=[image] * 2)
    assert values == pytest.approx([3 / 4, 0.0])  # all but the phone booth; a reasoning naming nothing gives 0


class FixedRM:
    """A reward model whose probability is read from the reasoning."""

    def __init__(self):
        self.seen = []

    def localizability(self, images, texts, correct_prior=False):
        self.seen.append((len(images), list(texts), correct_prior))
        return torch.tensor([0.9 if "awning" in t else 0.3 for t in texts])


def test_localizability_reward_scores_well_formed_replies_only():
    rm = FixedRM()
    r = LocalizabilityReward.from_model(rm, batch_size=2)
    completions = [reply("Borgo", "Valdoria", "a red awning"), reply("Borgo", "Valdoria", "hmm"), MALFORMED[0],
                   reply("Aurelia", "Valdoria", "awning")]
    broken = GeoSample(key="bad", lat=0.0, lon=0.0, image_bytes=b"not an image")
    assert r(None, completions, sample=[sample(), sample(), sample(), broken]) == pytest.approx([0.9, 0.3, 0.0, 0.0])
    assert rm.seen == [(2, ["a red awning", "hmm"], False)]  # batches of 2; the malformed and the unreadable are not asked
    assert r.last_stats == {"malformed": 1, "no_place": 0, "image_failures": 1}


def test_globe_rewards_keep_failed_replies_below_every_well_formed_one():
    """GLOBE's weights (accuracy 1, localizability 0.5, visual 0.2, format 1): the lowest well-formed
    total (wrong place, nothing grounded, RM says 0) is 1.0; every failure totals 0."""
    table = {"a red awning": [1.0, 0.0], "the red awning": [1.0, 0.0], "a green door": [0.0, 1.0]}
    rm = FixedRM()
    rewards = [
        WeightedReward("geo", GeoAccuracyReward.from_gazetteer(WorldGazetteer.from_manifest(WORLD)), 1.0),
        WeightedReward("loc", LocalizabilityReward.from_model(rm), 0.5),
        WeightedReward("vis", VisualGroundingReward.from_parts(TableEmbedder(table), sentence_phrases), 0.2),
        WeightedReward("format", GeoFormatReward(), 1.0),
    ]
    assert check_failure_order(rewards) == pytest.approx(1.0)
    image = sample(regions=("the red awning",))
    completions = [reply("Borgo", "Valdoria", "a red awning"), reply("Fennwick", "Ostmark", "a green door")] + MALFORMED + NO_PLACE
    total, parts = combine_rewards(rewards, [None] * len(completions), completions, sample=[image] * len(completions))
    assert parts["geo"][:2] == [1.0, 0.0] and parts["vis"][:2] == [1.0, 0.0] and parts["loc"][:2] == pytest.approx([0.9, 0.3])
    assert total[:2] == pytest.approx([1.0 + 0.45 + 0.2 + 1.0, 0.15 + 1.0])
    assert max(total[2:]) < min(total[:2]) and total[2:] == [0.0] * 6
    # no format weight: a malformed reply ties with the worst well-formed one
    with pytest.raises(ValueError, match="malformed"):
        check_failure_order(rewards[:3])
    with pytest.raises(ValueError, match="failure_value"):
        GeoAccuracyReward(failure_value=0.5)


def test_globe_rewards_parse_from_a_grpo_config(tmp_path):
    """The reward list of a GRPO config (GRPOModule's ``rewards: list[WeightedReward]``) names them by class path."""
    from jsonargparse import ArgumentParser

    yaml_text = """
rewards:
  - {name: geo, weight: 1.0, fn: {class_path: dlgpr.rewards.GeoAccuracyReward, init_args: {gazetteer: none, world: null}}}
  - {name: loc, weight: 0.5, fn: {class_path: dlgpr.rewards.LocalizabilityReward, init_args: {checkpoint: rm.ckpt}}}
  - {name: vis, weight: 0.2, fn: {class_path: dlgpr.rewards.VisualGroundingReward, init_args: {mode: recall, gazetteer: none}}}
  - {name: format, weight: 1.0, fn: {class_path: dlgpr.rewards.GeoFormatReward}}
"""
    parser = ArgumentParser()
    parser.add_argument("--rewards", type=list[WeightedReward])
    config = tmp_path / "rewards.yaml"
    config.write_text(yaml_text)
    rewards = parser.instantiate_classes(parser.parse_path(str(config))).rewards
    assert [type(r.fn).__name__ for r in rewards] == ["GeoAccuracyReward", "LocalizabilityReward", "VisualGroundingReward", "GeoFormatReward"]
    assert [r.weight for r in rewards] == [1.0, 0.5, 0.2, 1.0] and rewards[2].fn.mode == "recall"
    assert check_failure_order(rewards) == pytest.approx(1.0)  # what GRPOModule checks when it is built
