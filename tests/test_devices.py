"""The device rule of every search (dlgpr.search.search_device, Gallery.search_embeddings).

A retriever on a GPU embeds its queries there while the gallery is encoded to the CPU: every
search must run on one device (the queries' GPU) and hand its results back on the CPU. On a
CPU-only machine the rule is tested directly (the decision, on the ``meta`` device) and by
making every search that would read ``gallery.embeddings`` instead of the rule's copy go wrong;
the end-to-end run with the retriever on a GPU and the gallery on the CPU runs where CUDA is.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import dlgpr.ranking as ranking
import dlgpr.search as search
from dlgpr.data.synth.dialogue import answer_sentence
from dlgpr.data.synth.generate import SynthCitiesConfig, make_world
from dlgpr.data.turns import Question, Target
from dlgpr.dialogue.answerers import OracleAnswerer
from dlgpr.dialogue.loop import DialogueQuery, run_dialogue
from dlgpr.models.reply_format import format_question
from dlgpr.pipeline.dialogues import compact_candidate_sets
from dlgpr.ranking import Gallery
from dlgpr.retrieval import ModuleTextRetriever
from dlgpr.rewards import RetrievalGainReward
from dlgpr.search import search_device, topk_search
from tests.helpers.lexical import LexicalRetriever


def test_search_device_is_the_queries_accelerator_else_the_gallerys_device():
    cpu, meta = torch.zeros(2, 3), torch.zeros(2, 3, device="meta")
    assert search_device(meta, cpu) == torch.device("meta")  # a GPU retriever, a CPU gallery: the GPU
    assert search_device(cpu, meta) == torch.device("meta")  # CPU queries, a gallery put on a GPU: the GPU
    assert search_device(cpu, cpu) == torch.device("cpu")
    assert search_device(cpu.double(), cpu) == torch.device("cpu")


def test_topk_search_moves_both_inputs_to_the_search_device(monkeypatch):
    seen = []

    def spy(queries, gallery, k, chunk_size):
        seen.append((queries.device.type, gallery.device.type, queries.dtype, gallery.dtype))
        return torch.zeros(queries.shape[0], k, device=queries.device), torch.zeros(queries.shape[0], k, dtype=torch.long, device=queries.device)

    monkeypatch.setattr(search, "_torch_topk", spy)
    s, i = topk_search(torch.zeros(2, 3, device="meta", dtype=torch.float64), torch.zeros(5, 3), 2, backend="torch")
    assert seen == [("meta", "meta", torch.float32, torch.float32)] and s.device.type == "meta"


# ---- every search of the loop, the reward and the corpus builder goes through the rule ------------


def _attribute_text(attrs):
    return " ".join(answer_sentence(s, v, attrs) for s, v in attrs.items())


def _world():
    w = make_world(SynthCitiesConfig(num_cities=2, places_per_city=20, views_per_place=2, seed=1))
    keys, pids, descs, attrs = [], [], [], []
    for p in w.places:
        for v in range(2):
            keys.append(f"{p.city}_{p.place_in_city:07d}_{v}")
            pids.append(p.place_id)
            descs.append(_attribute_text(p.attributes))
            attrs.append(p.attributes)
    gallery = Gallery(LexicalRetriever().embed_texts(descs), torch.tensor(pids), keys, descs, attrs)
    queries = [DialogueQuery(i, f"A {p.attributes['facade_color']} building.", Target(p.place_id, _attribute_text(p.attributes), p.attributes))
               for i, p in enumerate(w.places[:12])]
    return gallery, queries


class DoorQuestioner:
    """Asks about the door; keeps the scores of the candidates it was shown."""

    def __init__(self) -> None:
        self.shown_scores: list[list[float]] = []

    def ask(self, requests):
        self.shown_scores += [[round(c.score, 6) for c in r.candidates] for r in requests]
        return [Question("What colour is the door?", think="t") for _ in requests]


def _every_search(retriever, gallery: Gallery, queries) -> dict:
    """The loop (exact, list ranks by each backend, fixed candidate sets), the PRG reward and the
    compact candidate sets, on one retriever and gallery."""
    out = {}
    for name, kwargs in {"exact": {}, "torch": {"rank_depth": 10, "backend": "torch"}, "faiss": {"rank_depth": 10, "backend": "faiss"},
                         "sets": {"candidate_sets": [[0, 1, 2, 3]] * len(queries)}}.items():
        questioner = DoorQuestioner()
        res = run_dialogue(retriever, questioner, OracleAnswerer(), queries, gallery, rounds=2, top_k=4, **kwargs)
        out[name] = (res.ranks, res.positive_ranks)
        out[f"{name}/shown"] = questioner.shown_scores
    reward = RetrievalGainReward.from_parts(retriever, gallery, OracleAnswerer())
    completions = [format_question("t", "What colour is the door?")] * len(queries)
    out["reward"] = reward(None, completions, target=[q.target for q in queries],
                           initial_description=[q.initial_description for q in queries], history=[()] * len(queries))
    out["compact"] = compact_candidate_sets(queries, gallery, retriever, num_hard_negatives=3)[0]
    return out


def test_every_search_reads_the_rules_copy_of_the_gallery(monkeypatch):
    gallery, queries = _world()
    expected = _every_search(LexicalRetriever(), gallery, queries)
    searched = gallery.embeddings
    calls = []

    def spy(self, queries):
        calls.append(queries.shape[0])
        return searched

    monkeypatch.setattr(Gallery, "search_embeddings", spy)
    gallery.embeddings = torch.full_like(searched, float("nan"), dtype=torch.float64)  # a search reading these goes wrong
    got = _every_search(LexicalRetriever(), gallery, queries)
    assert len(calls) >= 4 * 3 + 1 + 1  # every round of every loop, the reward, the candidate sets
    for name, value in expected.items():
        if isinstance(value, list):
            assert got[name] == value, name
        else:
            assert torch.equal(got[name][0], value[0]) and torch.equal(got[name][1], value[1]), name


# ---- a retriever module on a device, the gallery on the CPU ---------------------------------------


class LexicalModule(torch.nn.Module):
    """A retriever module as ModuleTextRetriever sees it: its tokenizer is the hashed bag of words,
    ``encode_texts`` multiplies by a parameter of 1 (so it runs where the module is)."""

    def __init__(self) -> None:
        super().__init__()
        self.lexical = LexicalRetriever()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def preprocessing(self):
        return SimpleNamespace(tokenizer=self.lexical.embed_texts)

    def encode_texts(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens * self.scale


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))])
def test_module_on_a_device_searches_a_cpu_gallery_there(device, monkeypatch):
    gallery, queries = _world()
    expected = _every_search(LexicalRetriever(), gallery, queries)
    searched_on = []
    exact = ranking.exact_positive_ranks

    def spy(queries, gallery, *args, **kwargs):
        searched_on.append(search_device(queries, gallery).type)
        return exact(queries, gallery, *args, **kwargs)

    monkeypatch.setattr(ranking, "exact_positive_ranks", spy)
    retriever = ModuleTextRetriever(LexicalModule().to(device))
    got = _every_search(retriever, gallery, queries)
    assert searched_on and set(searched_on) == {device}  # the loop's and the reward's counts ran on the module's device
    assert gallery.embeddings.device.type == "cpu"  # the gallery stays where it was encoded
    assert gallery.search_embeddings(torch.zeros(1, gallery.embeddings.shape[1], device=device)).device.type == device
    for name, value in expected.items():
        if name.endswith("/shown"):  # scores computed on the device: equal up to float rounding
            assert sum(got[name], []) == pytest.approx(sum(value, []), abs=1e-5), name
        elif isinstance(value, list):
            assert got[name] == value, name
        else:
            assert got[name][0].device.type == "cpu" and got[name][1].device.type == "cpu", name  # results on the CPU
            assert torch.equal(got[name][0], value[0]) and torch.equal(got[name][1], value[1]), name
