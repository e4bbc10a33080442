"""The benchmarks' metrics on hand-computed cases from their definitions."""

from __future__ import annotations

import pytest

from jobs.evaluation.metrics import anls, contains, exact, levenshtein, relaxed, score, vqa, vqa_normalize


def test_exact_ignores_case_and_spacing_only() -> None:
    assert exact(" Red  Car ", ["red car"]) == 1.0
    assert exact("red car.", ["red car"]) == 0.0
    assert exact("blue", ["red", "Blue"]) == 1.0


def test_anls_threshold_and_similarity() -> None:
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3
    assert anls("the cat", ["The  Cat"]) == 1.0
    assert anls("the cot", ["the cat"]) == pytest.approx(1 - 1 / 7)  # one substitution in seven characters
    assert anls("abcd", ["abxy"]) == 0.0  # NL = 2/4 = 0.5: not below the 0.5 threshold → 0
    assert anls("abcde", ["abcxy"]) == pytest.approx(0.6)  # NL = 2/5 = 0.4 < 0.5 → 1 - 0.4
    assert anls("abcdef", ["abcdxy"]) == pytest.approx(1 - 2 / 6)  # NL = 1/3 < 0.5
    assert anls("1 may", ["xx", "1 May"]) == 1.0  # the best reference counts
    assert anls("", ["abc"]) == 0.0 and anls("", [""]) == 1.0


def test_relaxed_accuracy_five_percent() -> None:
    assert relaxed("104", ["100"]) == 1.0  # 4% off
    assert relaxed("105", ["100"]) == 1.0  # exactly 5%
    assert relaxed("106", ["100"]) == 0.0  # 6% off
    assert relaxed("12%", ["0.12"]) == 1.0  # a percent sign divides by 100
    assert relaxed("0.5", ["0"]) == 0.0 and relaxed("0", ["0"]) == 1.0  # a zero reference: compared as text
    assert relaxed("Yes", ["yes"]) == 1.0 and relaxed("no", ["yes"]) == 0.0
    assert relaxed("abc", ["100"]) == 0.0
    assert relaxed("2019", ["1990", "2020"]) == 1.0  # 0.05% from the second reference


def test_vqa_accuracy_over_ten_answers() -> None:
    others = ["cat"] * 7
    # ten answers, k of them matching: each leave-one-out subset scores min(matches / 3, 1), averaged
    assert vqa("dog", ["dog"] + others + ["cow", "pig"]) == pytest.approx(0.3)  # (1·0 + 9·1/3) / 10
    assert vqa("dog", ["dog"] * 2 + others + ["pig"]) == pytest.approx(0.6)  # (2·1/3 + 8·2/3) / 10
    assert vqa("dog", ["dog"] * 3 + others) == pytest.approx(0.9)  # (3·2/3 + 7·1) / 10
    assert vqa("dog", ["dog"] * 4 + ["cat"] * 6) == 1.0
    assert vqa("Two", ["2"] * 3 + ["cat"] * 7) == pytest.approx(0.9)  # number words become digits
    assert vqa_normalize("The Dog!") == "dog" and vqa_normalize("dont") == "don't"
    assert vqa("a dog", ["dog"]) == 1.0 and vqa("cat", ["dog"]) == 0.0  # one reference: exact after normalising


def test_contains_and_dispatch() -> None:
    assert contains("The text says: Hello World.", ["hello world"]) == 1.0
    assert contains("hello", ["hello world"]) == 0.0
    assert score("contains", "It is 42", ["42"]) == 1.0 and score("exact", "It is 42", ["42"]) == 0.0
    with pytest.raises(ValueError, match="bleu"):
        score("bleu", "a", ["a"])
