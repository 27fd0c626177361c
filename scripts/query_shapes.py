"""Which queries a trained retriever can read: static R@K on one split for several query shapes.

    python scripts/query_shapes.py --ckpt lightning_logs/version_0/checkpoints/last.ckpt
    python scripts/query_shapes.py --ckpt ... --split val --data_dir data/synthcities --json out.json

One query per place of the split (its first view's texts), against every image of the split:

- ``full description``: what the static evaluation reads;
- ``caption``: the vague first caption (a dialogue's round 0);
- ``caption + k description sentences``: k sentences of the description drawn at random (the
  dialogue-shaped training queries);
- ``caption + k answers``: the simulated user's answers (``OracleAnswerer``'s sentence for each
  of k attributes of the place drawn at random), as a dialogue's query reads after k rounds
  with perfect answers, but without the questioner's choice of attributes;
- ``k answers``: the same answers without the caption.

The gap between "k description sentences" and "k answers" is how much the retriever depends on
the description's phrasing rather than on what the words name. Needs a SynthCities split
(answers come from its attribute ground truth). Ranks count ties at their expected position.

``--per_slot`` adds one row per askable attribute: what a single answer about it does to the
caption's rank (mean change of log rank over the split's places; 0 = no effect, -0.69 = the
rank halves), and whether the image embedding carries the attribute at all: a linear probe
(a ridge-regression classifier) trained on the train split's image embeddings and scored on this
split's, next to the majority-class rate. An attribute the probe cannot read from images is
one no question about it can help the retriever with, however it is phrased.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from datamodules.dqcities import DQCitiesDataModule
from dlgpr.data.streaming import _SENTENCE_END
from dlgpr.data.synth.dialogue import SLOT_QUESTIONS, answer_sentence
from dlgpr.metrics import linear_probe, recall_at_k
from dlgpr.ranking import rank_of_place
from dlgpr.retrieval import ModuleTextRetriever, encode_gallery, load_retriever

def _sentences(description: str, k: int, rng: random.Random) -> list[str]:
    parts = [s for s in _SENTENCE_END.split(description.strip()) if s]
    return rng.sample(parts, min(k, len(parts)))


def _answers(attributes: dict, k: int, rng: random.Random) -> list[str]:
    slots = [s for s in SLOT_QUESTIONS if s in attributes]
    return [answer_sentence(s, attributes[s], attributes) for s in rng.sample(slots, min(k, len(slots)))]


def shapes(ks_sentences: list[int], ks_answers: list[int]) -> dict:
    out = {"full description": lambda r, rng: r.description, "caption": lambda r, rng: r.initial_caption}
    for k in ks_sentences:
        out[f"caption + {k} description sentences"] = lambda r, rng, k=k: " ".join([r.initial_caption, *_sentences(r.description, k, rng)])
    for k in ks_answers:
        out[f"caption + {k} answers"] = lambda r, rng, k=k: " ".join([r.initial_caption, *_answers(r.attributes, k, rng)])
    if ks_answers:
        k = max(ks_answers)
        out[f"{k} answers"] = lambda r, rng, k=k: " ".join(_answers(r.attributes, k, rng))
    return out


def slot_rows(module, retriever: ModuleTextRetriever, places: list, gallery, data_dir: str, split: str) -> dict:
    """Per askable slot: effect of one answer on the caption's rank, and the image probe."""
    def ranks(texts: list[str], ids: list[int]) -> torch.Tensor:
        emb = retriever.embed_texts(texts)
        return rank_of_place(emb, torch.tensor(ids), gallery.search_embeddings(emb), gallery.place_ids, k=10, backend="torch").double()

    base = ranks([p.initial_caption for p in places], [p.place_id for p in places])
    train = encode_gallery(module, data_dir, "train")
    rows = {}
    for slot in SLOT_QUESTIONS:
        idx = [i for i, p in enumerate(places) if slot in p.attributes]
        if not idx:
            continue
        ps = [places[i] for i in idx]
        texts = [f"{p.initial_caption} {answer_sentence(slot, p.attributes[slot], p.attributes)}" for p in ps]
        r = ranks(texts, [p.place_id for p in ps])
        y_train = [str(a.get(slot)) for a in train.attributes]
        y_eval = [str(a.get(slot)) for a in gallery.attributes]
        predicted = linear_probe(train.embeddings, y_train, gallery.embeddings)
        majority = max(set(y_train), key=y_train.count)
        rows[slot] = {"dlog_rank": float((r.log() - base[idx].log()).mean()), "recall@1": float((r <= 1).double().mean()),
                      "probe_accuracy": sum(a == b for a, b in zip(predicted, y_eval)) / len(y_eval),
                      "majority_rate": sum(v == majority for v in y_eval) / len(y_eval),
                      "values": len(set(y_train)), "example": texts[0]}
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data_dir", default="data/synthcities")
    ap.add_argument("--split", default="val")
    ap.add_argument("--sentences", nargs="*", type=int, default=[3, 5, 10])
    ap.add_argument("--answers", nargs="*", type=int, default=[5, 10])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per_slot", action="store_true", help="also one row per askable attribute (answer effect, image probe)")
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    args = ap.parse_args(argv)

    module = load_retriever(args.ckpt, map_location="cuda" if torch.cuda.is_available() else "cpu").eval()
    dm = DQCitiesDataModule(data_dir=args.data_dir, synthetic=None)
    dm.set_preprocessing(module.preprocessing())
    dm.setup("validate" if args.split == "val" else "test")
    records = dm.records(args.split)
    if not any(r.attributes for r in records):
        raise ValueError(f"{args.data_dir} ({args.split}): no attribute ground truth; answers need a SynthCities split")
    gallery = encode_gallery(module, args.data_dir, args.split)
    first: dict[int, object] = {}
    for r in sorted(records, key=lambda r: (r.place_id, r.view)):
        first.setdefault(r.place_id, r)
    places = list(first.values())
    labels = torch.tensor([r.place_id for r in places])
    retriever = ModuleTextRetriever(module)
    table = {}
    print(f"{args.ckpt}: {len(places)} queries ({args.split}, one per place) against {len(gallery.place_ids)} images")
    print("| query | R@1 | R@5 | R@10 | example |\n|---|---|---|---|---|")
    for name, make in shapes(args.sentences, args.answers).items():
        texts = [make(r, random.Random(f"{args.seed}-{name}-{r.place_id}")) for r in places]
        emb = retriever.embed_texts(texts)
        ranks = rank_of_place(emb, labels, gallery.search_embeddings(emb), gallery.place_ids, k=10, backend="torch")
        rec = recall_at_k(ranks, [1, 5, 10])
        table[name] = {f"recall@{k}": v for k, v in rec.items()}
        example = texts[0] if len(texts[0]) <= 90 else texts[0][:87] + "..."
        print(f"| {name} | {100 * rec[1]:.1f} | {100 * rec[5]:.1f} | {100 * rec[10]:.1f} | {example} |", flush=True)
    out = {"ckpt": args.ckpt, "split": args.split, "queries": len(places), "shapes": table}
    if args.per_slot:
        rows = slot_rows(module, retriever, places, gallery, args.data_dir, args.split)
        out["per_slot"] = rows
        print("\n| attribute | values | caption + its answer: mean change of log rank | R@1 | image probe accuracy | majority rate |")
        print("|---|---|---|---|---|---|")
        for slot, row in sorted(rows.items(), key=lambda kv: kv[1]["dlog_rank"]):
            print(f"| {slot} | {row['values']} | {row['dlog_rank']:+.3f} | {100 * row['recall@1']:.1f} | "
                  f"{100 * row['probe_accuracy']:.1f} | {100 * row['majority_rate']:.1f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return table


if __name__ == "__main__":
    main()
