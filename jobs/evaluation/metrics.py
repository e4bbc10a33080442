"""Each benchmark's own metric, implemented once: a generated answer scored against a sample's references.

Every metric is ``f(prediction: str, references: Sequence[str]) -> float`` in ``[0, 1]`` and is named by the
``metric`` field of a sample (``pipelines.validate.METRICS``); :func:`score` dispatches on the name.

* ``exact`` — 1 if the prediction equals a reference after lower-casing and collapsing whitespace.
* ``anls`` — Average Normalized Levenshtein Similarity (DocVQA, InfoVQA; Biten et al. 2019): for each
  reference ``1 - NL`` where ``NL`` is the Levenshtein distance over the longer length, set to 0 when
  ``NL >= 0.5``; the best reference counts. Strings are lower-cased and whitespace-collapsed first.
* ``relaxed`` — ChartQA's relaxed accuracy (Masry et al. 2022, as pix2struct implements it): when the reference
  is a non-zero number and the prediction a number (``"12%"`` reads as 0.12), correct within 5% relative error;
  otherwise case-insensitive exact match. The best reference counts.
* ``vqa`` — VQA accuracy (VQAv2, TextVQA): ``min(#humans who gave the answer / 3, 1)`` averaged over the ten
  leave-one-out subsets of the ten human answers, after the official normalisation (punctuation, articles,
  number words, contractions). With a single reference it is exact match after that normalisation.
* ``contains`` — OCRBench: 1 if a reference (lower-cased, stripped) is a substring of the prediction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from pipelines.validate import METRICS

ANLS_THRESHOLD = 0.5
RELAXED_TOLERANCE = 0.05


def _collapse(text: str) -> str:
    return " ".join(text.lower().split())


def exact(prediction: str, references: Sequence[str]) -> float:
    """1.0 if ``prediction`` equals one of ``references`` (case and whitespace ignored), else 0.0."""
    return float(any(_collapse(prediction) == _collapse(r) for r in references))


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i]
        for j, cb in enumerate(b, 1):
            row.append(min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = row
    return previous[-1]


def anls(prediction: str, references: Sequence[str], threshold: float = ANLS_THRESHOLD) -> float:
    """ANLS of one prediction: the best ``1 - NL`` over the references, 0 where ``NL >= threshold``."""
    guess = _collapse(prediction)
    best = 0.0
    for reference in references:
        truth = _collapse(reference)
        longest = max(len(guess), len(truth))
        distance = levenshtein(guess, truth) / longest if longest else 0.0
        best = max(best, 1.0 - distance if distance < threshold else 0.0)
    return best


def _to_float(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed(prediction: str, references: Sequence[str], tolerance: float = RELAXED_TOLERANCE) -> float:
    """ChartQA's relaxed accuracy: the best over the references (see the module docstring)."""
    guess = prediction.strip()
    for reference in references:
        truth = reference.strip()
        guess_value, truth_value = _to_float(guess), _to_float(truth)
        if guess_value is not None and truth_value:  # a zero reference is compared as text, as pix2struct does
            if abs(guess_value - truth_value) / abs(truth_value) <= tolerance:
                return 1.0
        elif guess.lower() == truth.lower():
            return 1.0
    return 0.0


# The official VQA evaluation's normalisation (vqaEval.py of the VQA API), the parts that change answers.
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "couldnt": "couldn't", "didnt": "didn't", "hasnt": "hasn't", "havent": "haven't", "im": "i'm",
                 "ive": "i've", "its": "it's", "shouldnt": "shouldn't", "wasnt": "wasn't", "werent": "weren't",
                 "wont": "won't", "wouldnt": "wouldn't", "youre": "you're", "thats": "that's", "whats": "what's"}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")


def vqa_normalize(answer: str) -> str:
    """An answer as the official VQA evaluation compares it."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    for mark in _PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or _COMMA_IN_NUMBER.search(text) is not None:
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    text = _PERIOD.sub("", text)
    words = []
    for word in text.lower().split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa(prediction: str, references: Sequence[str]) -> float:
    """VQA accuracy of one prediction against the human answers (see the module docstring)."""
    guess = vqa_normalize(prediction)
    truths = [vqa_normalize(r) for r in references]
    if len(truths) == 1:
        return float(guess == truths[0])
    scores = [min(1.0, sum(t == guess for j, t in enumerate(truths) if j != i) / 3.0) for i in range(len(truths))]
    return sum(scores) / len(scores)


def contains(prediction: str, references: Sequence[str]) -> float:
    """OCRBench: 1.0 if a reference, lower-cased and stripped, occurs in the lower-cased prediction."""
    guess = prediction.lower().strip().replace("\n", " ")
    return float(any(r.lower().strip().replace("\n", " ") in guess for r in references if r.strip()))


METRIC_FUNCTIONS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "exact": exact, "anls": anls, "relaxed": relaxed, "vqa": vqa, "contains": contains}
assert tuple(METRIC_FUNCTIONS) == METRICS, "every metric a sample may name is implemented here, once"


def score(metric: str, prediction: str, references: Sequence[str]) -> float:
    """``prediction`` scored by ``metric`` (a name of :data:`METRIC_FUNCTIONS`) against ``references``."""
    try:
        function = METRIC_FUNCTIONS[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; one of {', '.join(METRIC_FUNCTIONS)}") from None
    return function(prediction, references)
