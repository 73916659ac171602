"""Section 4 — accuracy: centralized, federated FedAvg / FedProx / FFA-LoRA, the mean local-only
site, and DP-SGD at epsilon 8, on Banking77 and Medical Abstracts, on each site's test split and
on the pooled test split. Federated runs: fedtune's coordinator + ClientApp in process
(bench/inproc.py); baselines: bench/baselines.py. The pooled accuracy of a federated run is the
example-weighted mean of its sites' test accuracies (the same thing for accuracy)."""

from __future__ import annotations

VARIANTS = {
    "fedavg": [],
    "fedprox": ["federation.strategy=fedprox"],
    "ffa": ["model.lora-variant=ffa"],
    "dp_eps8": ["privacy.dp=true", "privacy.epsilon=8"],  # FFA-LoRA by default under DP
}


def _site_acc(summary: dict) -> list[float]:
    per = summary.get("per_site", {})
    return [per[s].get("accuracy", float("nan")) for s in sorted(per)]


def run(h) -> dict:
    out = {}
    for name in ("banking77", "medical"):
        spec = h.specs[name]
        res = {"setup": {k: spec[k] for k in ("rows", "sites", "partition", "rounds",
                                               "local_epochs", "max_length")}}
        # the same samples x epochs in ONE round: every site trains all epochs, then one average
        one_round = ["federation.rounds=1", f"train.local-epochs={spec['rounds'] * spec['local_epochs']}"]
        for variant, extra in {**VARIANTS, "fedavg_one_round": one_round}.items():
            r = h.federate(name, extra)
            s = r["summary"]
            res[variant] = {"pooled_accuracy": s.get("accuracy", float("nan")),
                            "pooled_macro_f1": s.get("macro_f1", float("nan")),
                            "site_accuracy": _site_acc(s), "wall_s": r["wall_s"]}
            if variant == "dp_eps8":
                eps = [v.get("epsilon") for v in s.get("privacy", {}).values() if "epsilon" in v]
                res[variant]["max_site_epsilon"] = max(eps) if eps else float("nan")
        base = h.baselines(name)
        res["centralized"] = base["centralized"]
        res["local_only"] = base["local_only"]
        res["trainer"] = base["trainer"]
        c = res["centralized"]["pooled_accuracy"]
        lo = res["local_only"]["mean_pooled_accuracy"]
        fed = res["fedavg"]["pooled_accuracy"]
        res["ratios"] = {"fedavg_over_centralized": fed / c if c else float("nan"),
                         "fedavg_minus_local_only_points": 100 * (fed - lo),
                         "fedavg_minus_local_only_own_test_points":
                             100 * (fed - res["local_only"]["mean_own_test_accuracy"])}
        out[name] = res
    return out


def table(res: dict) -> str:
    lines = []
    for name, r in res.items():
        st = r["setup"]
        lines += [f"**{name}** — {st['rows']} rows, {st['sites']} sites ({st['partition']}), "
                  f"{st['rounds']} rounds x {st['local_epochs']} local epochs, max length "
                  f"{st['max_length']}", "",
                  "| setting | pooled test acc | pooled macro-F1 | per-site test acc |",
                  "|---|---:|---:|---|"]
        c = r["centralized"]
        lines.append(f"| centralized (union, same samples x epochs) | {c['pooled_accuracy']:.4f} | "
                     f"{c['pooled_macro_f1']:.4f} | {_fmt(c['site_accuracy'])} |")
        for v, label in (("fedavg", "federated FedAvg"), ("fedprox", "federated FedProx (mu 0.01)"),
                         ("ffa", "federated FFA-LoRA"), ("dp_eps8", "federated DP-SGD eps 8 (FFA)"),
                         ("fedavg_one_round", "FedAvg, 1 round x all the epochs (same samples x epochs)")):
            x = r[v]
            extra = f" (max site eps {x['max_site_epsilon']:.2f})" if "max_site_epsilon" in x else ""
            lines.append(f"| {label}{extra} | {x['pooled_accuracy']:.4f} | {x['pooled_macro_f1']:.4f} "
                         f"| {_fmt(x['site_accuracy'])} |")
        lo = r["local_only"]
        lines.append(f"| local-only, mean site (own test: {lo['mean_own_test_accuracy']:.4f}) | "
                     f"{lo['mean_pooled_accuracy']:.4f} | - | "
                     f"{_fmt([s['own_test_accuracy'] for s in lo['sites']])} (own test) |")
        q = r["ratios"]
        lines += ["", f"FedAvg / centralized = {q['fedavg_over_centralized']:.3f}; FedAvg - mean "
                  f"local-only = {q['fedavg_minus_local_only_points']:+.1f} points on the pooled test "
                  f"({q['fedavg_minus_local_only_own_test_points']:+.1f} vs local models on their own "
                  f"test). Baselines: {r['trainer']}.", ""]
    return "\n".join(lines)


def _fmt(xs) -> str:
    return " ".join(f"{x:.3f}" for x in xs)
