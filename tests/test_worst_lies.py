"""The coordinator trusts no site: the worst-site and joining views (server/worst.py) are built
from whatever the sites claim, after validation (finite numbers only). A site that reports only
some of the metrics, a local-only figure without the global one, a huge value or a negative one
changes only its own row: the views are still built and name the liar as what it claims."""

from __future__ import annotations

from server.worst import across_sites, describe_site, joining


def test_partial_and_lying_reports_do_not_break_the_views():
    per_site = {
        "honest": {"accuracy": 0.80, "local_accuracy": 0.85, "loss": 0.9},
        "only-local": {"local_accuracy": 0.99},              # claims a local model, no global figure
        "huge": {"accuracy": 1e300, "personal_accuracy": -5.0, "loss": -1e300},
        "nothing-shared": {"num-examples": 10.0},
    }
    views = across_sites(per_site, weighted={"accuracy": 0.8})
    assert views["accuracy"]["worst_site"] == "honest" and views["accuracy"]["sites"] == 2
    assert views["loss"]["worst_site"] == "honest"  # lower is better: the largest loss is the worst
    assert "num-examples" not in views
    j = joining(per_site)
    assert j["metric"] == "accuracy"
    assert "gain" not in j["sites"]["only-local"] and j["sites"]["honest"]["gain"] < 0
    assert j["global_below_local_only"] == ["honest"]
    for site, metrics in per_site.items():
        assert describe_site(site, metrics).startswith(f"{site}:")
