"""CLIP backbone: long-text position stretching, the counting tokenizer, layer taps."""

import logging

import open_clip
import pytest
import torch
from torch import nn

from dlgpr.models.clip_backbone import CLIPBackbone, ClipBackboneConfig, stretch_positions


def test_stretch_positions_long_clip_layout():
    pos = torch.arange(77, dtype=torch.float32)[:, None].repeat(1, 3) * torch.tensor([1.0, -2.0, 0.5])  # [77, 3] linear in position
    out = stretch_positions(pos, 248, keep_first=20)
    assert out.shape == (248, 3)
    assert torch.equal(out[:20], pos[:20])  # the first 20 positions are kept
    assert torch.allclose(out[20::4][:57], pos[20:77])  # every 4th new position is an old one
    assert torch.allclose(out[21, 0], torch.tensor(20.25))  # a quarter of the way to the next
    # past the last old position the last difference continues (linear extrapolation)
    assert torch.allclose(out[-1], pos[76] + 0.75 * (pos[76] - pos[75]))


def test_stretch_positions_edge_cases():
    pos = torch.randn(10, 4)
    assert torch.equal(stretch_positions(pos, 10), pos)
    out = stretch_positions(pos, 30, keep_first=0)
    assert torch.allclose(out[::3], pos)  # stride 1/3 from the first position
    with pytest.raises(ValueError, match="cannot stretch"):
        stretch_positions(pos, 5)


def test_long_text_on_a_fresh_tower():
    b = CLIPBackbone(ClipBackboneConfig(long_text_length=248))
    assert b.context_length == 248 and b.model.positional_embedding.shape[0] == 248
    assert b.model.attn_mask.shape == (248, 248) and torch.isinf(b.model.attn_mask[0, 1])
    tok = b.tokenizer()
    assert tok.context_length == 248
    tokens = tok(["a " * 200 + "red door"])
    assert tokens.shape == (1, 204) and tok.truncated == 0  # 200 words fit in 248 positions; padded to the longest
    assert b.encode_text(tokens).shape == (1, b.embed_dim)


def test_long_text_applies_to_loaded_weights(tmp_path):
    src = CLIPBackbone(ClipBackboneConfig())
    path = tmp_path / "tiny.pt"
    torch.save(src.model.state_dict(), path)
    loaded = CLIPBackbone(ClipBackboneConfig(pretrained=str(path), long_text_length=100, long_text_keep_first=20))
    pos, old = loaded.model.positional_embedding.detach(), src.model.positional_embedding.detach()
    assert pos.shape[0] == 100 and torch.equal(pos[:20], old[:20])
    assert torch.allclose(pos, stretch_positions(old, 100, 20))
    assert torch.equal(loaded.model.visual.conv1.weight, src.model.visual.conv1.weight)


def test_tokenizer_truncates_counts_and_keeps_eot(caplog):
    b = CLIPBackbone(ClipBackboneConfig(context_length=16))
    tok = b.tokenizer()
    reference = open_clip.get_tokenizer("dlgpr-tiny", context_length=16)
    texts = ["a red door", "word " * 40, "a blue bench next to a tree", "many words " * 30]
    with caplog.at_level(logging.WARNING, logger="dlgpr.models"):
        out = tok(texts)
    assert torch.equal(out, reference(texts, context_length=16))  # same ids as open_clip's own
    assert out[1, -1] == reference.eot_token_id  # a truncated text still ends with end-of-text
    assert (tok.truncated, tok.seen) == (2, 4)
    assert any("2 of 4 texts" in r.getMessage() for r in caplog.records)  # counted, at the 1st and 2nd
    with pytest.raises(ValueError, match="text 1 of the batch is empty"):
        tok(["fine", "   "])


def _naive_cls_attention(block, x):
    attn: nn.MultiheadAttention = block.attn
    h = block.ln_1(x)
    _, weights = attn(h, h, h, need_weights=True, average_attn_weights=True)  # [B, T, T]
    return weights[:, 0, 1:]


