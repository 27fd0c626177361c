"""Static text-to-image place retrieval with full descriptions: R@1/5/10 each validation.

Every description of the split queries the gallery of all its images; a query is a hit at K
when the expected rank of the best image of its place is at most K (``dlgpr.ranking``: tied
scores count half, so a collapsed model ranks at chance; docs/METHOD.md, "Ranks"). The module's
``validation_step`` / ``test_step`` return ``{"image_emb", "text_emb", "place_id", "view"}``;
this callback collects them, gathers them from all ranks (so a DDP run reports the same numbers
as one process), searches once (faiss by default) and logs ``val/recall@K`` (``test/...`` in
``test``) to the loggers, one console line, and one JSON line per evaluation appended to
``<log_dir>/retrieval_<val|test>.jsonl`` (with ``fit_seconds``, the wall-clock since ``fit`` started,
for recall-against-time curves).

A module may score further embedding pairs: for each name in its ``eval_extra_views`` (CMPL:
``("global",)``) the step also returns ``image_emb_<name>`` / ``text_emb_<name>`` and the
callback logs ``val/<name>/recall@K`` beside the main score (CMPL: global similarity alone vs
global + local).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from callbacks.gather import RowCollector
from dlgpr.metrics import recall_at_k
from dlgpr.ranking import rank_of_place, unique_rows
from dlgpr.search import Backend

_FIELDS = ("image_emb", "text_emb", "place_id", "view")


class RetrievalEvalCallback(Callback):
    """Args:
        ks: the K of R@K.
        backend: top-k search backend (``faiss``, ``torch``, ``auto``).
        save_ranks: write each query's rank (main score) of the latest evaluation to
            ``<log_dir>/retrieval_<val|test>_ranks.json``, for paired comparisons of two runs
            over the same queries (``scripts/cmpl_ablation.py``).
    """

    def __init__(self, ks: list[int] | None = None, backend: Backend = "faiss", save_ranks: bool = True) -> None:
        super().__init__()
        self.ks = sorted(ks or [1, 5, 10])
        if self.ks[0] < 1:
            raise ValueError(f"ks must be >= 1, got {self.ks}")
        self.backend = backend
        self.save_ranks = save_ranks
        self._collector = RowCollector(_FIELDS)
        self._views: tuple[str, ...] = ()
        self.last_results: dict[str, float] = {}
        self._fit_start: float | None = None

    # ---- collection -----------------------------------------------------------------------------
    def _reset(self, pl_module: LightningModule) -> None:
        views = tuple(getattr(pl_module, "eval_extra_views", ()))
        if views != self._views or not self._collector.fields:
            self._views = views
            self._collector = RowCollector(_FIELDS + tuple(f"{m}_emb_{v}" for v in views for m in ("image", "text")))
        self._collector.reset()

    def _collect(self, outputs: Any) -> None:
        self._collector.add(outputs)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start = None

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset(pl_module)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[no-untyped-def]
        self._collect(outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[no-untyped-def]
        self._collect(outputs)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:  # a sanity check sees two batches: no meaningful recall
            self._evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluate(trainer, pl_module, "test")

    # ---- evaluation -----------------------------------------------------------------------------
    def _evaluate(self, trainer: Trainer, pl_module: LightningModule, prefix: str) -> None:
        rows = self._collector.gather(trainer, pl_module)
        if rows["place_id"].numel() == 0:
            rank_zero_info(f"[{prefix}] retrieval eval: no samples")
            return
        keep = unique_rows(rows["place_id"], rows["view"])
        labels = rows["place_id"][keep]
        recalls: dict[int, float] = {}
        main_ranks = None
        self.last_results = {}
        for view in ("", *self._views):
            suffix = f"_{view}" if view else ""
            image_emb, text_emb = rows[f"image_emb{suffix}"][keep].float(), rows[f"text_emb{suffix}"][keep].float()
            text_emb = text_emb.to(pl_module.device)  # the gather is on the CPU: search on the module's device
            ranks = rank_of_place(text_emb, labels, image_emb, labels, k=max(self.ks), backend=self.backend)
            view_recalls = recall_at_k(ranks, self.ks)
            recalls = recalls or view_recalls  # the console line shows the main score
            main_ranks = ranks if main_ranks is None else main_ranks
            name = f"{prefix}/{view}" if view else prefix
            self.last_results.update({f"{name}/recall@{k}": v for k, v in view_recalls.items()})
        for name, value in self.last_results.items():
            pl_module.log(name, value, rank_zero_only=False, sync_dist=False)
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if trainer.is_global_zero and log_dir is not None:
            record = {"epoch": trainer.current_epoch, "step": trainer.global_step, "queries": len(labels), **self.last_results}
            if self._fit_start is not None:  # wall-clock since fit started, evaluations included (a resumed run restarts it)
                record["fit_seconds"] = round(time.perf_counter() - self._fit_start, 1)
            path = Path(log_dir) / f"retrieval_{prefix}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            if self.save_ranks and main_ranks is not None:
                ranks_record = {"epoch": trainer.current_epoch, "step": trainer.global_step, "k": max(self.ks),
                                "place_id": labels.tolist(), "view": rows["view"][keep].tolist(), "rank": main_ranks.tolist()}
                (Path(log_dir) / f"retrieval_{prefix}_ranks.json").write_text(json.dumps(ranks_record))
        summary = "  ".join(f"R@{k} {100 * v:5.1f}" for k, v in recalls.items())
        rank_zero_info(
            f"[{prefix}] epoch {trainer.current_epoch} step {trainer.global_step}: {summary}  "
            f"({len(labels)} descriptions -> {len(labels)} images, {int(labels.unique().numel())} places)"
        )
