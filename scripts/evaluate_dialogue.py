"""Evaluate a retriever checkpoint in 5-round dialogues with one or more questioners.

    python scripts/evaluate_dialogue.py --config configs/eval/synthcities.yaml --ckpt path/to/last.ckpt

Loads the retriever with ``dlgpr.retrieval.load_retriever``, encodes the gallery (all images of
``split``) once, builds one query per place from its vague initial caption, runs
``run_dialogue`` for each configured questioner against the configured simulated user, and
writes to ``out_dir``: ``table.md`` (the paper's Table 1 shape: Initial round 0, each
questioner at ``report_rounds``, cumulative R@1/R@5 and BRI), ``results.json`` (summaries,
timings and every per-query transcript), ``recall.png`` (cumulative R@1 against the round) and
``dialogue_<questioner>.png``: the same test dialogue (``figure_query``) with each questioner,
its questions, answers and top-5 thumbnails with the target framed.

User noise (``noise_rates``): each of ``noise_questioners`` against a ``NoisyAnswerer`` at each
error rate; ``noise.md`` (a table), ``noise.png`` (R@1 at the last round against the error
rate) and ``noise_results.json`` (per-query ranks in the layout of ``results.json``, so
``scripts/significance.py`` pairs two questioners at one error rate).

Dialogues with people: ``--human_logs runs/tryit/sessions.jsonl`` (the "try it" log of the web
page, ``python -m dlgpr.app``) tabulates those sessions the same way (R@K per round with human
answers, BRI, PRG; ``dlgpr.app.tryit.log_result``) into ``human.md`` and ``human.json``; without
``--ckpt`` only the logs are tabulated:

    python scripts/evaluate_dialogue.py --human_logs runs/tryit/sessions.jsonl --out_dir runs/dialogue_eval/people
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from jsonargparse import auto_cli

from datamodules.dqcities import DQCitiesDataModule
from dlgpr.dialogue.answerers import NoiseConfig, NoisyAnswerer, OracleAnswerer
from dlgpr.data.jpeg import decode_jpeg, read_split_jpegs
from dlgpr.dialogue.evaluation import bind_retriever, build_queries, dialogue_figure, recall_figure, table_markdown
from dlgpr.dialogue.loop import DialogueResult, run_dialogue
from dlgpr.dialogue.types import Answerer, Questioner
from dlgpr.retrieval import ModuleTextRetriever, encode_gallery, load_retriever


@dataclass
class QuestionerEntry:
    """One row group of the table."""

    name: str
    questioner: Questioner
    top_k: int = 10
    """Candidates shown to this questioner each round."""


def tabulate_logs(human_logs: list[str], rounds: int, report_rounds: list[int], out: Path, name: str = "People (try it)") -> dict:
    """The try-it sessions of ``human_logs`` as a dialogue table: ``out/human.md`` and ``out/human.json``."""
    from dlgpr.app.tryit import log_result, read_logs

    records = read_logs(human_logs)
    result = log_result(records, rounds)
    summary = result.summary()
    per_round = "R@1 by round (cumulative, %): " + " ".join(f"{100 * summary[f'round{t}/recall@1']:.1f}" for t in range(rounds + 1))
    text = (f"{len(records)} try-it sessions from {', '.join(human_logs)}; mean questions {summary['mean_questions']:.2f}; "
            f"found (confirmed the target): {sum(bool(r.get('found')) for r in records)}.\n\n{per_round}\n\n"
            + table_markdown({name: result}, [t for t in report_rounds if t <= rounds]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "human.md").write_text(text)
    (out / "human.json").write_text(json.dumps({"logs": list(human_logs), "summary": summary, "queries": result.records()}, indent=1))
    print(text)
    print(f"wrote {out / 'human.md'}, {out / 'human.json'}")
    return summary


def slug(name: str) -> str:
    """A file-name form of a questioner's name: ``DQ-Pilot SFT+GRPO`` -> ``dq-pilot_sft_grpo``."""
    return re.sub(r"[^a-z0-9-]+", "_", name.lower()).strip("_") or "questioner"


