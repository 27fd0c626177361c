"""Adaptive stopping on SynthCities: R@1 against the mean number of questions, thresholds chosen on val.

    python scripts/evaluate_stopping.py --ckpt lightning_logs/version_0/checkpoints/last.ckpt \
        --data_dir data/synthcities --out_dir runs/stopping_eval

For each split (val, then test) and each rule (``margin``, ``entropy``) it runs ``run_dialogue``
once with a threshold no round passes, which records the rule's confidence of every ranked round
(``DialogueResult.confidence``) along the fixed ``rounds``-round dialogue. A query stopped by a
threshold would have had exactly that dialogue up to its stop (the questioner and the user see
only the query's own history), so the whole curve over thresholds is read from it: a query stops
at the first round whose confidence passes, its final list is that round's.

The threshold of each rule is chosen on val: the one asking the fewest questions on average whose
val R@1 of the final list is at most ``tolerance`` points below the fixed dialogue's. Test reports
it (and the whole test curve, for the figure); the chosen thresholds are then run for real on test
(``run_dialogue(..., stopping=...)``) and the script checks that they give the numbers read off
the curve. Writes ``table.md``, ``curve.png`` and ``results.json`` to ``out_dir``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from jsonargparse import auto_cli

from datamodules.dqcities import DQCitiesDataModule
from dlgpr.dialogue.answerers import OracleAnswerer
from dlgpr.dialogue.evaluation import bind_retriever, build_queries
from dlgpr.dialogue.loop import DialogueResult, run_dialogue
from dlgpr.dialogue.questioners import OracleTeacherQuestioner
from dlgpr.dialogue.stopping import StoppingConfig
from dlgpr.dialogue.types import Answerer, Questioner
from dlgpr.retrieval import ModuleTextRetriever, encode_gallery, load_retriever

NEVER = {"margin": float("inf"), "entropy": float("-inf")}


def curve_point(result: DialogueResult, config: StoppingConfig) -> dict[str, float]:
    """What ``config`` would do on the fixed dialogue of ``result`` (run with a never-passing threshold)."""
    ranks, conf = result.ranks, result.confidence  # [Q, T+1]
    rounds = result.rounds
    stop = torch.full((ranks.shape[0],), rounds, dtype=torch.long)
    for t in range(rounds - 1, config.min_questions - 1, -1):  # the earliest passing round wins
        stop = torch.where(config.passes(conf[:, t]), torch.full_like(stop, t), stop)  # NaN never passes
    rows = torch.arange(ranks.shape[0])
    final = ranks[rows, stop]
    best_so_far = torch.stack([ranks[i, : int(stop[i]) + 1].min() for i in rows.tolist()])
    return {
        "threshold": config.threshold,
        "mean_questions": float(stop.double().mean()),
        "recall@1": 100 * float((final <= 1).double().mean()),
        "recall@5": 100 * float((final <= 5).double().mean()),
        "cumulative_recall@1": 100 * float((best_so_far <= 1).double().mean()),
        "stopped_early": 100 * float((stop < rounds).double().mean()),
    }


def thresholds(result: DialogueResult, rounds: int, steps: int) -> list[float]:
    """A grid from the quantiles of the finite confidences of the asked rounds (val's), plus never."""
    conf = result.confidence[:, :rounds]
    finite = conf[conf.isfinite()]
    qs = torch.linspace(0, 1, steps + 1, dtype=torch.float64)[1:-1]
    return sorted({round(float(x), 6) for x in torch.quantile(finite, qs)})


def evaluate_stopping(
    ckpt: str,
    data_dir: str = "data/synthcities",
    val_split: str = "val",
    test_split: str = "test",
    questioner: Questioner | None = None,
    answerer: Answerer | None = None,
    top_k: int = 30,
    rounds: int = 5,
    rules: list[str] = ["margin", "entropy"],  # noqa: B006 (jsonargparse reads the default)
    stopping: StoppingConfig = StoppingConfig(),  # noqa: B008
    tolerance: float = 1.0,
    steps: int = 20,
    num_queries: int | None = None,
    out_dir: str = "runs/stopping_eval",
    seed: int = 0,
) -> dict[str, Any]:
    """Args:
        ckpt: retriever checkpoint.
        data_dir: SynthCities (or DQ-Cities) shards.
        val_split: where thresholds are chosen.
        test_split: where they are reported.
        questioner: who asks (default: the oracle teacher).
        answerer: the simulated user (default: the oracle).
        top_k: candidates the questioner sees.
        rounds: questions at most (the fixed dialogue's length).
        rules: stopping rules to evaluate.
        stopping: the rules' other settings (top_k read, temperature, min_questions); the
            threshold is swept.
        tolerance: R@1 points below the fixed dialogue's that the val choice may give up.
        steps: the threshold grid has ``steps - 1`` quantiles of the val confidences.
        num_queries: places queried per split (None: all).
        out_dir: where table.md, curve.png and results.json go.
    """
    questioner = questioner or OracleTeacherQuestioner()
    answerer = answerer or OracleAnswerer()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = load_retriever(ckpt, map_location=device)
    retriever = ModuleTextRetriever(module)
    bind_retriever(questioner, retriever)
    dm = DQCitiesDataModule(data_dir=data_dir, synthetic=None)
    dm.set_preprocessing(module.preprocessing())
    dm.setup("test")
    data: dict[str, Any] = {}
    runs: dict[str, dict[str, DialogueResult]] = {}
    for split in (val_split, test_split):
        start = time.perf_counter()
        gallery = encode_gallery(module, data_dir, split)
        queries = build_queries(dm.records(split), num_queries, seed)
        data[split] = (gallery, queries)
        runs[split] = {}
        for rule in rules:
            cfg = replace(stopping, rule=rule, threshold=NEVER[rule])
            runs[split][rule] = run_dialogue(retriever, questioner, answerer, queries, gallery, rounds=rounds, top_k=top_k, stopping=cfg)
        print(f"{split}: {len(gallery)} images, {len(queries)} queries, {time.perf_counter() - start:.1f} s")

    out: dict[str, Any] = {"ckpt": ckpt, "data_dir": data_dir, "rounds": rounds, "top_k": top_k, "tolerance": tolerance,
                           "stopping": asdict(stopping), "rules": {}}
    for rule in rules:
        grid = thresholds(runs[val_split][rule], rounds, steps)
        val_curve = [curve_point(runs[val_split][rule], replace(stopping, rule=rule, threshold=th)) for th in grid]
        test_curve = [curve_point(runs[test_split][rule], replace(stopping, rule=rule, threshold=th)) for th in grid]
        fixed_val = curve_point(runs[val_split][rule], replace(stopping, rule=rule, threshold=NEVER[rule]))
        fixed_test = curve_point(runs[test_split][rule], replace(stopping, rule=rule, threshold=NEVER[rule]))
        ok = [p for p in val_curve if p["recall@1"] >= fixed_val["recall@1"] - tolerance]
        chosen_val = min(ok, key=lambda p: (p["mean_questions"], -p["recall@1"])) if ok else fixed_val
        th = chosen_val["threshold"]
        chosen_test = curve_point(runs[test_split][rule], replace(stopping, rule=rule, threshold=th))
        # the chosen threshold run for real on test: the curve must be what run_dialogue does
        gallery, queries = data[test_split]
        real = run_dialogue(retriever, questioner, answerer, queries, gallery, rounds=rounds, top_k=top_k,
                            stopping=replace(stopping, rule=rule, threshold=th))
        real_point = {"mean_questions": float(real.questions_asked.double().mean()), "recall@1": 100 * float((real.ranks[:, -1] <= 1).double().mean())}
        agrees = abs(real_point["mean_questions"] - chosen_test["mean_questions"]) < 1e-9 and abs(real_point["recall@1"] - chosen_test["recall@1"]) < 1e-9
        out["rules"][rule] = {"threshold": th, "val": chosen_val, "test": chosen_test, "test_run": real_point, "run_agrees_with_curve": agrees,
                              "fixed_val": fixed_val, "fixed_test": fixed_test, "val_curve": val_curve, "test_curve": test_curve}
        print(f"{rule}: threshold {th:g} (val), test R@1 {chosen_test['recall@1']:.1f} with {chosen_test['mean_questions']:.2f} questions "
              f"(fixed {rounds}: {fixed_test['recall@1']:.1f}); run_dialogue agrees: {agrees}")

    dest = Path(out_dir)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "results.json").write_text(json.dumps(out, indent=1))
    table = table_markdown(out, rounds)
    (dest / "table.md").write_text(table)
    figure(out, rounds).savefig(dest / "curve.png")
    print(table)
    print(f"wrote {dest / 'table.md'}, {dest / 'curve.png'}, {dest / 'results.json'}")
    return out


