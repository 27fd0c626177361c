"""Why the embedded configs learn SDM's logit scale from CLIP's 1/0.07 instead of IRRA's fixed 50.

    python scripts/logit_scale_probe.py --steps 60

On one fixed training batch of the embedded world (16 places x 4 views = 64 image-description
pairs, the first batch of the training stream, seed 0), a randomly initialised tiny CLIP
(``dlgpr-tiny``, 77-token context) is fitted with SDM for ``--steps`` AdamW steps (lr 5e-4, no
weight decay, no warm-up), once with the scale fixed at 50 and once learnable from 1/0.07, from
the same initial weights. Prints, for each, the loss and the mean cosine of matching (same place)
and non-matching pairs before and after. Generates SynthCities into ``--data_dir`` on first use.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from datamodules.dqcities import DQCitiesDataModule
from dlgpr.data.synth.generate import SynthCitiesConfig
from dlgpr.losses import sdm_loss
from dlgpr.models.clip_backbone import ClipBackboneConfig
from dlgpr.modules.clip_baseline import CLIPBaselineModule


def fit(batch: dict, logit_scale: float, learnable: bool, steps: int, lr: float) -> dict:
    torch.manual_seed(0)  # the same initial weights for both runs
    module = CLIPBaselineModule(ClipBackboneConfig(model_name="dlgpr-tiny"), lr=lr, logit_scale=logit_scale,
                                learnable_logit_scale=learnable)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)

    def loss_and_stats():
        image = module.backbone.encode_image(batch["image"])  # [B, D]
        text = module.backbone.encode_text(batch["tokens"])  # [B, D]
        return sdm_loss(text, image, batch["place_id"], logit_scale=module.logit_scale)

    with torch.no_grad():
        loss0, stats0 = loss_and_stats()
    for _ in range(steps):
        loss, _ = loss_and_stats()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        loss, stats = loss_and_stats()
    return {"logit_scale": ("learnable from " if learnable else "fixed ") + f"{logit_scale:.4g}",
            "final_scale": round(float(module.logit_scale), 2),
            "loss": [round(float(loss0), 3), round(float(loss), 3)],
            "pos_cos": [round(float(stats0["pos_sim"]), 3), round(float(stats["pos_sim"]), 3)],
            "neg_cos": [round(float(stats0["neg_sim"]), 3), round(float(stats["neg_sim"]), 3)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="data/synthcities")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=5e-4)
    args = p.parse_args()
    torch.manual_seed(0)
    probe = CLIPBaselineModule(ClipBackboneConfig(model_name="dlgpr-tiny"))
    dm = DQCitiesDataModule(data_dir=args.data_dir, synthetic=SynthCitiesConfig(), places_per_batch=16, views_per_place=4,
                            num_workers=0, seed=0)
    dm.set_preprocessing(probe.preprocessing())
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    out = [fit(batch, 50.0, False, args.steps, args.lr), fit(batch, 1 / 0.07, True, args.steps, args.lr)]
    print(json.dumps({"pairs": int(batch["image"].shape[0]), "steps": args.steps, "lr": args.lr, "runs": out}, indent=1))
    assert math.isfinite(out[0]["loss"][1])


if __name__ == "__main__":
    main()