def write_dialogue_figures(results: dict[str, DialogueResult], index: int, data_dir: str, split: str, out: Path) -> list[Path]:
    """``out/dialogue_<questioner>.png`` for each questioner: dialogue ``index`` (the same query for all)."""
    import matplotlib.pyplot as plt

    jpegs = read_split_jpegs(data_dir, split)
    paths = []
    for name, res in results.items():
        query = res.queries[index]
        fig = dialogue_figure(res, index, image=lambda key: decode_jpeg(jpegs[key]),
                              title=f"{name}: test query {query.query_id} (target place {query.target.place_id})")
        path = out / f"dialogue_{slug(name)}.png"
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    print("wrote " + ", ".join(str(p) for p in paths))
    return paths


def noise_sweep(questioners: list[QuestionerEntry], names: list[str] | None, rates: list[float], answerer: Answerer, retriever,
                queries, gallery, rounds: int, seed: int, out: Path) -> dict[str, dict[float, DialogueResult]]:
    """Each named questioner against a ``NoisyAnswerer`` at each error rate: noise.md, noise.png, noise_results.json."""
    by_name = {e.name: e for e in questioners}
    unknown = [n for n in names or [] if n not in by_name]
    if unknown:
        raise ValueError(f"noise_questioners {unknown} are not among {list(by_name)}")
    entries = [by_name[n] for n in names] if names else [questioners[0]]
    sweep: dict[str, dict[float, DialogueResult]] = {}
    for entry in entries:
        bind_retriever(entry.questioner, retriever)
        sweep[entry.name] = {}
        for rate in rates:
            user = NoisyAnswerer(answerer, NoiseConfig.uniform(rate, seed=seed))
            sweep[entry.name][rate] = run_dialogue(retriever, entry.questioner, user, queries, gallery, rounds=rounds, top_k=entry.top_k)
    lines = [f"R@K cumulative; 'this round' counts round {rounds} alone; {len(queries)} queries; the user's errors are seeded.", "",
             f"| questioner | user error rate | R@1 round 0 | R@1 round {rounds} | gain | R@1 round {rounds} this round | "
             f"R@5 round {rounds} | BRI |", "|---|---|---|---|---|---|---|---|"]
    for name, runs in sweep.items():
        for rate, res in runs.items():
            sm = res.summary()
            lines.append(f"| {name} | {rate:.2f} | {100 * sm['round0/recall@1']:.1f} | {100 * sm[f'round{rounds}/recall@1']:.1f} | "
                         f"{100 * (sm[f'round{rounds}/recall@1'] - sm['round0/recall@1']):+.1f} | "
                         f"{100 * sm[f'round{rounds}/recall@1_this_round']:.1f} | {100 * sm[f'round{rounds}/recall@5']:.1f} | {sm['bri']:.3f} |")
    (out / "noise.md").write_text("\n".join(lines) + "\n")
    noise_figure(sweep, rounds).savefig(out / "noise.png")
    flat = {f"{name}, error rate {rate:.2f}": res for name, runs in sweep.items() for rate, res in runs.items()}
    (out / "noise_results.json").write_text(json.dumps(
        {"noise_rates": list(rates), "results": {k: {"summary": r.summary(), "queries": r.records()} for k, r in flat.items()}}, indent=1))
    print("\n".join(lines))
    print(f"wrote {out / 'noise.md'}, {out / 'noise.png'}, {out / 'noise_results.json'}")
    return sweep


