"""Cheap prompt features for the router: length, nouns and markers of hard-to-render content.

Used at serving time next to the encoder, so everything here is a regex or spaCy's small tagger
(already loaded for `noun_count`). `prompt_features(prompts)` returns an [N, F] float32 array
whose columns are `FEATURE_NAMES`. Counts are log1p-compressed: ratings saturate, and a 300-word
DiffusionDB prompt must not dominate a linear model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from router_model.complexity import count_nouns

_NUMBER_WORDS = r"(?:two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|dozen|several|many|multiple|pair of)"
_MARKERS: dict[str, re.Pattern[str]] = {
    # counting: explicit numbers of things
    "counting": re.compile(rf"\b(?:{_NUMBER_WORDS}|\d+)\b", re.I),
    # spatial relations between objects
    "spatial": re.compile(
        r"\b(?:left of|right of|on the left|on the right|above|below|under|underneath|beneath|behind|"
        r"in front of|next to|beside|between|on top of|inside|near|facing|across from)\b",
        re.I,
    ),
    # attribute binding: colours, materials, sizes, shapes
    "attribute": re.compile(
        r"\b(?:red|green|blue|yellow|orange|purple|pink|black|white|brown|gray|grey|golden|silver|wooden|"
        r"metal|glass|plastic|stone|small|large|big|tiny|huge|tall|short|round|square|striped|spotted)\b",
        re.I,
    ),
    # negation: "no", "without", "not"
    "negation": re.compile(r"\b(?:no|not|without|none|never|nothing|n't|neither|nor)\b", re.I),
    # text to be rendered in the image
    "text": re.compile(
        r"(?:\"[^\"]+\"|“[^”]+”|'[^']{2,}'|\b(?:says|saying|written|writes|text|sign that|the word|letters|"
        r"logo|caption|title|label(?:ed|led)?)\b)",
        re.I,
    ),
    # comparison / multi-object composition words
    "comparison": re.compile(r"\b(?:than|more|fewer|less|same|different|each|both|all|every|only)\b", re.I),
}
_WORD = re.compile(r"\w+")

FEATURE_NAMES: tuple[str, ...] = (
    "log_words",
    "log_nouns",
    "log_commas",
    *(f"log_{name}" for name in _MARKERS),
)


def prompt_features(
    prompts: Sequence[str], nouns: Sequence[int] | None = None, names: Sequence[str] = FEATURE_NAMES
) -> np.ndarray:
    """[N, len(names)] features (columns in `names` order); `nouns` may be passed when already counted.

    spaCy runs only when `log_nouns` is asked for (it is the one feature that costs milliseconds).
    """
    prompts = list(prompts)
    unknown = set(names) - set(FEATURE_NAMES)
    if unknown:
        raise ValueError(f"unknown feature(s) {sorted(unknown)}; known: {FEATURE_NAMES}")
    if nouns is None:
        nouns = count_nouns(prompts) if prompts and "log_nouns" in names else [0] * len(prompts)
    rows = []
    for text, n_nouns in zip(prompts, nouns, strict=True):
        row = [len(_WORD.findall(text)), n_nouns, text.count(",")]
        row += [len(pattern.findall(text)) for pattern in _MARKERS.values()]
        rows.append(row)
    out = np.log1p(np.asarray(rows, dtype=np.float64).reshape(len(prompts), len(FEATURE_NAMES)))
    return out[:, [FEATURE_NAMES.index(n) for n in names]].astype(np.float32)
