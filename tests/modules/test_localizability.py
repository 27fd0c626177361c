"""GLOBE's localizability reward model: data split by place, class weight, training, checkpoints,
the reward reading a checkpoint, the VLM yes/no readout and the CLI config (tiny models, CPU)."""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from datamodules.geo_reasoning import LocalizabilityDataModule, split_by_place
from dlgpr.cli import main
from dlgpr.data.geo import GeoSample
from dlgpr.models.clip_backbone import ClipBackboneConfig
from dlgpr.models.localizability import LocalizabilityModelConfig
from dlgpr.models.questioner import LoRAConfig, PolicyConfig
from dlgpr.modules.localizability import LocalizabilityModule, VLMLocalizabilityModule
from dlgpr.modules.optim import OptimConfig
from dlgpr.pipeline.geo_reasoning import FORMAT, write_shards
from dlgpr.rewards import LocalizabilityReward
from dlgpr.testing.tiny_models import save_tiny_policy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dlgpr"])  # LightningCLI(args=...) must not also see pytest's argv


def jpeg(colour: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG")
    return buf.getvalue()


def write_build(root: Path, places: int = 10, views: int = 2, kept_places: tuple[int, ...] = (0, 3, 6, 9)) -> Path:
    """A geo-reasoning build: ``places`` places of ``views`` images; the places in ``kept_places``
    were kept (bright images, a reasoning naming an awning), the others rejected (dark, vague)."""
    rows = []
    for p in range(places):
        kept = p in kept_places
        for v in range(views):
            key = f"Borgo_{p:07d}_{v}"
            sample = GeoSample(key=key, lat=10.0, lon=6.0, city="Borgo", country="Valdoria", place_id=100 + p,
                               image_bytes=jpeg((230, 200, 40) if kept else (20, 20, 60)))
            reasoning = "A red awning and a blue door: most likely Borgo." if kept else "Nothing distinctive; a guess."
            rows.append((sample, {"key": key, "place_id": 100 + p, "kept": kept, "reasoning": reasoning, "city": "Borgo"}))
    shards = write_shards(root, rows, shard_size=8)
    (root / "manifest.json").write_text(json.dumps({"format": FORMAT, "shards": shards, "samples": len(rows)}))
    return root


def tiny_module(**kwargs) -> LocalizabilityModule:
    backbone = ClipBackboneConfig(model_name="dlgpr-tiny", pretrained=None, image_size=32, context_length=24)
    args = dict(model=LocalizabilityModelConfig(backbone=backbone, hidden=16, dropout=0.0), lr=1e-2, tower_lr=1e-3,
                optim=OptimConfig(weight_decay=0.0, warmup_steps=0))
    return LocalizabilityModule(**{**args, **kwargs})


def test_split_by_place_holds_each_place_on_one_side(tmp_path):
    dm = LocalizabilityDataModule(str(write_build(tmp_path)), val_fraction=0.3, seed=1, batch_size=4)
    dm.setup("fit")
    train, val = {ex.place for ex in dm.train}, {ex.place for ex in dm.val}
    assert not train & val and len(train | val) == 10 and len(val) == 3
    assert len(dm.train) + len(dm.val) == 20
    assert sum(dm.class_counts("train")) == len(dm.train) and dm.class_counts("val")[1] == sum(ex.label for ex in dm.val)
    batch = next(iter(dm.val_dataloader()))
    assert batch.images[0].size == (32, 32) and batch.labels.dtype == torch.float32 and len(batch.texts) == len(batch.keys)
    assert split_by_place(["a", "b"], 0.01, 0) and split_by_place(["a", "b"], 0.99, 0) != {"a", "b"}  # never empty, never all
    assert split_by_place(list("abcdefgh"), 0.25, 3) == split_by_place(list("hgfedcba"), 0.25, 3)  # seeded, order-free


def test_small_model_trains_checkpoints_and_serves_the_reward(tmp_path):
    dm = LocalizabilityDataModule(str(write_build(tmp_path / "build")), val_fraction=0.3, seed=1, batch_size=4, val_batch_size=8)
    module = tiny_module()
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    trainer = Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, dm)
    neg, pos = dm.class_counts("train")
    assert float(module.pos_weight) == pytest.approx(neg / pos)  # pos_weight: auto
    changed = [n for n, p in module.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any(n.startswith("model.head") for n in changed) and any(n.startswith("model.backbone") for n in changed)
    metrics = trainer.callback_metrics
    assert {"train/loss", "val/loss", "val/auroc", "val/mean_p_kept", "val/mean_p_rejected"} <= set(metrics)
    # the two classes differ in colour and in words: three epochs separate the held-out places
    assert float(metrics["val/auroc"]) == pytest.approx(1.0)

    ckpt = tmp_path / "rm.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = LocalizabilityModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False)
    assert float(loaded.pos_weight) == pytest.approx(neg / pos)
    images = [Image.open(io.BytesIO(jpeg(c))) for c in ((230, 200, 40), (20, 20, 60))]
    texts = ["A red awning and a blue door: most likely Borgo.", "Nothing distinctive; a guess."]
    p = loaded.localizability(images, texts)
    assert torch.allclose(p, module.localizability(images, texts), atol=1e-6) and p[0] > p[1]
    # at the data's prior: the logit less log(pos_weight)
    prior = loaded.localizability(images, texts, correct_prior=True)
    assert torch.allclose(torch.logit(prior), torch.logit(p) - math.log(neg / pos), atol=1e-4)

    reward = LocalizabilityReward(checkpoint=str(ckpt), module="dlgpr.modules.localizability.LocalizabilityModule")
    samples = [GeoSample(key=f"s{i}", lat=0.0, lon=0.0, image_bytes=jpeg(c)) for i, c in enumerate(((230, 200, 40), (20, 20, 60)))]
    completions = [f"<think>{t}</think><answer>Borgo, Valdoria</answer>" for t in texts]
    assert reward(None, completions, sample=samples) == pytest.approx(p.tolist(), abs=1e-5)
    with pytest.raises(FileNotFoundError, match="globe_loc_rm.yaml"):
        LocalizabilityReward(checkpoint=str(tmp_path / "missing.ckpt"))(None, completions[:1], sample=samples[:1])


def test_pos_weight_settings():
    assert float(tiny_module(pos_weight=2.5).pos_weight) == 2.5
    with pytest.raises(ValueError, match="pos_weight"):
        tiny_module(pos_weight="balanced")
    with pytest.raises(ValueError, match="pos_weight"):
        tiny_module(pos_weight=0.0)


def test_vlm_reward_model_reads_yes_against_no(tmp_path):
    """Qwen2.5-VL (tiny, random) with LoRA: the logit is logit(yes) - logit(no) of the first answer
    token, a step trains the adapter only, and the checkpoint holds the adapter and the class weight."""
    policy = save_tiny_policy(tmp_path / "vl", vision=True)
    module = VLMLocalizabilityModule(PolicyConfig(model=str(policy)), LoRAConfig(r=4, alpha=8, dropout=0.0,
                                     target_modules=["q_proj", "v_proj", "gate_proj"], exclude_modules=".*visual.*"),
                                     lr=1e-2, optim=OptimConfig(weight_decay=0.0, warmup_steps=0), pos_weight=3.0)
    assert module.encoder.with_images and module.yes_id != module.no_id
    images = [Image.new("RGB", (56, 56), (200, 30, 30)), Image.new("RGB", (56, 56), (30, 30, 200))]
    texts = ["a red awning", "nothing to see"]
    logits = module.logits(images, texts)
    assert logits.shape == (2,)
    # by hand: the model's last-position logits of the same prompts
    enc = module.encoder([module.messages(im, t) for im, t in zip(images, texts)])
    with torch.no_grad():
        last = module.model(**enc).logits[:, -1]
    assert torch.allclose(logits.detach(), last[:, module.yes_id] - last[:, module.no_id], atol=1e-4)
    assert torch.allclose(module.localizability(images, texts), torch.sigmoid(logits.detach()), atol=1e-5)

    trainable = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable) and not any("visual" in n for n in trainable)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    module.loss(module.logits(images, texts), torch.tensor([1.0, 0.0])).backward()
    opt.step()
    assert any(not torch.equal(p, trainable[n]) for n, p in module.named_parameters() if p.requires_grad)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == {f"model.{n}" for n in dict(module.model.named_parameters()) if "lora_" in n} | {"pos_weight"}


def test_globe_loc_rm_config_runs_through_the_cli(tmp_path, monkeypatch):
    """configs/globe_loc_rm.yaml as written, on a tiny build with a tiny random CLIP: it trains,
    logs the loss and the held-out AUROC to TensorBoard and writes the checkpoint the reward reads."""
    build = write_build(tmp_path / "data" / "geo_reasoning" / "synthcities")
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(ROOT / "configs" / "globe_loc_rm.yaml"),
          "--model.init_args.model.backbone.model_name", "dlgpr-tiny",
          "--model.init_args.model.backbone.pretrained", "null",
          "--model.init_args.model.backbone.image_size", "32",
          "--model.init_args.model.backbone.context_length", "24",
          "--data.init_args.data_dir", str(build),
          "--data.init_args.batch_size", "4",
          "--trainer.max_epochs", "1",
          "--trainer.log_every_n_steps", "1",
          "--trainer.accelerator", "cpu",
          "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false"])
    run = tmp_path / "lightning_logs" / "globe" / "loc_rm"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(run.glob("events.out.tfevents.*"))))
    events.Reload()
    assert {"train/loss", "val/loss", "val/auroc"} <= set(events.Tags()["scalars"])
