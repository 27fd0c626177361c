"""Five-round dialogue evaluation at the end of validation, every ``every_n_epochs`` epochs.

The gallery is the validation split: the image embeddings the module's ``validation_step``
returns (``image_emb``, ``place_id``, ``view``) are gathered from all ranks and joined with the
split's records; the queries are a fixed, seeded subset of its places (their vague initial
captions). Rank 0 runs ``dlgpr.dialogue.run_dialogue`` with the configured questioner and
simulated user (on SynthCities by default: the oracle teacher and the oracle user) and
broadcasts the summary, so every rank logs the same numbers whatever the world size.

Logged: ``dialogue/round{t}/recall@{k}`` (cumulative, ChatIR-style), ``dialogue/bri``,
``dialogue/round{t}/prg``; a console table; a recall-versus-round figure, a few transcripts and
a figure of the first dialogue (its questions, answers and top-5 thumbnails with the target
framed; ``dlgpr.dialogue.evaluation.dialogue_figure``) in TensorBoard; one JSON line per evaluation in ``<log_dir>/dialogue_val.jsonl``, and the last
evaluation's per-query ranks ``[Q, rounds + 1]`` in ``<log_dir>/dialogue_val_ranks.json`` (with
query and place ids: what a paired test between two runs needs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from callbacks.gather import RowCollector
from dlgpr.dialogue.answerers import OracleAnswerer
from dlgpr.data.jpeg import decode_jpeg, read_split_jpegs
from dlgpr.dialogue.evaluation import bind_retriever, build_queries, dialogue_figure, recall_figure
from dlgpr.dialogue.loop import run_dialogue
from dlgpr.dialogue.questioners import OracleTeacherQuestioner
from dlgpr.dialogue.types import Answerer, Questioner
from dlgpr.ranking import Gallery, unique_rows
from dlgpr.retrieval import ModuleTextRetriever

_FIELDS = ("image_emb", "place_id", "view")


class DialogueEvalCallback(Callback):
    """Args:
        questioner: who asks (default: the SynthCities oracle teacher).
        answerer: the simulated user (default: the SynthCities oracle user).
        every_n_epochs: run after every n-th epoch's validation (and after the last epoch's).
        num_queries: places queried (a fixed seeded subset; None: all places of the split).
        rounds: question rounds.
        top_k: candidates shown to the questioner.
        ks: the K of the cumulative R@K logged per round.
        num_transcripts: dialogues written to TensorBoard as text (the first of them also as a figure
            with its thumbnails, ``dialogue/figure_0``).
        seed: choice of the query subset.
    """

    def __init__(
        self,
        questioner: Questioner | None = None,
        answerer: Answerer | None = None,
        every_n_epochs: int = 1,
        num_queries: int | None = 200,
        rounds: int = 5,
        top_k: int = 10,
        ks: list[int] | None = None,
        num_transcripts: int = 3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1 or rounds < 1 or top_k < 1:
            raise ValueError("every_n_epochs, rounds and top_k must be >= 1")
        self.questioner = questioner if questioner is not None else OracleTeacherQuestioner()
        self.answerer = answerer if answerer is not None else OracleAnswerer()
        self.every_n_epochs = every_n_epochs
        self.num_queries = num_queries
        self.rounds = rounds
        self.top_k = top_k
        self.ks = sorted(ks or [1, 5])
        self.num_transcripts = num_transcripts
        self.seed = seed
        self._collector = RowCollector(_FIELDS)
        self._records: dict[tuple[int, int], Any] | None = None
        self._jpegs: dict[str, bytes] | None = None
        self.last_summary: dict[str, Any] = {}

    def _due(self, trainer: Trainer) -> bool:
        """After every n-th epoch's validation and after the last epoch's; always in a standalone
        ``validate`` (no fit around it)."""
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != TrainerFn.FITTING:
            return True
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch == trainer.max_epochs
        return epoch % self.every_n_epochs == 0 or last

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._collector.reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[no-untyped-def]
        if self._due(trainer):
            self._collector.add(outputs)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._due(trainer):
            return
        rows = self._collector.gather(trainer, pl_module)
        summary: dict[str, Any] | None = None
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        if trainer.is_global_zero:
            summary = self._run(trainer, pl_module, rows, log_dir)
        summary = trainer.strategy.broadcast(summary, src=0)
        if not summary:
            return
        self.last_summary = summary
        for name, value in summary.items():
            if isinstance(value, float):
                pl_module.log(f"dialogue/{name}", value, sync_dist=False)

    def _run(self, trainer: Trainer, pl_module: LightningModule, rows: dict[str, torch.Tensor], log_dir: str | None) -> dict[str, Any]:
        if rows["place_id"].numel() == 0:
            rank_zero_info("[dialogue] no validation samples: skipped")
            return {}
        dm = trainer.datamodule
        if self._records is None:
            self._records = {(r.place_id, r.view): r for r in dm.records("val")}
        keep = unique_rows(rows["place_id"], rows["view"])
        recs = [self._records[(int(p), int(v))] for p, v in zip(rows["place_id"][keep], rows["view"][keep])]
        gallery = Gallery.from_records(recs, rows["image_emb"][keep])
        queries = build_queries(recs, self.num_queries, self.seed)
        retriever = ModuleTextRetriever(pl_module)
        bind_retriever(self.questioner, retriever)
        result = run_dialogue(retriever, self.questioner, self.answerer, queries, gallery, rounds=self.rounds, top_k=self.top_k)
        full = result.summary(self.ks)
        keys = [f"round{t}/recall@{k}" for t in range(self.rounds + 1) for k in self.ks] + ["bri"] + [f"round{t}/prg" for t in range(1, self.rounds + 1)]
        summary = {k: float(full[k]) for k in keys}
        self._report(trainer, result, summary, full, log_dir)
        return summary

    def _val_jpegs(self, trainer: Trainer) -> dict[str, bytes]:
        """JPEG bytes of the validation split's images, read once (empty when the datamodule has no shards)."""
        if self._jpegs is None:
            self._jpegs = {}
            data_dir = getattr(trainer.datamodule, "data_dir", None)
            if data_dir is not None:
                try:
                    self._jpegs = read_split_jpegs(data_dir, "val")
                except (OSError, ValueError, KeyError) as exc:
                    rank_zero_info(f"[dialogue] no thumbnails for the dialogue figure ({type(exc).__name__}: {exc})")
        return self._jpegs

    def _report(self, trainer: Trainer, result: Any, summary: dict[str, float], full: dict[str, Any], log_dir: str | None) -> None:
        header = "round " + " ".join(f"  R@{k}" for k in self.ks) + "    PRG"
        lines = [header]
        for t in range(self.rounds + 1):
            prg_text = f"{summary[f'round{t}/prg']:7.3f}" if t else "      -"
            lines.append(f"{t:5d} " + " ".join(f"{100 * summary[f'round{t}/recall@{k}']:5.1f}" for k in self.ks) + f" {prg_text}")
        rank_zero_info(
            f"[dialogue] epoch {trainer.current_epoch}: {len(result.queries)} queries, {self.rounds} rounds, "
            f"BRI {summary['bri']:.3f}, failures {full['stats']}\n" + "\n".join(lines)
        )
        experiment = getattr(trainer.logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_figure"):
            experiment.add_figure("dialogue/recall_vs_round", recall_figure({type(self.questioner).__name__: result}), trainer.global_step)
            for i in range(min(self.num_transcripts, len(result.queries))):
                experiment.add_text(f"dialogue/transcript_{i}", "    " + result.transcript(i).replace("\n", "\n    "), trainer.global_step)
            if self.num_transcripts > 0 and len(result.queries):
                jpegs = self._val_jpegs(trainer)
                image = (lambda key: decode_jpeg(jpegs[key])) if jpegs else None
                experiment.add_figure("dialogue/figure_0", dialogue_figure(result, 0, image=image), trainer.global_step)
        if log_dir is not None:
            path = Path(log_dir) / "dialogue_val.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                fh.write(json.dumps({"epoch": trainer.current_epoch, "step": trainer.global_step, **summary, "stats": full["stats"]}) + "\n")
            # the last evaluation's per-query ranks, for paired tests between runs (same queries: same seed and split)
            ranks = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                     "query_id": [q.query_id for q in result.queries], "place_id": [q.target.place_id for q in result.queries],
                     "ranks": result.ranks.tolist()}
            tmp = path.with_name("dialogue_val_ranks.json.tmp")
            tmp.write_text(json.dumps(ranks))
            tmp.replace(path.with_name("dialogue_val_ranks.json"))
