"""The regions stage, grounding: letterbox and box mapping, YOLO-World grounding (random weights, offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dlgpr._env import restore_pil_open
from dlgpr.data.schema import Region
from dlgpr.pipeline.grounding import GroundedPhrase, GroundingConfig, YOLOWorldGrounder, _detector_state_dict, boxes_to_unit, letterbox, to_regions

# --------------------------------------------------------------------------------------------
# Letterbox and box mapping
# --------------------------------------------------------------------------------------------


def test_letterbox_wide_and_tall() -> None:
    x, scale, pad = letterbox(Image.new("RGB", (200, 100), (255, 0, 0)), 64)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert scale == pytest.approx(0.32) and pad == (0, 16)
    grey = torch.full((3,), 114 / 255)
    assert torch.allclose(x[:, :16].mean(dim=(1, 2)), grey) and torch.allclose(x[:, 48:].mean(dim=(1, 2)), grey)
    assert torch.allclose(x[:, 16:48].mean(dim=(1, 2)), torch.tensor([1.0, 0.0, 0.0]))

    x, scale, pad = letterbox(Image.new("L", (100, 200), 255), 64)
    assert scale == pytest.approx(0.32) and pad == (16, 0)
    assert torch.allclose(x[:, :, 16:48], torch.ones(3, 64, 32)) and torch.allclose(x[:, :, :16], grey[:, None, None].expand(3, 64, 16))


def test_boxes_to_unit_undoes_the_letterbox() -> None:
    # 200x100 image at imgsz 64: scale 0.32, image rows 16..48 of the square.
    xyxy = torch.tensor([[0.0, 16.0, 64.0, 48.0], [32.0, 32.0, 48.0, 40.0], [-10.0, 0.0, 70.0, 60.0], [0.0, 0.0, 64.0, 10.0]])
    unit = boxes_to_unit(xyxy, 0.32, (0, 16), 200, 100)
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.75, 0.75], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    assert torch.allclose(unit, expected, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Grounding
# --------------------------------------------------------------------------------------------

IMGSZ = 320


@pytest.fixture(scope="module")
def grounder() -> YOLOWorldGrounder:
    torch.manual_seed(0)
    return YOLOWorldGrounder(GroundingConfig(clip_pretrained=None, imgsz=IMGSZ, conf=0.0))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((160, 120), (100, 200))]


PHRASES = ["a red brick bank with green awnings", "the corner", "a small cafe with a wooden door"]


def test_ground_gives_a_valid_box_per_phrase(grounder: YOLOWorldGrounder, images: list[Image.Image]) -> None:
    for image, phrases in zip(images, (PHRASES, PHRASES[:1] + ["a tree", "a tree"])):
        grounded = grounder.ground(image, phrases)
        assert [g.phrase for g in grounded] == list(dict.fromkeys(phrases))
        for g in grounded:
            assert isinstance(g, GroundedPhrase) and 0.0 <= g.score <= 1.0
            x0, y0, x1, y1 = g.box
            assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
        regions = to_regions(grounded)
        assert all(isinstance(r, Region) for r in regions) and [r.phrase for r in regions] == [g.phrase for g in grounded]
    assert grounder.ground(images[0], []) == []


def test_class_count_follows_the_phrases(grounder: YOLOWorldGrounder, images: list[Image.Image]) -> None:
    grounder.ground(images[0], PHRASES)
    assert grounder.detector.model[-1].nc == 3
    grounder.ground(images[0], PHRASES + ["a bench", "a lamp"])
    assert grounder.detector.model[-1].nc == 5
    grounder.ground(images[0], ["a bench"])
    assert grounder.detector.model[-1].nc == 1


def test_ground_many_batches_like_one_by_one(grounder: YOLOWorldGrounder, images: list[Image.Image], monkeypatch: pytest.MonkeyPatch) -> None:
    phrase_lists = [PHRASES, ["a tree"], []]
    monkeypatch.setattr(grounder.config, "image_batch", 3)  # one forward for all three (default is 1 on a CPU)
    batched = grounder.ground_many([images[0], images[1], images[0]], phrase_lists)
    single = [grounder.ground(image, phrases) for image, phrases in zip([images[0], images[1], images[0]], phrase_lists)]
    assert [[g.phrase for g in r] for r in batched] == [[g.phrase for g in r] for r in single]
    for b, s in zip(batched, single):
        for gb, gs in zip(b, s):
            assert gb.box == pytest.approx(gs.box, abs=1e-4) and gb.score == pytest.approx(gs.score, rel=1e-3, abs=1e-7)
    with pytest.raises(ValueError, match="2 images but 1"):
        grounder.ground_many(images, [PHRASES])


def test_box_decoding_threshold_and_degenerate_boxes(grounder: YOLOWorldGrounder, monkeypatch: pytest.MonkeyPatch) -> None:
    # 200x100 image at imgsz 320: scale 1.6, image rows 80..240 of the square. Three anchors;
    # class a's best is anchor 0 (the whole image), b's anchor 1, c's anchor 2 (in the padding).
    decoded = torch.tensor(
        [
            [160.0, 80.0, 160.0],  # x centre
            [160.0, 120.0, 20.0],  # y centre
            [320.0, 32.0, 50.0],  # width
            [160.0, 16.0, 20.0],  # height
            [0.9, 0.1, 0.1],  # scores of a
            [0.2, 0.5, 0.1],  # scores of b
            [0.1, 0.1, 0.8],  # scores of c
        ]
    )[None]

    def fake_predict(x: torch.Tensor, txt_feats: torch.Tensor) -> tuple[torch.Tensor, dict]:
        assert x.shape == (1, 3, IMGSZ, IMGSZ) and txt_feats.shape == (1, 3, 512)
        return decoded, {}

    monkeypatch.setattr(grounder.detector, "predict", fake_predict)
    image = Image.new("RGB", (200, 100))
    a, b = grounder.ground(image, ["a", "b", "c"])
    assert a.phrase == "a" and a.box == pytest.approx((0.0, 0.0, 1.0, 1.0)) and a.score == pytest.approx(0.9)
    assert b.phrase == "b" and b.box == pytest.approx((0.2, 0.2, 0.3, 0.3)) and b.score == pytest.approx(0.5)
    monkeypatch.setattr(grounder.config, "conf", 0.6)
    assert [g.phrase for g in grounder.ground(image, ["a", "b", "c"])] == ["a"]


def test_phrase_embeddings_are_normalised_exact_and_cached(grounder: YOLOWorldGrounder) -> None:
    calls = []
    hook = grounder.text_model.transformer.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    try:
        first = grounder.embed_phrases(["a stone fountain", "a green kiosk"])
        assert first.shape == (2, 512) and len(calls) == 1
        assert torch.allclose(first.norm(dim=-1), torch.ones(2), atol=1e-5)
        again = grounder.embed_phrases(["a green kiosk", "a stone fountain", "a green kiosk"])
        assert len(calls) == 1  # all cached
        assert torch.equal(again, first[[1, 0, 1]])
        grounder.embed_phrases(["a stone fountain", "an iron gate"])
        assert len(calls) == 2 and calls[-1][0] == 1  # only the new phrase is embedded
    finally:
        hook.remove()
    # The causal fast path runs on the longest phrase only and must equal open_clip's own 77-token pass.
    phrases = ["a four-storey red brick bank with green awnings", "a door", "the corner"]
    with torch.inference_mode():
        reference = grounder.text_model.encode_text(grounder.tokenizer(phrases), normalize=True)
    assert grounder._causal_text
    assert torch.allclose(grounder.embed_phrases(phrases), reference, atol=1e-5)


def test_phrase_cache_is_bounded(grounder: YOLOWorldGrounder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grounder.config, "phrase_cache_size", 2)
    out = grounder.embed_phrases(["one cafe", "two cafes", "three cafes"])
    assert out.shape == (3, 512) and len(grounder._cache) <= 2
    monkeypatch.setattr(grounder.config, "phrase_cache_size", 0)
    grounder.embed_phrases(["four cafes"])
    assert grounder._cache == {}


def test_detector_weights_from_a_local_file(grounder: YOLOWorldGrounder, images: list[Image.Image], tmp_path) -> None:
    path = tmp_path / "detector.pt"
    torch.save(grounder.detector.state_dict(), path)
    torch.manual_seed(1)
    other = YOLOWorldGrounder(GroundingConfig(weights=str(path), clip_pretrained=None, imgsz=IMGSZ, conf=0.0))
    reference = grounder.detector.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in other.detector.state_dict().items())
    # The random text towers differ (another seed); give both the same one so only the
    # detector weights decide the boxes.
    other.text_model.load_state_dict(grounder.text_model.state_dict())
    for image in images:
        mine, theirs = grounder.ground(image, PHRASES), other.ground(image, PHRASES)
        assert len(theirs) == len(mine) == len(PHRASES)
        for t, m in zip(theirs, mine):
            assert t.box == pytest.approx(m.box, abs=1e-5) and t.score == pytest.approx(m.score, rel=1e-4)

    # An ultralytics checkpoint pickles the model module under "model".
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": grounder.detector, "epoch": -1}, checkpoint)
    state = _detector_state_dict(str(checkpoint))
    assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in reference)
    torch.save({"epoch": 3}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="neither a state_dict"):
        _detector_state_dict(str(tmp_path / "bad.pt"))
    # Weights of another architecture fail in one line, before the text tower is built.
    torch.save({k: v for i, (k, v) in enumerate(reference.items()) if i % 2}, tmp_path / "half.pt")
    with pytest.raises(ValueError, match=r"do not fit yolov8s-worldv2.yaml .* missing") as info:
        YOLOWorldGrounder(GroundingConfig(weights=str(tmp_path / "half.pt"), clip_pretrained=None, imgsz=IMGSZ))
    assert "\n" not in str(info.value)


def test_text_dim_mismatch_is_one_line() -> None:
    # RN50 embeds text in 1024 dims; the check runs before any text tower is built.
    config = GroundingConfig(model="yolov8n-worldv2.yaml", clip_model="RN50", clip_pretrained=None, imgsz=IMGSZ)
    with pytest.raises(ValueError, match=r"'RN50' embeds text in 1024 dims .* takes 512-dim") as info:
        YOLOWorldGrounder(config)
    assert "\n" not in str(info.value)


def test_grounding_config_validation() -> None:
    with pytest.raises(ValueError, match="imgsz"):
        GroundingConfig(imgsz=100)
    with pytest.raises(ValueError, match="conf"):
        GroundingConfig(conf=1.5)


def test_a_corrupt_image_stays_a_pillow_error_once_the_detector_is_loaded(grounder: YOLOWorldGrounder) -> None:
    """ultralytics replaces Image.open on import with a wrapper whose HEIF fallback raises
    ModuleNotFoundError on a file Pillow cannot identify; readers count OSError as a bad sample."""
    import io

    from PIL import UnidentifiedImageError
    from ultralytics.utils import patches

    assert Image.open is patches._image_open  # the grounder restored Pillow's own function
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(b"not an image"))
    Image.open = patches.image_open  # as a bare ultralytics import leaves it
    restore_pil_open()
    assert Image.open is patches._image_open
