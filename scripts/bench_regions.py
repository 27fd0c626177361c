"""Cost of the regions stage of the DQ-Cities builder (DlgPR sec. 3.2; dlgpr/pipeline/phrases.py, grounding.py).

    OMP_NUM_THREADS=1 python scripts/bench_regions.py --threads 1
    python scripts/bench_regions.py --places_per_city 50 --device cuda --json

Inputs: SynthCities descriptions (about 160 words each) and their rendered views, upscaled to
640x480 and decoded from JPEG as the builder reads GSV images. Every model has random weights
(nothing is downloaded): the cost does not depend on them. Medians over ``--repeats``:
  1. spaCy maximal noun phrases: descriptions/s through ``nlp.pipe`` in batches against one
     ``nlp(text)`` per description; phrases per description;
  2. phrase embedding with the open_clip text tower, one call per description as the stage makes
     them: phrases/s with the phrase cache against without it (phrases recur across
     descriptions), and open_clip's own full-context ``encode_text`` on ``--full_context_phrases``
     phrases (what the causal prefix path of the grounder saves);
  3. YOLO-World grounding at ``--imgsz`` (phrases already cached, so this is letterbox, detector
     and decoding): images/s and seconds per 1,000 images, one image per forward (``ground``) and
     ``--image_batch`` per forward (``ground_many``).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import time
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from dlgpr.data.synth.generate import SynthCitiesConfig, make_world, render_place_views
from dlgpr.pipeline.grounding import GroundingConfig, YOLOWorldGrounder
from dlgpr.pipeline.phrases import PhraseConfig, PhraseExtractor, maximal_noun_phrases


def synth_inputs(cities: int, places_per_city: int, size: tuple[int, int]) -> tuple[list[str], list[Image.Image]]:
    """One view per place: its description and its image, upscaled and JPEG-decoded."""
    config = SynthCitiesConfig(num_cities=cities, places_per_city=places_per_city, views_per_place=1, num_workers=0)
    texts, images = [], []
    for place in make_world(config).places:
        jpeg, description, _ = render_place_views(place, config)[0]
        with Image.open(io.BytesIO(jpeg)) as small:
            buf = io.BytesIO()
            small.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
        with Image.open(io.BytesIO(buf.getvalue())) as decoded:
            images.append(decoded.convert("RGB"))
        texts.append(description)
    return texts, images


def timed(fns: Sequence[Callable[[], Any]], repeats: int) -> list[tuple[float, Any]]:
    """Median wall seconds of each of ``fns`` over ``repeats`` runs, and its last result.

    The functions run interleaved (a, b, a, b, ...) so that drift on a shared machine hits all alike.
    """
    times: list[list[float]] = [[] for _ in fns]
    outs: list[Any] = [None for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - start)
    return [(statistics.median(t), out) for t, out in zip(times, outs)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cities", type=int, default=2)
    ap.add_argument("--places_per_city", type=int, default=20, help="one description and image per place")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="yolov8s-worldv2.yaml", help="YOLO-World ultralytics yaml")
    ap.add_argument("--clip_model", default="ViT-B-32")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--image_batch", type=int, default=8, help="images per forward in ground_many")
    ap.add_argument("--spacy_batch", type=int, default=64, help="nlp.pipe batch size")
    ap.add_argument("--full_context_phrases", type=int, default=64,
                    help="phrases timed through open_clip's 77-token encode_text (it is slow on CPU)")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = ap.parse_args()
    if min(args.cities, args.places_per_city, args.repeats, args.threads, args.image_batch) < 1:
        ap.error("--cities, --places_per_city, --repeats, --threads and --image_batch must be >= 1")
    torch.set_num_threads(args.threads)
    # The random-weight warnings of the detector and open_clip are expected here.
    logging.disable(logging.WARNING)

    texts, images = synth_inputs(args.cities, args.places_per_city, (640, 480))
    n = len(texts)
    print(f"{n} SynthCities descriptions (mean {statistics.mean(len(t.split()) for t in texts):.0f} words) and 640x480 images; "
          f"device {args.device}, {torch.get_num_threads()} torch threads, {args.repeats} repeats")
    rows: list[tuple[str, float, str]] = []
    result: dict[str, Any] = {"descriptions": n, "device": args.device, "threads": torch.get_num_threads(), "repeats": args.repeats,
                              "model": args.model, "clip_model": args.clip_model, "imgsz": args.imgsz}

    # 1. spaCy
    config = PhraseConfig(batch_size=args.spacy_batch)
    extractor = PhraseExtractor(config)
    nlp, exclude, non_object = extractor.nlp, frozenset(config.exclude_heads), frozenset(config.non_object_heads)
    extractor(texts[:2])  # warm-up
    (piped_s, phrases), (single_s, single) = timed([
        lambda: extractor(texts),
        lambda: [maximal_noun_phrases(nlp(t), config.max_words, exclude, non_object_heads=non_object, max_phrases=config.max_phrases)
                 for t in texts],
    ], args.repeats)
    assert single == phrases, "nlp.pipe and nlp(text) gave different phrases"
    total = sum(len(p) for p in phrases)
    distinct = len({p for ps in phrases for p in ps})
    result.update(spacy_pipe_desc_per_s=n / piped_s, spacy_single_desc_per_s=n / single_s, spacy_pipe_speedup=single_s / piped_s,
                  phrases_per_description=total / n, phrases_total=total, phrases_distinct=distinct)
    rows += [("spaCy nlp.pipe (batched)", n / piped_s, "descriptions/s"),
             ("spaCy nlp(text) one by one", n / single_s, "descriptions/s"),
             ("  pipe / one by one", single_s / piped_s, "x"),
             (f"phrases per description (max_phrases {config.max_phrases})", total / n, f"({distinct} distinct of {total})")]

    # 2. phrase embedding
    grounder = YOLOWorldGrounder(GroundingConfig(model=args.model, clip_model=args.clip_model, clip_pretrained=None,
                                                 imgsz=args.imgsz, device=args.device, image_batch=args.image_batch))
    cache_size = grounder.config.phrase_cache_size

    def embed_all(cached: bool) -> None:
        grounder.clear_phrase_cache()
        grounder.config.phrase_cache_size = cache_size if cached else 0
        for ps in phrases:
            grounder.embed_phrases(ps)
        if grounder.device.type == "cuda":
            torch.cuda.synchronize()

    grounder.embed_phrases(phrases[0])  # warm-up
    (uncached_s, _), (cached_s, _) = timed([lambda: embed_all(False), lambda: embed_all(True)], args.repeats)
    sample = [p for ps in phrases for p in ps][: args.full_context_phrases]
    tokens = grounder.tokenizer(sample).to(grounder.device)

    def full_context() -> None:
        with torch.inference_mode():
            grounder.text_model.encode_text(tokens, normalize=True)
        if grounder.device.type == "cuda":
            torch.cuda.synchronize()

    [(full_s, _)] = timed([full_context], args.repeats)
    result.update(embed_cached_phrases_per_s=total / cached_s, embed_uncached_phrases_per_s=total / uncached_s,
                  embed_cache_speedup=uncached_s / cached_s, embed_full_context_phrases_per_s=len(sample) / full_s,
                  embed_prefix_speedup=(total / uncached_s) / (len(sample) / full_s))
    rows += [("embed, with cache", total / cached_s, "phrases/s"),
             ("embed, without cache", total / uncached_s, "phrases/s"),
             ("  cache / no cache", uncached_s / cached_s, "x"),
             (f"embed, open_clip 77-token encode_text ({len(sample)})", len(sample) / full_s, "phrases/s"),
             ("  causal prefix / 77-token", result["embed_prefix_speedup"], "x")]

    # 3. grounding (every phrase is cached by now)
    embed_all(True)
    grounder.ground(images[0], phrases[0])  # warm-up

    def one_by_one() -> None:
        for image, ps in zip(images, phrases):
            grounder.ground(image, ps)

    (single_s, _), (batched_s, _) = timed([one_by_one, lambda: grounder.ground_many(images, phrases)], args.repeats)
    result.update(ground_images_per_s=n / single_s, ground_s_per_1000=1000 * single_s / n,
                  ground_many_images_per_s=n / batched_s, ground_many_s_per_1000=1000 * batched_s / n)
    name = args.model.removesuffix(".yaml")
    rows += [(f"{name} @{args.imgsz}, ground (1 image/forward)", n / single_s, f"images/s = {1000 * single_s / n:.0f} s / 1,000 images"),
             (f"{name} @{args.imgsz}, ground_many ({args.image_batch}/forward)", n / batched_s,
              f"images/s = {1000 * batched_s / n:.0f} s / 1,000 images")]

    width = max(len(r[0]) for r in rows)
    print()
    for label, value, unit in rows:
        print(f"{label:<{width}}  {value:10.2f}  {unit}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
