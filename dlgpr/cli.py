"""``python -m dlgpr``: LightningCLI in subclass mode.

The model and the datamodule are chosen by ``class_path`` in the YAML, so every LightningModule
and LightningDataModule of the project (or of a user's package) is a valid choice without a
registry::

    python -m dlgpr fit --config configs/cmpl.yaml
    python -m dlgpr fit --config configs/cmpl.yaml --trainer.max_epochs 3 --model.lr 1e-4
    python -m dlgpr fit --config configs/cmpl.yaml --trainer.devices 2 --trainer.strategy ddp
    python -m dlgpr fit --config configs/cmpl.yaml --trainer.default_root_dir runs/exp1
    python -m dlgpr fit --config configs/cmpl.yaml --print_config
    python -m dlgpr index --ckpt lightning_logs/version_0/checkpoints/last.ckpt --out runs/index/test   # a saved gallery index

Runs are seeded (``seed_everything: 0`` unless the config says otherwise) and log to TensorBoard
under ``<default_root_dir>/lightning_logs/version_N`` (the working directory when no
``default_root_dir`` is given, as Lightning's own default logger does), without TensorBoard's
``hp_metric`` placeholder; the resolved config and the checkpoints go next to the logs. A
config that pins its logger's ``version`` refuses to log into a folder that already holds a
run's events, unless it resumes that run with ``--ckpt_path``. Checkpoints hold the random
states of torch, CUDA, numpy and Python (``RandomStateCheckpoint``), so a run resumed from an
end-of-epoch checkpoint continues as the uninterrupted run would have.

A model and a datamodule that both take a ``prompt`` (DQ-Pilot's ``QuestionerModule`` and
``DialogueDataModule``) share one: the model's ``prompt`` is linked into the datamodule's, so the
prompts it trains on are the prompts the policy generates from.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from dlgpr._env import configure_offline_env

configure_offline_env()

from lightning.pytorch import LightningDataModule, LightningModule  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from dlgpr.random_state import RandomStateCheckpoint  # noqa: E402

DEFAULT_SAVE_DIR = "."
"""The default logger's ``save_dir``; it stands for ``trainer.default_root_dir`` when that is given."""


def trainer_defaults() -> dict[str, Any]:
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": DEFAULT_SAVE_DIR, "name": "lightning_logs", "default_hp_metric": False},
        },
        "callbacks": [RandomStateCheckpoint()],  # appended to the config's callbacks
    }


def _get(ns: Any, key: str, default: Any = None) -> Any:
    return ns.get(key, default) if hasattr(ns, "get") else getattr(ns, key, default)


def _loggers(trainer_cfg: Any) -> list[Any]:
    logger = _get(trainer_cfg, "logger")
    items = logger if isinstance(logger, list) else [logger]
    return [x for x in items if x is not None and not isinstance(x, bool) and _get(x, "init_args") is not None]


def logger_run_dir(logger_cfg: Any) -> Path | None:
    """The folder a configured logger with a pinned ``version`` writes to (None when unpinned)."""
    args = _get(logger_cfg, "init_args")
    version, save_dir = _get(args, "version"), _get(args, "save_dir")
    if version is None or save_dir is None:
        return None
    name = _get(args, "name", "lightning_logs") or ""
    folder = version if isinstance(version, str) else f"version_{version}"
    return Path(save_dir) / name / folder


def _holds_a_run(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.startswith("events.out.tfevents.") or p.name == "metrics.csv" for p in folder.iterdir())


class DlgprCLI(LightningCLI):
    """LightningCLI with the project's defaults (seed, TensorBoard under default_root_dir, saved
    config, random states in checkpoints, no mixing of two runs in one pinned log folder)."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        # applies only where both classes take a prompt; the datamodule's own value is not read
        parser.link_arguments("model.init_args.prompt", "data.init_args.prompt")

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        trainer_cfg = _get(cfg, "trainer")
        root = _get(trainer_cfg, "default_root_dir")
        for logger in _loggers(trainer_cfg):
            args = _get(logger, "init_args")
            # Lightning's own default logger writes under default_root_dir; ours does too
            if root and _get(args, "save_dir") == DEFAULT_SAVE_DIR:
                args["save_dir"] = str(root)
        if self.subcommand is None:
            return  # run=False: the caller drives the trainer
        resuming = self.subcommand == "fit" and _get(cfg, "ckpt_path")
        for logger in _loggers(trainer_cfg):
            folder = logger_run_dir(logger)
            if folder is not None and not resuming and _holds_a_run(folder):
                raise SystemExit(
                    f"error: {folder} already holds a run's logs (the config pins the logger's version "
                    f"{_get(_get(logger, 'init_args'), 'version')!r}); a second run there would mix its events into the first. "
                    f"Choose another one (--trainer.logger.init_args.version <name>), remove the folder, or resume the run "
                    f"with --ckpt_path {folder / 'checkpoints' / 'last.ckpt'}."
                )


def main(args: list[str] | None = None, run: bool = True) -> DlgprCLI | None:
    """LightningCLI (``fit``, ``validate``, ``test``, ...), or ``index ...``: build a saved gallery
    index (:func:`dlgpr.app.index.index_gallery`, the same as ``scripts/index_gallery.py``)."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["index"]:
        from jsonargparse import auto_cli

        from dlgpr.app.index import index_gallery

        auto_cli(index_gallery, as_positional=False, args=argv[1:])
        return None
    return DlgprCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        trainer_defaults=trainer_defaults(),
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # modules own their optimiser and schedule
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()

__all__ = ["DlgprCLI", "main", "trainer_defaults", "logger_run_dir", "DEFAULT_SAVE_DIR"]
