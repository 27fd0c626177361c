"""CMPLModule: optimiser groups, training a few steps, loading for inference."""

import pytest
import torch
from lightning.pytorch import Trainer

from datamodules.dqcities import DQCitiesDataModule
from dlgpr.losses import CMPLLoss
from dlgpr.models.clip_backbone import ClipBackboneConfig
from dlgpr.models.cmpl import CMPLConfig
from dlgpr.modules.cmpl import CMPLModule
from dlgpr.retrieval import ModuleTextRetriever, load_retriever
from tests.helpers.cmpl import fixed_batch, tiny_module
from tests.helpers.shards import make_tiny_dataset


def test_ddp_losses_see_the_global_batch(tmp_path):
    """2 gloo ranks with half the batch each compute the same loss (and, after DDP's gradient
    average, the same gradient) as one process on the whole batch: every term is gathered."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]  # the probe imports tests.helpers: the repository root goes on the path
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "tests.helpers.ddp_loss_probe", str(tmp_path)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    m = tiny_module()
    loss, _ = m.compute_loss(fixed_batch())
    loss.backward()
    for r in ranks:
        assert r["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
        # after DDP's average the gradient is the single-process gradient of the whole batch
        assert torch.allclose(r["queries_grad"], m.model.queries.grad, rtol=1e-4, atol=1e-5)


def test_backbone_and_heads_get_their_own_learning_rates():
    m = tiny_module(lr=1e-4, head_lr=3e-3)
    groups = m.optimizer_groups()
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in m.parameters() if p.requires_grad) and len(seen) == len(set(seen))
    backbone = {id(p) for p in m.model.backbone.parameters()}
    for g in groups:
        in_backbone = {id(p) in backbone for p in g["params"]}
        assert len(in_backbone) == 1  # a group is all backbone or all heads
        assert g["lr"] == (1e-4 if in_backbone.pop() else 3e-3)
    assert tiny_module(lr=2e-4).head_lr == 2e-4  # defaults to lr
    with pytest.raises(ValueError, match="head_lr"):
        tiny_module(head_lr=0.0)


def test_compute_loss_logs_every_term_and_trains(tmp_path):
    make_tiny_dataset(tmp_path / "d")
    m = tiny_module()
    dm = DQCitiesDataModule(data_dir=str(tmp_path / "d"), synthetic=None, places_per_batch=4, views_per_place=2, eval_batch_size=16, num_workers=0)
    trainer = Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=True, default_root_dir=tmp_path,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    trainer.fit(m, dm)
    logged = set(trainer.callback_metrics)
    assert {"train/loss", "train/loss_gs", "train/loss_ls", "train/loss_hi", "train/loss_vpr", "train/loss_ls/l0", "train/loss_hi/l1"} <= logged
    after = m.state_dict()
    for key in ("model.queries", "model.extractor.attn.in_proj_weight", "model.image_adapters.0.1.weight", "model.text_adapters.1.1.weight",
                "model.backbone.model.positional_embedding", "model.backbone.model.visual.conv1.weight"):
        assert not torch.equal(before[key], after[key]), key

    # a checkpoint written by fit loads through the one documented function
    ckpt = tmp_path / "cmpl.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = load_retriever(ckpt)
    assert type(loaded) is CMPLModule and not loaded.training
    assert loaded.model.config.taps == [2, 4] and loaded.clip.context_length == 40
    texts = ["a red brick bank with green awnings", "a yellow house"]
    m.eval()
    with torch.no_grad():
        expected = m.encode_texts(m.preprocessing().tokenizer(texts))
    got = ModuleTextRetriever(loaded).embed_texts(texts)
    assert got.shape == (2, m.model.retrieval_dim) and torch.allclose(got, expected, atol=1e-5)


def test_global_only_training_ignores_the_heads():
    m = CMPLModule(backbone=ClipBackboneConfig(image_size=32, context_length=24), cmpl=CMPLConfig(taps=[]), loss=CMPLLoss(lambda_h=0.0, lambda_vpr=0.0))
    batch = {"image": torch.randn(4, 3, 32, 32), "tokens": m.preprocessing().tokenizer(["a", "b", "c", "d"]), "place_id": torch.tensor([0, 0, 1, 1])}
    loss, stats = m.compute_loss(batch)
    assert loss.item() == pytest.approx(stats["gs"].item()) and stats["ls"].item() == stats["vpr"].item() == 0.0
    assert m.embed_dim == m.model.embed_dim
