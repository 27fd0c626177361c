"""Run by tests/modules/test_cmpl.py under 2 gloo processes (``python -m tests.helpers.ddp_loss_probe
<out>``): each rank computes CMPL's loss on its half of one fixed batch and writes it (and one gradient)
to <out>/rank<r>.pt."""

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from dlgpr.modules.cmpl import CMPLModule
from tests.helpers.cmpl import fixed_batch, tiny_module


class Probe(CMPLModule):
    def __init__(self, out: str) -> None:
        torch.manual_seed(0)
        ref = tiny_module()
        super().__init__(backbone=ref.hparams.backbone, cmpl=ref.hparams.cmpl, logit_scale=14.29, learnable_logit_scale=True)
        self.load_state_dict(ref.state_dict())
        self.out = out

    def training_step(self, batch, batch_idx):
        loss, _ = self.compute_loss(batch)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        grad = self.model.queries.grad.detach().clone()
        loss, _ = self.compute_loss(self._batch)
        torch.save({"loss": loss.detach(), "queries_grad": grad}, Path(self.out) / f"rank{self.global_rank}.pt")

    def on_train_batch_start(self, batch, batch_idx):
        self._batch = batch


def main() -> None:
    out = sys.argv[1]
    full = fixed_batch()
    halves = [{k: v[i * 4 : (i + 1) * 4] for k, v in full.items()} for i in range(2)]
    loader = DataLoader(halves, batch_size=None)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Probe(out), loader)


if __name__ == "__main__":
    main()
