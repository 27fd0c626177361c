"""A small SynthCities world whose gallery 'images' are embedded from their attribute sentences by
the lexical retriever: exact, fast dialogues for the stopping and PlaceFinder tests."""

from __future__ import annotations

import torch

from dlgpr.data.synth.dialogue import answer_sentence
from dlgpr.data.synth.generate import SynthCitiesConfig, make_world
from dlgpr.data.turns import AnswerRequest, Target
from dlgpr.dialogue.answerers import OracleAnswerer
from dlgpr.dialogue.loop import DialogueQuery
from dlgpr.ranking import Gallery
from tests.helpers.lexical import LexicalRetriever


def attribute_text(attrs: dict) -> str:
    return " ".join(answer_sentence(s, v, attrs) for s, v in attrs.items())


def lexical_world(places_per_city: int = 20, views: int = 2, seed: int = 1) -> tuple[LexicalRetriever, Gallery, list[DialogueQuery]]:
    """``(retriever, gallery, queries)``: two cities, ``views`` identical views per place, one
    query per place from its facade colour alone."""
    w = make_world(SynthCitiesConfig(num_cities=2, places_per_city=places_per_city, views_per_place=views, seed=seed))
    retriever = LexicalRetriever()
    keys, pids, descs, attrs = [], [], [], []
    for p in w.places:
        for v in range(views):
            keys.append(f"{p.city}_{p.place_in_city:07d}_{v}")
            pids.append(p.place_id)
            descs.append(attribute_text(p.attributes))
            attrs.append(p.attributes)
    gallery = Gallery(retriever.embed_texts(descs), torch.tensor(pids), keys, descs, attrs)
    queries = [
        DialogueQuery(i, f"A {p.attributes['facade_color']} building.", Target(p.place_id, attribute_text(p.attributes), p.attributes))
        for i, p in enumerate(w.places)
    ]
    return retriever, gallery, queries


def oracle_answer(query: DialogueQuery, session):
    """What the oracle user says to a PlaceFinder session's open question about ``query``'s target."""
    def answer(question):
        req = AnswerRequest(query.query_id, session.questions_asked + 1, question.text, query.target, tuple(session.history))
        return OracleAnswerer().answer([req])[0].text
    return answer