def table_markdown(out: dict[str, Any], rounds: int) -> str:
    lines = ["| stopping | threshold (chosen on val) | val R@1 | val questions | test R@1 | test cumulative R@1 | test R@5 | test questions | test stopped early |",
             "|---|---|---|---|---|---|---|---|---|"]
    first = next(iter(out["rules"].values()))
    fv, ft = first["fixed_val"], first["fixed_test"]
    lines.append(f"| fixed {rounds} rounds | - | {fv['recall@1']:.1f} | {fv['mean_questions']:.2f} | {ft['recall@1']:.1f} | "
                 f"{ft['cumulative_recall@1']:.1f} | {ft['recall@5']:.1f} | {ft['mean_questions']:.2f} | 0 % |")
    for rule, r in out["rules"].items():
        v, t = r["val"], r["test"]
        op = ">=" if rule == "margin" else "<="
        lines.append(f"| {rule} {op} threshold | {r['threshold']:.4g} | {v['recall@1']:.1f} | {v['mean_questions']:.2f} | {t['recall@1']:.1f} | "
                     f"{t['cumulative_recall@1']:.1f} | {t['recall@5']:.1f} | {t['mean_questions']:.2f} | {t['stopped_early']:.0f} % |")
    lines += ["", "Test curve over the val-quantile thresholds (R@1 of the final list, %; mean questions):", ""]
    for rule, r in out["rules"].items():
        lines.append(f"- {rule}: " + ", ".join(f"{p['threshold']:.3g}: {p['recall@1']:.1f} @ {p['mean_questions']:.2f}" for p in r["test_curve"]))
    return "\n".join(lines) + "\n"


def figure(out: dict[str, Any], rounds: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for rule, r in out["rules"].items():
        pts = sorted(r["test_curve"], key=lambda p: p["mean_questions"])
        line, = ax.plot([p["mean_questions"] for p in pts], [p["recall@1"] for p in pts], marker=".", label=f"{rule} (test, thresholds from val quantiles)")
        ax.plot([r["test"]["mean_questions"]], [r["test"]["recall@1"]], marker="o", ms=9, mfc="none", color=line.get_color(),
                label=f"{rule}: threshold chosen on val")
    ft = next(iter(out["rules"].values()))["fixed_test"]
    ax.plot([ft["mean_questions"]], [ft["recall@1"]], marker="*", ms=12, color="k", ls="none", label=f"fixed {rounds} rounds")
    ax.set_xlabel("mean questions asked")
    ax.set_ylabel("R@1 of the final list (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    auto_cli(evaluate_stopping, as_positional=False)
