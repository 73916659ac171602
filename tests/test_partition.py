import pandas as pd
import pytest

from common.errors import ConfigError, DataError
from common.partition import partition


def _frame(n=600, labels=6):
    return pd.DataFrame({"text": [f"t{i}" for i in range(n)], "label": [f"l{i % labels}" for i in range(n)],
                         "bank": [f"b{i % 4}" for i in range(n)]})


@pytest.mark.parametrize("scheme", ["iid", "dirichlet:0.5", "dirichlet:100", "column:bank"])
def test_partition_is_disjoint_cover_and_deterministic(scheme):
    df = _frame()
    parts = partition(df, scheme=scheme, num_sites=3, label_column="label", seed=1)
    assert len(parts) == 3
    texts = [t for p in parts for t in p["text"]]
    assert sorted(texts) == sorted(df["text"]) and len(set(texts)) == len(texts)
    again = partition(df, scheme=scheme, num_sites=3, label_column="label", seed=1)
    assert all(a.equals(b) for a, b in zip(parts, again))
    assert all(len(p) > 0 for p in parts)


def test_dirichlet_small_alpha_is_skewed_and_seed_matters():
    df = _frame(3000, 10)
    skewed = partition(df, scheme="dirichlet:0.1", num_sites=3, label_column="label", seed=0)
    flat = partition(df, scheme="dirichlet:1000", num_sites=3, label_column="label", seed=0)

    def spread(parts):  # mean over sites of max label share
        return sum(p["label"].value_counts(normalize=True).max() for p in parts) / len(parts)

    assert spread(skewed) > spread(flat) + 0.1
    other = partition(df, scheme="dirichlet:0.1", num_sites=3, label_column="label", seed=5)
    assert not all(a.equals(b) for a, b in zip(skewed, other))


def test_column_partition_keeps_values_together():
    parts = partition(_frame(), scheme="column:bank", num_sites=2, label_column="label", seed=0)
    assert not set(parts[0]["bank"]) & set(parts[1]["bank"])


def test_bad_schemes():
    with pytest.raises(DataError, match="nope"):
        partition(_frame(), scheme="column:nope", num_sites=2, label_column="label", seed=0)
    with pytest.raises(ConfigError, match="distinct values"):
        partition(_frame(), scheme="column:bank", num_sites=9, label_column="label", seed=0)
