"""Exporting pretrained towers: what `backbone.pretrained` then loads is the checkpoint's towers."""

import math

import pytest
import torch
from safetensors.torch import load_file

from dlgpr.models.clip_backbone import CLIPBackbone, ClipBackboneConfig
from dlgpr.models.cmpl import CMPLConfig
from dlgpr.modules.cmpl import CMPLModule
from tests.helpers.scripts import load_script

pretrain = load_script("pretrain_synthcities")


def test_export_towers_round_trip(tmp_path):
    torch.manual_seed(0)
    module = CMPLModule(backbone=ClipBackboneConfig(model_name="dlgpr-tiny"), cmpl=CMPLConfig(taps=[]), logit_scale=14.0, learnable_logit_scale=True)
    with torch.no_grad():
        module.log_logit_scale.fill_(math.log(23.0))  # as if pretraining had learnt 23
        for p in module.model.backbone.parameters():
            p.add_(0.01 * torch.randn_like(p))  # not the random init the architecture would give
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": module.state_dict()}, ckpt)
    out = tmp_path / "w.safetensors"
    check = pretrain.export_towers(ckpt, out, "dlgpr-tiny")
    assert check["image_max_abs_diff"] < 1e-2 and check["text_max_abs_diff"] < 1e-2  # float16 storage only
    assert check["logit_scale"] == pytest.approx(23.0, rel=1e-3)
    stored = load_file(str(out))
    assert all(v.dtype == torch.float16 for v in stored.values())
    loaded = CLIPBackbone(ClipBackboneConfig(model_name="dlgpr-tiny", pretrained=str(out))).eval()
    source = module.model.backbone.eval()
    tokens = source.tokenizer()(["a red door", "a teal facade with a striped awning"])
    with torch.no_grad():
        assert torch.allclose(loaded.encode_text(tokens), source.encode_text(tokens), atol=1e-2)
    assert loaded.resolve_logit_scale(None) == pytest.approx(23.0, rel=1e-3)  # logit_scale: null reads it
    fine_tune = CMPLModule(backbone=ClipBackboneConfig(model_name="dlgpr-tiny", pretrained=str(out)), logit_scale=None, learnable_logit_scale=True)
    assert float(fine_tune.logit_scale) == pytest.approx(23.0, rel=1e-3)


def test_export_refuses_a_checkpoint_without_towers(tmp_path):
    ckpt = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"policy.weight": torch.zeros(2, 2)}}, ckpt)
    with pytest.raises(KeyError, match="no CLIP towers"):
        pretrain.export_towers(ckpt, tmp_path / "w.safetensors", "dlgpr-tiny")
    with pytest.raises(ValueError, match="backbone.pretrained is null"):
        CMPLModule(logit_scale=None)
