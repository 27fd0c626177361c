"""Train the embedded GLOBE policy's corpus tokenizer (byte-level BPE, ChatML, GLOBE's format tags).

    python scripts/build_geo_policy_tokenizer.py --world data/synthcities-geo \
        --reasoning data/geo_reasoning/synthcities --out lightning_logs/globe/tokenizer

Trained on the prompts, the train split's descriptions (as the pretraining cuts them) and the kept
reasonings with their answers; ``configs/globe_policy_pretrain.yaml`` builds its policy around it.
Skipped when ``--out`` already holds a tokenizer (``--force`` rebuilds it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datamodules.geo_policy import geo_policy_texts
from dlgpr.models.questioner import GEO_FORMAT_TAGS, train_corpus_tokenizer


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="data/synthcities-geo")
    ap.add_argument("--reasoning", default="data/geo_reasoning/synthcities")
    ap.add_argument("--out", default="lightning_logs/globe/tokenizer")
    ap.add_argument("--vocab_size", type=int, default=2048)
    ap.add_argument("--max_caption_words", type=int, default=48)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if (out / "tokenizer.json").is_file() and not args.force:
        print(f"{out}: tokenizer exists (--force rebuilds it)")
        return out
    texts = geo_policy_texts(args.world, args.reasoning, args.max_caption_words)
    tok = train_corpus_tokenizer(texts, vocab_size=args.vocab_size, tags=GEO_FORMAT_TAGS)
    tok.save_pretrained(str(out))
    print(f"{out}: {len(tok)} tokens from {len(texts)} texts")
    return out


if __name__ == "__main__":
    main()
