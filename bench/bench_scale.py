"""Section 5 — scale.

(a) Many sites: `fedtune simulate` with 100 simulated sites, 10 sampled per round
    (federation.fraction-train = 0.1), 30 rows a site; every site evaluates the final adapter.
    Peak memory = the summed RSS (and PSS, which counts shared pages once) of the whole process
    tree — this process's descendants plus anything carrying the run's FLWR_HOME — sampled from
    /proc every 0.5 s. `--quick`: 20 tiny sites, in process (the bench process is counted).
(b) Coordinator throughput: validate and aggregate 1,000 updates shaped like the demo model's
    adapter (LoRA r=16 on every linear layer, 77 labels). Validation = server/validate.check_reply
    (keys, shapes, dtype, finite, update norm) and aggregation, timed together as the coordinator runs
    them: server.strategy.Recorded over FedAvg (server/fastagg.py: zero-copy decode, fused norm and
    multiply-add). For comparison: naive numpy checks and Flower's FedAvg.aggregate_train on the
    same replies (ArrayRecords deserialised per reply, as Flower does it). Also timed: a numpy weighted sum over the same updates already
    held as float32 arrays. 50 distinct updates are reused (so memory stays small while reads
    still miss the CPU cache)."""

from __future__ import annotations

import time

import numpy as np


def _shapes(h) -> dict:
    import pandas as pd

    from common.adapter import get_state
    from common.model import build_model

    cfg = h.config("banking77")
    labels = pd.read_csv(h.data_file("banking77"))["label"].nunique()
    return {k: tuple(v.shape) for k, v in get_state(build_model(cfg.model, num_labels=labels).model).items()}


def _validate_np(arrays, current) -> float:
    sq = 0.0
    for k, ref in current.items():
        v = arrays[k].numpy()
        if v.shape != ref.shape or v.dtype.kind != "f" or not np.isfinite(v).all():
            raise ValueError(k)
        sq += float(((v - ref) ** 2).sum())
    return sq


def aggregation(h, *, updates: int, pool: int = 50) -> dict:
    import logging

    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    logging.getLogger("flwr").setLevel(logging.WARNING)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 4242, 1
    shapes = _shapes(h)
    rng = np.random.default_rng(0)
    current = {k: (rng.standard_normal(s) * 0.02).astype(np.float32) for k, s in shapes.items()}
    records = [ArrayRecord({k: Array((v + rng.standard_normal(v.shape).astype(np.float32) * 1e-3)
                                     .astype(np.float32)) for k, v in current.items()})
               for _ in range(min(pool, updates))]
    replies = []
    for i in range(updates):
        ins = Message(RecordDict(), dst_node_id=10 + i, message_type="train")
        replies.append(Message(RecordDict({"arrays": records[i % len(records)],
                                           "metrics": MetricRecord({"num-examples": 10 + i % 7,
                                                                    "train_loss": 1.0}),
                                           "site": ConfigRecord({"name": f"site-{i}"})}), reply_to=ins))
    from flwr.serverapp.strategy import FedAvg as _FedAvg

    from server.fastagg import Accumulator
    from server.strategy import Recorded

    coordinator = Recorded(_FedAvg(fraction_train=1.0), fast_mean=True, max_norm_factor=10.0)
    coordinator.current = Accumulator(current)
    t0 = time.perf_counter()
    agg, _ = coordinator.aggregate_train(1, replies)
    t_fedtune = time.perf_counter() - t0
    log = coordinator.rounds[1]
    assert agg is not None and not log.rejected and len(log.train) == updates, log.rejected
    t0 = time.perf_counter()
    ref, _ = FedAvg(fraction_train=1.0).aggregate_train(1, replies)
    t_agg = time.perf_counter() - t0
    diff = max(float(np.abs(agg[k].numpy() - ref[k].numpy()).max()) for k in current)
    t0 = time.perf_counter()
    for msg in replies:
        _validate_np(msg.content["arrays"], current)
    t_val = time.perf_counter() - t0
    held = [{k: a.numpy() for k, a in r.items()} for r in records]
    weights = np.array([10 + i % 7 for i in range(updates)], dtype=np.float32)
    weights /= weights.sum()
    t0 = time.perf_counter()
    acc = {k: np.zeros_like(v) for k, v in current.items()}
    for i in range(updates):
        for k, v in held[i % len(held)].items():
            acc[k] += weights[i] * v
    t_np = time.perf_counter() - t0
    nbytes = sum(int(np.prod(s)) * 4 for s in shapes.values())
    return {"updates": updates, "tensors": len(shapes), "bytes_per_update": nbytes,
            "validate_plus_aggregate_s": t_fedtune, "max_abs_diff_vs_flower": diff,
            "naive_numpy_validate_s": t_val, "flower_fedavg_aggregate_s": t_agg,
            "naive_plus_flower_s": t_val + t_agg, "numpy_weighted_sum_s": t_np,
            "distinct_updates": len(records)}


