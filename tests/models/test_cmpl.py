"""CMPL model: token selection, the shared extractor, the retrieval score as an inner product."""

import pytest
import torch
import torch.nn.functional as F

from dlgpr.losses import local_similarity
from dlgpr.models.clip_backbone import ClipBackboneConfig
from dlgpr.models.cmpl import CMPL, CMPLConfig, select_salient_tokens


def tiny(**cfg) -> CMPL:
    torch.manual_seed(0)
    return CMPL(ClipBackboneConfig(image_size=32, context_length=24), CMPLConfig(**{"local_dim": 32, "num_queries": 4, **cfg})).eval()


def test_select_salient_tokens_against_naive():
    g = torch.Generator().manual_seed(0)
    tokens, attn = torch.randn(3, 1 + 9, 5, generator=g), torch.rand(3, 9, generator=g)
    kept = select_salient_tokens(tokens, attn, keep_ratio=0.4)  # ceil(3.6) = 4 of 9
    assert kept.shape == (3, 4, 5)
    for b in range(3):
        top = sorted(sorted(range(9), key=lambda i: -float(attn[b, i]))[:4])
        assert torch.equal(kept[b], tokens[b, 1:][top])  # the 4 most attended patches, raster order
    assert torch.equal(select_salient_tokens(tokens, attn, 1.0), tokens[:, 1:])  # [CLS] never selected


def test_features_shapes_and_no_loss_in_forward():
    m = tiny(taps=[2, 4])
    images, tokens = torch.randn(3, 3, 32, 32), m.backbone.tokenizer()(["red door", "blue bench", "a tree"])
    out = m(images, tokens)
    assert set(out) == {"image", "text"}
    for f in out.values():
        assert f.global_.shape == (3, m.embed_dim) and [x.shape for x in f.local] == [(3, 4, 32)] * 2
    assert m.retrieval_dim == m.embed_dim + 2 * 4 * 32


def test_one_extractor_and_one_query_set_per_layer_shared_by_both_modalities():
    m = tiny(taps=[1, 2, 3])
    assert m.queries.shape == (3, 4, 32)
    extractors = [mod for mod in m.modules() if type(mod).__name__ == "FineGrainedExtractor"]
    assert len(extractors) == 1
    # the text side and the image side of layer 0 both train Q^(0) and the one extractor
    tokens = m.backbone.tokenizer()(["red door", "blue bench"])
    probe = torch.randn(2, 4, 32)
    for features in (m.text_features(tokens), m.image_features(torch.randn(2, 3, 32, 32))):
        m.zero_grad()
        (features.local[0] * probe).sum().backward()
        assert m.queries.grad[0].abs().sum() > 0 and m.queries.grad[1:].abs().sum() == 0
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.extractor.attn.parameters())


def test_retrieval_score_is_weighted_global_plus_mean_local():
    m = tiny(taps=[1, 3], global_weight=2.0, local_weight=0.5)
    images = torch.randn(4, 3, 32, 32)
    tokens = m.backbone.tokenizer()(["red door", "blue bench", "a tree", "green awning and a lamp"])
    with torch.no_grad():
        img, txt = m.image_features(images), m.text_features(tokens)
        score = m.encode_queries(tokens) @ m.encode_gallery(images).T  # [4, 4]
        s_g = F.normalize(txt.global_, dim=-1) @ F.normalize(img.global_, dim=-1).T
        s_l = sum(local_similarity(t, v) for t, v in zip(txt.local, img.local)) / 2
    assert torch.allclose(score, (2.0 * s_g + 0.5 * s_l) / 2.5, atol=1e-5)
    assert torch.allclose(m.encode_gallery(images).norm(dim=1), torch.ones(4), atol=1e-5)
    glob = tiny(taps=[1, 3], local_weight=0.0)
    assert glob.retrieval_dim == glob.embed_dim  # rank by the global similarity alone


def test_text_after_end_of_text_is_ignored():
    m = tiny()
    tokens = m.backbone.tokenizer()(["a red door with a brass handle"])
    garbage = tokens.clone()
    end = int(tokens.argmax())
    garbage[0, end + 1 :] = torch.randint(1, 40000, (tokens.shape[1] - end - 1,))
    with torch.no_grad():
        a, b = m.text_features(tokens), m.text_features(garbage)
    assert torch.allclose(a.global_, b.global_, atol=1e-5)
    for x, y in zip(a.local, b.local):
        assert torch.allclose(x, y, atol=1e-5)


def test_global_only_model_is_plain_clip():
    m = tiny(taps=[])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m.encode_gallery(images), F.normalize(m.backbone.encode_image(images), dim=-1), atol=1e-6)
    assert not any(n.startswith(("queries", "extractor", "image_adapters.0")) for n, _ in m.named_parameters())


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="cmpl.taps"):
        tiny(taps=[5])  # the tiny towers have 4 blocks
    with pytest.raises(ValueError, match="cmpl.keep_ratio"):
        CMPLConfig(keep_ratio=0.0)
    with pytest.raises(ValueError, match="divisible"):
        CMPLConfig(local_dim=30, extractor_heads=4)
    assert CMPLConfig(taps=[4, 1, 4]).taps == [1, 4]
