from router_model.complexity import count_nouns
from router_model.lab.data import RoutingExample
from router_model.lab.noun_buckets import noun_bucket_table, outcome


def test_count_nouns_with_spacy():
    assert count_nouns(["a red car next to a dog and a tree", "running quickly", "Paris at night"]) == [3, 0, 2]


def test_outcome_thresholds():
    assert outcome(0.5) == "tie" and outcome(0.49) == "cloud" and outcome(0.51) == "edge"


def test_bucket_table_counts_wins_per_bucket():
    def ex(prompt, qe, qc):
        return RoutingExample(prompt, "e", "c", ["m"], [qe], [qc])

    examples = [ex("a cat", 3, 3), ex("a dog", 4, 2), ex("a cat, a dog, a tree and a house", 1, 5)]
    rows = {r["bucket"]: r for r in noun_bucket_table(examples, buckets=(0, 1, 2))}
    assert rows["1"]["n"] == 2 and rows["1"]["ties"] == 1 and rows["1"]["edge_win_rate"] == 0.5
    assert rows["2+"]["n"] == 1 and rows["2+"]["cloud_win_rate"] == 1.0 and rows["2+"]["mean_gap"] == [4.0]
    assert rows["0"]["n"] == 0