def noise_figure(sweep: dict[str, dict[float, DialogueResult]], rounds: int):
    """Cumulative R@1 and R@5 at the last round against the user's error rate, one line per questioner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=120)
    for ax, k in zip(axes, (1, 5)):
        for name, runs in sweep.items():
            rates = sorted(runs)
            ax.plot(rates, [100 * runs[r].summary((k,))[f"round{rounds}/recall@{k}"] for r in rates], marker="o", label=name)
        ax.set_xlabel("user error rate")
        ax.set_ylabel(f"R@{k} after {rounds} rounds (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def evaluate(
    ckpt: str | None = None,
    questioners: list[QuestionerEntry] = [],  # noqa: B006 (jsonargparse reads the default)
    answerer: Answerer = OracleAnswerer(),
    data_dir: str = "data/synthcities",
    split: str = "test",
    num_queries: int | None = None,
    rounds: int = 5,
    report_rounds: list[int] = [3, 5],  # noqa: B006 (jsonargparse reads the default)
    out_dir: str = "runs/dialogue_eval",
    with_images: bool = False,
    noise_rates: list[float] | None = None,
    noise_questioners: list[str] | None = None,
    figure_query: int | None = 0,
    eval_batch_size: int = 256,
    num_workers: int = 2,
    seed: int = 0,
    human_logs: list[str] | None = None,
) -> dict[str, dict]:
    """Args:
        ckpt: retriever checkpoint written by ``python -m dlgpr fit``.
        questioners: the questioners to compare (name, questioner, top_k).
        answerer: the simulated user.
        data_dir: DQ-Cities shards (or SynthCities).
        split: the split whose images form the gallery and whose places are queried.
        num_queries: places queried (a seeded subset); None: every place of the split.
        rounds: question rounds per dialogue.
        report_rounds: rounds reported in the table besides round 0.
        out_dir: where table.md, results.json and recall.png go.
        with_images: keep gallery images for vision-language questioners.
        noise_rates: if set, also run each of ``noise_questioners`` against a ``NoisyAnswerer``
            around ``answerer`` at each total error rate (split equally between vague, wrong and
            "I don't remember" answers) and write ``noise.md``, ``noise.png`` and ``noise_results.json``.
        noise_questioners: names of the questioner entries for the noise sweep (default: the first).
        figure_query: index (in the seeded query order) of the dialogue drawn for every
            questioner (``dialogue_<name>.png``); None draws none.
        human_logs: try-it logs of the web page to tabulate (``human.md``); without ``ckpt``
            nothing else is run.
    """
    out = Path(out_dir)
    human = tabulate_logs(human_logs, rounds, report_rounds, out) if human_logs else None
    if ckpt is None:
        if human is None:
            raise SystemExit("error: give --ckpt (and --questioners) to run dialogues, or --human_logs to tabulate try-it sessions")
        return {"people": human}
    if not questioners:
        raise SystemExit("error: --questioners is empty")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = load_retriever(ckpt, map_location=device)
    dm = DQCitiesDataModule(data_dir=data_dir, synthetic=None)
    dm.set_preprocessing(module.preprocessing())
    dm.setup("test")
    records = dm.records(split)
    start = time.perf_counter()
    gallery = encode_gallery(module, data_dir, split, batch_size=eval_batch_size, with_images=with_images, num_workers=num_workers)
    encode_s = time.perf_counter() - start
    queries = build_queries(records, num_queries, seed)
    if figure_query is not None and not 0 <= figure_query < len(queries):
        raise SystemExit(f"error: figure_query {figure_query} is not one of the {len(queries)} queries")
    retriever = ModuleTextRetriever(module)
    results = {}
    for entry in questioners:
        bind_retriever(entry.questioner, retriever)
        start = time.perf_counter()
        results[entry.name] = run_dialogue(retriever, entry.questioner, answerer, queries, gallery, rounds=rounds, top_k=entry.top_k)
        print(f"{entry.name}: {time.perf_counter() - start:.1f} s, R@1 by round "
              + " ".join(f"{100 * results[entry.name].summary()[f'round{t}/recall@1']:.1f}" for t in range(rounds + 1)))
    out.mkdir(parents=True, exist_ok=True)
    table = table_markdown(results, report_rounds)
    (out / "table.md").write_text(table)
    payload = {
        "ckpt": str(ckpt), "split": split, "gallery_size": len(gallery), "queries": len(queries), "gallery_encode_s": encode_s,
        "results": {name: {"summary": r.summary(), "timings": r.timings, "queries": r.records()} for name, r in results.items()},
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    recall_figure(results).savefig(out / "recall.png")
    print(table)
    print(f"wrote {out / 'table.md'}, {out / 'results.json'}, {out / 'recall.png'}")
    if figure_query is not None:
        write_dialogue_figures(results, figure_query, data_dir, split, out)
    if noise_rates:
        noise_sweep(questioners, noise_questioners, noise_rates, answerer, retriever, queries, gallery, rounds, seed, out)
    summaries = {name: r.summary() for name, r in results.items()}
    return {**summaries, "people": human} if human is not None else summaries


if __name__ == "__main__":
    auto_cli(evaluate, as_positional=False)
