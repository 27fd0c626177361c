"""Command lines of ``python -m dlgpr`` for the shipped configs, shrunk to seconds (tiny data and models, CPU)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def tiny_args(data_dir: Path, *extra: str) -> list[str]:
    """configs/cmpl.yaml shrunk to seconds: tiny data, a tiny random CLIP at 32 px, short text, no workers."""
    return [
        "--config", str(ROOT / "configs" / "cmpl.yaml"),
        "--model.init_args.backbone.model_name", "dlgpr-tiny",
        "--model.init_args.backbone.pretrained", "null",
        "--model.init_args.logit_scale", "14.2857",
        "--data.init_args.data_dir", str(data_dir),
        "--data.init_args.synthetic", "null",
        "--data.init_args.places_per_batch", "4",
        "--data.init_args.views_per_place", "2",
        "--data.init_args.eval_batch_size", "16",
        "--data.init_args.num_workers", "0",
        "--model.init_args.backbone.image_size", "32",
        "--model.init_args.backbone.context_length", "24",
        "--model.init_args.backbone.long_text_length", "32",
        "--trainer.accelerator", "cpu",
        "--trainer.precision", "32-true",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        *extra,
    ]


def sft_args(world: dict[str, Path], tmp: Path, *extra: str) -> list[str]:
    """configs/dqpilot_sft.yaml shrunk to seconds."""
    return [
        "--config", str(ROOT / "configs" / "dqpilot_sft.yaml"),
        "--data.init_args.data_dir", str(world["corpus"]),
        "--data.init_args.place_data_dir", str(world["places"]),
        "--data.init_args.batch_size", "2",
        "--data.init_args.val_batch_size", "2",
        "--model.init_args.policy.model", str(world["tokenizer"]),
        "--model.init_args.policy.scratch.hidden_size", "32",
        "--model.init_args.policy.scratch.num_layers", "1",
        "--model.init_args.policy.scratch.num_heads", "2",
        "--model.init_args.policy.scratch.num_kv_heads", "1",
        "--model.init_args.policy.scratch.intermediate_size", "64",
        "--model.init_args.prompt.max_prompt_tokens", "512",
        "--model.init_args.export_dir", str(tmp / "sft_policy"),
        "--trainer.logger.init_args.save_dir", str(tmp / "logs"),
        "--trainer.limit_val_batches", "1",
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        *extra,
    ]
