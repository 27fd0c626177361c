"""Pretrain dlgpr's small CLIP towers on a SynthCities world of their own, and export the weights
that ``backbone.pretrained: synthcities`` resolves (as the paper starts CMPL from OpenAI's CLIP).

    python scripts/pretrain_synthcities.py                                   # the shipped weights
    python scripts/pretrain_synthcities.py --resume true                     # after a kill
    python scripts/pretrain_synthcities.py --fit_args '["--trainer.max_steps", "200"]' --out /tmp/w.safetensors

Three steps, each skipped when its output exists (so a killed run resumes):

1. ``python -m dlgpr fit --config configs/pretrain/synthcities.yaml``: contrastive training of
   the two towers (global SDM + multi-similarity over the place's views, no CMPL heads) on a
   world with its own seed and cities, disjoint from the default world (other city names,
   centres, style priors and place ids). Nothing of the default world's train, val or test
   places is seen. Resumes from the run's ``last.ckpt`` with ``--resume true``.
2. Export: the towers' open_clip state dict from ``last.ckpt``, stored as float16 safetensors
   (the file ships in the package), checked to reproduce the checkpoint's embeddings.
3. A JSON file beside the weights: the command, the configs, steps, training wall-clock (kept
   across resumes by Lightning's ``Timer`` in the checkpoint), this call's wall-clock and CPU
   time, the pretraining world's own val recall, and the file's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch
from jsonargparse import ArgumentParser
from safetensors.torch import load_file, save_file

from dlgpr import cli
from dlgpr.models.clip_backbone import CLIPBackbone, ClipBackboneConfig

_BACKBONE_PREFIX = "model.backbone.model."


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def backbone_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The open_clip state dict of a retriever checkpoint's towers (CMPL or baseline module)."""
    state = checkpoint["state_dict"]
    for prefix in (_BACKBONE_PREFIX, "backbone.model."):
        towers = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if towers:
            return towers
    raise KeyError("the checkpoint holds no CLIP towers (no 'model.backbone.model.*' or 'backbone.model.*' weights)")


def export_towers(ckpt: Path, out: Path, model_name: str, dtype: torch.dtype = torch.float16) -> dict[str, float]:
    """Write the towers of ``ckpt`` to ``out`` (safetensors, ``dtype``) and check that they load.

    Returns the largest absolute difference of image and text embeddings between the exported
    towers and the checkpoint's own (float16 rounding only).
    """
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    towers = backbone_state_dict(checkpoint)
    learnt = checkpoint["state_dict"].get("log_logit_scale")
    if learnt is not None:  # the contrastive scale learnt with the towers goes where CLIP keeps its own
        towers["logit_scale"] = learnt.detach().reshape(towers["logit_scale"].shape).clone()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file({k: v.detach().to(dtype).contiguous() for k, v in towers.items()}, str(tmp), metadata={"model_name": model_name})
    tmp.replace(out)
    exported = CLIPBackbone(ClipBackboneConfig(model_name=model_name, pretrained=str(out))).eval()
    reference = CLIPBackbone(ClipBackboneConfig(model_name=model_name)).eval()
    reference.model.load_state_dict(towers)
    torch.manual_seed(0)
    images = torch.randn(4, 3, reference.image_size, reference.image_size)
    tokens = reference.tokenizer()(["a red door beside a blue phone booth", "a five-storey stone building with a striped awning"])
    with torch.no_grad():
        image_diff = (exported.encode_image(images) - reference.encode_image(images)).abs().max().item()
        text_diff = (exported.encode_text(tokens) - reference.encode_text(tokens)).abs().max().item()
    return {"image_max_abs_diff": image_diff, "text_max_abs_diff": text_diff, "logit_scale": float(exported.model.logit_scale.exp())}


def _last_val(log_dir: Path) -> dict | None:
    path = log_dir / "retrieval_val.jsonl"
    if not path.is_file():
        return None
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines[-1] if lines else None


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("configs/pretrain/synthcities.yaml"), help="the pretraining fit config")
    parser.add_argument("--out", type=Path, default=None, help="weights file (default: the shipped file of the config's architecture)")
    parser.add_argument("--resume", type=bool, default=False, help="continue the run from its last.ckpt")
    parser.add_argument("--fit_args", type=list[str], default=[], help="extra LightningCLI flags for the fit (e.g. a shorter run)")
    parser.add_argument("--note", type=str | None, default=None, help="a remark kept in the JSON record (e.g. how the run was resumed)")
    args = parser.parse_args(argv)

    wall0, cpu0 = time.perf_counter(), _cpu_seconds()
    fit_args = ["--config", str(args.config), *args.fit_args]
    probe = cli.main(fit_args, run=False)  # the resolved config, without running
    model_name = probe.model.clip.config.model_name
    log_dir = Path(probe.trainer.log_dir or ".")
    last = log_dir / "checkpoints" / "last.ckpt"
    del probe
    out = args.out or Path(__file__).resolve().parents[1] / "dlgpr" / "models" / "pretrained" / f"{model_name}-synthcities.safetensors"

    if last.is_file() and not args.resume:
        print(f"{last} exists: exporting it (pass --resume true to continue training it)")
    else:
        resume = ["--ckpt_path", str(last)] if (args.resume and last.is_file()) else []
        cli.main(["fit", *fit_args, *resume])
    wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0

    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    steps = int(checkpoint.get("global_step", 0))
    timer = next((v for k, v in checkpoint.get("callbacks", {}).items() if k.startswith("Timer")), {})
    train_seconds = timer.get("time_elapsed", {}).get("train")
    del checkpoint
    check = export_towers(last, out, model_name)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    info = {
        "model_name": model_name,
        "tag": "synthcities",
        "command": " ".join(["python", "scripts/pretrain_synthcities.py", *(argv if argv is not None else sys.argv[1:])]),
        "fit_config": str(args.config),
        "fit_args": args.fit_args,
        "checkpoint": str(last),
        "steps": steps,
        "train_wall_seconds": round(train_seconds, 1) if train_seconds is not None else None,
        "this_call_wall_seconds": round(wall, 1),
        "this_call_cpu_seconds": round(cpu, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "pretraining_world_val": _last_val(log_dir),
        "export_check": check,
        "sha256": digest,
        "bytes": out.stat().st_size,
    }
    if args.note:
        info["note"] = args.note
    info_path = out.with_suffix(".json")
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info, indent=1))
    loaded = load_file(str(out))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {len(loaded)} tensors) and {info_path}")


if __name__ == "__main__":
    main()