def run(h) -> dict:
    from bench.harness import TreeMemory

    spec = h.specs["scale"]
    extra = ["federation.fraction-train=0.1", f"federation.evaluate-every={spec['rounds']}"]
    if h.quick:
        with TreeMemory(include_self=True) as mem:
            t0 = time.perf_counter()
            r = h.federate("scale", extra)
            wall = time.perf_counter() - t0
        sites = {"driver": "in-process (bench/inproc.py)", "wall_s": wall, "memory": mem.result(),
                 "accuracy": r["summary"].get("accuracy"), "trained_per_round": r["uploads"] / max(1, r["rounds"])}
    else:
        r = h.simulate("scale", extra, tag="scale")
        trained = [len(row["sites_trained"]) for row in r["metrics"]]
        sites = {"driver": "fedtune simulate (SuperLink + Ray)", "wall_s": r["wall_s"],
                 "memory": r["memory"], "accuracy": r["summary"].get("accuracy"),
                 "trained_per_round": float(np.mean(trained)) if trained else 0.0,
                 "evaluated_sites": len(r["summary"].get("per_site", {}))}
    sites.update(sites=spec["sites"], rounds=spec["rounds"], rows=spec["rows"])
    agg = aggregation(h, updates=100 if h.quick else 1000, pool=10 if h.quick else 50)
    return {"many_sites": sites, "aggregation": agg,
            "ratios": {"peak_rss_gib": sites["memory"]["peak_rss_bytes"] / 2**30,
                       "peak_pss_gib": sites["memory"]["peak_pss_bytes"] / 2**30,
                       "aggregate_1000_s": agg["validate_plus_aggregate_s"] * 1000 / agg["updates"]}}


def table(res: dict) -> str:
    s, a, m = res["many_sites"], res["aggregation"], res["many_sites"]["memory"]
    return "\n".join([
        f"{s['sites']} sites, {s['trained_per_round']:.0f} trained per round, {s['rounds']} rounds, "
        f"{s['rows']} rows in all ({s['driver']}): {s['wall_s']:.0f} s wall; peak RSS of the process "
        f"tree **{m['peak_rss_bytes'] / 2**30:.2f} GiB** (PSS {m['peak_pss_bytes'] / 2**30:.2f} GiB, "
        f"up to {m['peak_processes']} processes, {m['samples']} samples).", "",
        "| coordinator, {0:,} updates of {1:,} bytes ({2} tensors) | seconds |".format(
            a["updates"], a["bytes_per_update"], a["tensors"]), "|---|---:|",
        f"| **fedtune coordinator: validate + aggregate (server.strategy.Recorded over FedAvg)** "
        f"| **{a['validate_plus_aggregate_s']:.2f}** |",
        f"| for comparison: naive numpy validation (np.load, isfinite, float64 norm) | {a['naive_numpy_validate_s']:.2f} |",
        f"| for comparison: Flower FedAvg.aggregate_train on the ArrayRecords | {a['flower_fedavg_aggregate_s']:.2f} |",
        f"| numpy weighted sum over arrays already in memory | {a['numpy_weighted_sum_s']:.2f} |",
        "", f"fedtune's mean vs Flower's: max abs difference {a['max_abs_diff_vs_flower']:.1e}."])
