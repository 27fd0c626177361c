"""GLOBE's answer format: parsing the two answer styles, the failure kinds, the strict format flag, the inverse."""

from __future__ import annotations

import pytest

from dlgpr.geo.answer import (
    EMPTY_ANSWER, GLOBE_PROMPT, GLOBE_PROMPT_VERSION, NO_ANSWER_TAG, NO_PLACE, GeoAnswer, format_answer, parse_answer,
)


def test_globe_lines_in_either_order_with_reasoning() -> None:
    a = parse_answer("<think>Cyrillic signs,\ntrolleybus wires.</think>\n<answer>country: Ukraine\ncity: Kyiv</answer>")
    assert a == GeoAnswer(reasoning="Cyrillic signs,\ntrolleybus wires.", city="Kyiv", country="Ukraine", ok=True, well_formed=True)
    b = parse_answer("<think>x</think><answer>city: Kyiv\ncountry: Ukraine</answer>")
    assert (b.city, b.country, b.ok) == ("Kyiv", "Ukraine", True)


def test_city_comma_country_and_longer_lists() -> None:
    a = parse_answer("<think>t</think><answer> Kyiv,  Ukraine </answer>")
    assert (a.city, a.country, a.ok, a.well_formed) == ("Kyiv", "Ukraine", True, True)
    b = parse_answer("<think>t</think><answer>Austin, Texas, United States</answer>")
    assert (b.city, b.country) == ("Austin", "United States")


def test_tolerant_to_case_whitespace_and_decoration() -> None:
    a = parse_answer("  <THINK> t </THINK>\n\n<Answer>\n  **Country:** [France].\n - CITY :  Saint-Étienne  \n</Answer>  ")
    assert (a.reasoning, a.city, a.country, a.ok) == ("t", "Saint-Étienne", "France", True)
    assert not a.well_formed  # the strict format wants lower-case tags, as GLOBE's format reward does


def test_a_country_alone_is_an_answer_and_placeholders_are_not() -> None:
    a = parse_answer("<think>t</think><answer>country: Japan\ncity: unknown</answer>")
    assert (a.city, a.country, a.ok) == ("", "Japan", True)
    b = parse_answer("<think>t</think><answer>country: <country name>\ncity: N/A</answer>")
    assert (b.ok, b.error, b.city, b.country, b.well_formed) == (False, NO_PLACE, "", "", True)


@pytest.mark.parametrize("raw, error", [
    ("Kyiv, Ukraine", NO_ANSWER_TAG),
    ("<think>only thinking</think>", NO_ANSWER_TAG),
    ("<answer>Kyiv, Ukraine", NO_ANSWER_TAG),  # unclosed
    ("", NO_ANSWER_TAG),
    (None, NO_ANSWER_TAG),
    ("<think>t</think><answer>  \n </answer>", EMPTY_ANSWER),
    ("<think>t</think><answer>Somewhere in Europe</answer>", NO_PLACE),
    ("<think>t</think><answer>, Ukraine</answer>", NO_PLACE),
])
def test_failure_kinds(raw: object, error: str) -> None:
    a = parse_answer(raw)
    assert (a.ok, a.error, a.city, a.country) == (False, error, "", "")


def test_last_answer_block_counts_and_reasoning_without_think_tags() -> None:
    raw = "I will write <answer></answer> tags. <answer>Lyon, France</answer> then <answer>Paris, France</answer>"
    a = parse_answer(raw)
    assert (a.city, a.country, a.ok, a.well_formed) == ("Paris", "France", True, False)
    assert a.reasoning.startswith("I will write") and "Lyon" in a.reasoning
    no_think = parse_answer("The signs are in Greek.\n<answer>Athens, Greece</answer>")
    assert no_think.reasoning == "The signs are in Greek." and not no_think.well_formed


def test_well_formed_is_exactly_think_then_answer() -> None:
    assert parse_answer("<think>a</think>\n <answer>Oslo, Norway</answer>\n").well_formed
    assert not parse_answer("Sure! <think>a</think><answer>Oslo, Norway</answer>").well_formed  # text before
    assert not parse_answer("<think>a</think><answer>Oslo, Norway</answer> Done.").well_formed  # text after
    assert not parse_answer("<answer>Oslo, Norway</answer><think>a</think>").well_formed  # order
    assert not parse_answer("<think>a</think><answer>x</answer><answer>Oslo, Norway</answer>").well_formed  # two answers
    assert not parse_answer("<think>a <think>b</think><answer>Oslo, Norway</answer>").well_formed  # nested tag


@pytest.mark.parametrize("style", ["lines", "comma"])
def test_format_answer_is_the_inverse(style: str) -> None:
    raw = format_answer("São Paulo", "Brazil", "Portuguese signs;\ntropical trees.", style=style)
    assert parse_answer(raw) == GeoAnswer(reasoning="Portuguese signs;\ntropical trees.", city="São Paulo", country="Brazil",
                                          ok=True, well_formed=True)
    assert parse_answer(format_answer("", "Chile")) == GeoAnswer(reasoning="", city="", country="Chile", ok=True, well_formed=True)


@pytest.mark.parametrize("kwargs, match", [
    (dict(city="Paris, Texas", country="US"), "city"),
    (dict(city="Paris", country="France\nEU"), "country"),
    (dict(city="", country=""), "give a city"),
    (dict(city="Paris", country="", style="comma"), "both"),
    (dict(city="Paris", country="France", reasoning="<answer>x</answer>"), "reasoning"),
    (dict(city="Paris", country="France", style="json"), "style"),
])
def test_format_answer_rejects_what_would_not_read_back(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        format_answer(**kwargs)


def test_prompt_asks_for_the_format_the_parser_reads() -> None:
    assert GLOBE_PROMPT_VERSION == "globe_eval_v1"
    for needle in ("<think>", "<answer>", "country:", "city:", "step by step"):
        assert needle in GLOBE_PROMPT