def test_taps_reproduce_the_towers_and_cls_attention():
    torch.manual_seed(0)
    b = CLIPBackbone(ClipBackboneConfig(image_size=32, context_length=20)).eval()
    images = torch.randn(2, 3, 32, 32)
    taps = b.image_taps(images, [1, 3])
    assert torch.allclose(taps.pooled, b.encode_image(images), atol=1e-5)
    assert [t.shape for t in taps.tokens] == [(2, 17, 128)] * 2  # [CLS] + 4x4 patches
    # the [CLS] attention equals the block's own attention weights (naive: ask nn.MultiheadAttention)
    x = b.model.visual._embeds(images)
    assert torch.allclose(taps.cls_attention[0], _naive_cls_attention(b.model.visual.transformer.resblocks[0], x), atol=1e-5)
    with torch.no_grad():
        x1 = b.model.visual.transformer.resblocks[1](taps.tokens[0])
    assert torch.allclose(taps.cls_attention[1], _naive_cls_attention(b.model.visual.transformer.resblocks[2], x1), atol=1e-5)
    # the tokens after each tapped block ([CLS] first) against a naive block-by-block run
    with torch.no_grad():
        naive, h = [], x
        for block in b.model.visual.transformer.resblocks:
            h = block(h)
            naive.append(h)
    assert torch.allclose(taps.tokens[0], naive[0], atol=1e-5) and torch.allclose(taps.tokens[1], naive[2], atol=1e-5)
    unordered = b.image_taps(images, [3, 1])  # in the order asked for
    assert torch.equal(unordered.tokens[0], taps.tokens[1]) and torch.equal(unordered.cls_attention[1], taps.cls_attention[0])
    with pytest.raises(ValueError, match="image taps must be in"):
        b.image_taps(images, [5])

    tokens = b.tokenizer()(["a red door", "a green awning over the shop window"])
    assert tokens.shape == (2, 10)  # padded to the longest text, not to the 20-token context
    full = torch.nn.functional.pad(tokens, (0, 20 - tokens.shape[1]))  # [2, 20] as open_clip pads
    text = b.text_taps(tokens, [2, 4])
    assert torch.allclose(text.pooled, b.model.encode_text(full), atol=1e-5)  # open_clip's own, full context
    assert torch.allclose(b.encode_text(tokens), b.model.encode_text(full), atol=1e-5)
    # open_clip's public intermediates need the full context; on the real tokens they agree
    reference = b.model.forward_intermediates(text=full, text_indices=[1, 3], intermediates_only=True)["text_intermediates"]
    for ours, theirs in zip(text.tokens, reference):
        assert torch.allclose(ours, theirs[:, :10], atol=1e-5)
    eot = tokens.argmax(dim=1)
    assert text.padding.sum(1).tolist() == (10 - 1 - eot).tolist()  # everything after end-of-text


def test_context_length_keeps_the_first_positions_of_pretrained_weights(tmp_path):
    torch.manual_seed(0)
    src = CLIPBackbone(ClipBackboneConfig()).eval()  # "pretrained" weights with the architecture's 77 positions
    path = tmp_path / "tiny.pt"
    torch.save(src.model.state_dict(), path)
    with pytest.raises(ValueError, match="exclude each other"):
        ClipBackboneConfig(pretrained=str(path), context_length=16, long_text_length=100)
    with pytest.raises(ValueError, match="exceeds the 77 positions"):
        CLIPBackbone(ClipBackboneConfig(pretrained=str(path), context_length=100))
    short = CLIPBackbone(ClipBackboneConfig(pretrained=str(path), context_length=16)).eval()
    assert short.context_length == 16 and short.tokenizer().context_length == 16
    assert torch.equal(short.model.positional_embedding, src.model.positional_embedding[:16])
    tokens = short.tokenizer()(["a red door", "word " * 40])  # the second is cut to 16 tokens
    assert tokens.shape == (2, 16)
    assert torch.allclose(short.encode_text(tokens), src.encode_text(tokens), atol=1e-5)  # same positions, same weights


def test_bidirectional_tower_ignores_padding():
    torch.manual_seed(0)
    b = CLIPBackbone(ClipBackboneConfig(context_length=32)).eval()
    b.model.attn_mask = None  # as open_clip builds a text tower with no_causal_mask
    tok = b.tokenizer()
    texts = ["a red door", "a green awning over the shop window with a bench"]
    batch = tok(texts)
    alone = torch.cat([b.encode_text(tok([t])) for t in texts])  # each text with no padding at all
    assert torch.allclose(b.encode_text(batch), alone, atol=1e-5)
    padded = torch.nn.functional.pad(batch, (0, 32 - batch.shape[1]))
    assert torch.allclose(b.encode_text(padded), alone, atol=1e-5)


def test_a_textual_null_pretrained_means_random_weights():
    for text in ("null", "None", ""):
        assert ClipBackboneConfig(model_name="dlgpr-tiny", pretrained=text).pretrained is None
    assert ClipBackboneConfig(model_name="dlgpr-tiny", pretrained="openai").pretrained == "openai"
