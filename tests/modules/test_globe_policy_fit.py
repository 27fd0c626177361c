"""configs/globe_policy_pretrain.yaml through ``python -m dlgpr fit``, shrunk to a tiny image policy on a
tiny world (CPU, a few steps): the policy trains, its checkpoint and its export reload to the same
log-probs, and a resumed fit continues the step count from the checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dlgpr.cli import main
from dlgpr.models.questioner import GEO_FORMAT_TAGS, PolicyConfig, load_policy, train_corpus_tokenizer
from dlgpr.modules.dqpilot import SFTModule
from tests.helpers.cli_args import ROOT
from tests.helpers.geo import make_geo_world
from tests.modules.test_globe_policy import TEXTS


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["dlgpr"])  # LightningCLI(args=...) must not also see pytest's argv


def pretrain_args(world: Path, tokenizer: Path, *extra: str) -> list[str]:
    p = "--model.init_args.policy"
    return [
        "--config", str(ROOT / "configs" / "globe_policy_pretrain.yaml"),
        f"{p}.model", str(tokenizer),
        f"{p}.image.tower_model", "dlgpr-tiny",
        f"{p}.image.tower_pretrained", "null",
        f"{p}.image.image_tokens", "2",
        f"{p}.image.decoder.hidden_size", "32",
        f"{p}.image.decoder.num_layers", "2",
        f"{p}.image.decoder.num_heads", "2",
        f"{p}.image.decoder.num_kv_heads", "1",
        f"{p}.image.decoder.intermediate_size", "64",
        f"{p}.image.decoder.max_position_embeddings", "512",
        "--model.init_args.prompt.max_prompt_tokens", "256",
        "--model.init_args.optim.warmup_steps", "0",
        "--data.init_args.world_dir", str(world),
        "--data.init_args.max_caption_words", "6",
        "--data.init_args.batch_size", "4",
        "--data.init_args.val_batch_size", "8",
        "--trainer.limit_train_batches", "3",
        "--trainer.limit_val_batches", "1",
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        *extra,
    ]


def completion_logp(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """``[B, L-1]`` log-probabilities of the next tokens, zero outside the labelled completion."""
    model.eval()
    with torch.no_grad():
        pixels = model.pixel_values(batch["images"])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels, use_cache=False).logits
    target = batch["labels"][:, 1:]  # [B, L-1]
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(2, target.clamp(min=0)[:, :, None]).squeeze(2)
    return logp * (target != -100)


def test_pretrain_config_fits_saves_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = tmp_path / "world"
    make_geo_world(world, places_per_city=4)  # 16 train images: 4 batches of 4, 3 of them a fit
    train_corpus_tokenizer(TEXTS, vocab_size=400, tags=GEO_FORMAT_TAGS).save_pretrained(str(tmp_path / "tok"))
    monkeypatch.chdir(tmp_path)
    cli = main(pretrain_args(world, tmp_path / "tok", "--trainer.max_epochs", "1"), run=False)
    before = {k: v.clone() for k, v in cli.model.state_dict().items()}
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 3
    after = {k: v.clone() for k, v in cli.model.state_dict().items()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("model.projector.") for k in changed) and any(k.startswith("model.lm.") for k in changed)
    assert not any(k.startswith("model.tower.") for k in changed)  # the image tower stays frozen
    assert "val/loss" in cli.trainer.callback_metrics

    # the checkpoint and the export reload to the same log-probs as the trained module
    batch = next(iter(cli.datamodule.val_dataloader()))
    trained = completion_logp(cli.model.model, batch)
    assert trained.sum() < 0
    ckpt = Path(cli.trainer.checkpoint_callback.last_model_path)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 3
    reloaded = SFTModule.load_from_checkpoint(ckpt, map_location="cpu")
    torch.testing.assert_close(completion_logp(reloaded.model, batch), trained, rtol=0, atol=0)
    exported, _ = load_policy(PolicyConfig(model=str(tmp_path / "lightning_logs" / "globe" / "pretrain" / "policy")))
    torch.testing.assert_close(completion_logp(exported, batch), trained, rtol=1e-5, atol=1e-5)
    fresh = completion_logp(SFTModule(PolicyConfig(model=str(tmp_path / "tok"), image=cli.model.policy_config.image)).model, batch)
    assert not torch.allclose(fresh, trained)  # the reload is of the trained weights, not a re-initialisation

    # resume: the step counter and the weights continue from the checkpoint
    cli2 = main(pretrain_args(world, tmp_path / "tok", "--trainer.max_epochs", "2"), run=False)
    cli2.trainer.fit(cli2.model, cli2.datamodule, ckpt_path=str(ckpt))
    assert cli2.trainer.global_step == 6 and cli2.trainer.current_epoch == 2
    resumed = cli2.model.state_dict()
    key = "model.projector.1.weight"
    assert not torch.equal(resumed[key], after[key])  # trained on
    # from the checkpoint, not from the initial weights: closer to the first fit's end than to its start
    assert (resumed[key] - after[key]).norm() < (resumed[key] - before[key]).norm()
