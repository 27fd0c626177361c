"""``python -m dlgpr``: LightningCLI in subclass mode.

The model and the datamodule are chosen by ``class_path`` in the YAML, so every LightningModule
and LightningDataModule of the project (or of a user's package) is a valid choice without a
registry::

    python -m dlgpr fit --config configs/cmpl.yaml
    python -m dlgpr fit --config configs/cmpl.yaml --trainer.max_epochs 3 --model.lr 1e-4
    python -m dlgpr fit --config configs/cmpl.yaml --trainer.devices 2 --trainer.strategy ddp
    python -m dlgpr fit --config configs/cmpl.yaml --print_config

Runs are seeded (``seed_everything: 0`` unless the config says otherwise) and log to
TensorBoard under ``lightning_logs/``; the resolved config is saved next to the logs.
"""

from __future__ import annotations

from typing import Any

from dlgpr._env import configure_offline_env

configure_offline_env()

from lightning.pytorch import LightningDataModule, LightningModule  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": ".", "name": "lightning_logs"},
    },
}


class DlgprCLI(LightningCLI):
    """LightningCLI with the project's defaults (seed, TensorBoard, saved config)."""


def main(args: list[str] | None = None, run: bool = True) -> DlgprCLI:
    return DlgprCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # modules own their optimiser and schedule
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
