"""Cloud win rate per noun-count bucket on a routing dataset (the paper's Fig. 3 observation).

The paper: the more nouns a prompt has, the more often the large model wins, and by more.
`noun_bucket_table` checks that on a routing dataset; the noun counting itself is
`router_model.complexity.count_nouns` (also needed at serving time).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from router_model.complexity import count_nouns
from router_model.lab.data import RoutingExample, label_with_prs

TIE_TOLERANCE = 1e-9


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
