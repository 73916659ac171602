"""An in-process federation for benchmarks: fedtune's own coordinator (`server.app.run`) and its
own ClientApp handlers and mods, joined by a Grid that calls the ClientApp directly instead of
going through a SuperLink and Ray. Only the transport differs from `fedtune simulate`: no process
start, no serialisation hop, sites run one after the other in this process (as they do with
`simulation.concurrency = 1` on 2 cores).

Compression runs exactly as wired in the product: `compression_mod` in the ClientApp's mods,
`server.compress.Decompressing` in the coordinator. This Grid counts each train reply's wire bytes
(ArrayRecord.count_bytes) as a cross-check of the coordinator's own record (metrics.jsonl).

Each finished run leaves `bench.json` in its run directory; `load_run` rebuilds the same result
from a run directory (so `run_all.py --resume` skips finished runs)."""

from __future__ import annotations

import contextlib
import json
import time
import zlib
from collections.abc import Iterable
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from common.config import RunConfig


def bench_client_app() -> ClientApp:
    """fedtune's ClientApp (same handlers, same mods) with the compression mod innermost."""
    from client import app as capp
    from client.compress_mod import compression_mod
    from client.guard import outbound_guard_mod

    mods = list(getattr(capp.app, "_mods", None) or [outbound_guard_mod])
    if compression_mod not in mods:
        mods.append(compression_mod)
    app = ClientApp(mods=mods)
    app.train()(capp.train)
    app.evaluate()(capp.evaluate)
    return app


class InProcessGrid(Grid):
    """Delivers each message by calling the ClientApp with the destination node's Context."""

    def __init__(self, app: ClientApp, *, num_nodes: int, run_config: dict, run_id: int):
        self.app = app
        self.nodes = {1000 + i: Context(run_id=run_id, node_id=1000 + i,
                                        node_config={"partition-id": i, "num-partitions": num_nodes},
                                        state=RecordDict(), run_config=dict(run_config))
                      for i in range(num_nodes)}
        self.train_calls = 0
        self.uploads: list[dict] = []  # one per train reply: round, site node, wire bytes
        self._run = None

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("the in-process grid only supports send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("the in-process grid only supports send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        is_train = any(m.metadata.message_type.startswith("train") for m in messages)
        self.train_calls += is_train
        replies = []
        for msg in messages:
            reply = self.app(msg, self.nodes[msg.metadata.dst_node_id])
            if is_train and not reply.has_error():
                self.uploads.append({"round": self.train_calls, "node": msg.metadata.dst_node_id,
                                     "bytes": sum(r.count_bytes()
                                                  for r in reply.content.array_records.values())})
            replies.append(reply)
        return replies


def load_run(out: Path) -> dict | None:
    """The result of a finished run in `out` (None if it did not finish): summary, wall time and
    uploads as the coordinator recorded them (metrics.jsonl: wire bytes, compressed or not)."""
    if not (out / "summary.json").is_file():
        return None
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x]
    per = [v["upload_bytes"] for r in rows for v in r["per_site"].values() if v.get("upload_bytes")]
    extra = json.loads((out / "bench.json").read_text()) if (out / "bench.json").is_file() else {}
    return {"summary": summary, "wall_s": extra.get("wall_s", summary.get("wall_s", 0.0)),
            "rounds": len(rows), "sites": len(summary.get("per_site", {})) or extra.get("sites", 0),
            "uploads": len(per), "bytes_per_site_round": sum(per) / max(1, len(per)),
            "bytes_total_all_sites": sum(per), "grid_bytes": extra.get("grid_bytes")}


def run_inprocess(cfg: RunConfig, *, out: Path, log: Path) -> dict:
    """Partition like `fedtune simulate`, then run fedtune's coordinator over an InProcessGrid.
    Returns load_run's result (plus the bytes the Grid counted)."""
    import logging

    from flwr.supercore.task_identity import TaskIdentity

    from client import site as site_mod
    from fedtune.simulate import prepare_sites
    from server import app as server_app

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = prepare_sites(cfg, out.resolve())
    run_id = zlib.crc32(str(out).encode()) & 0x7FFFFFFF
    grid = InProcessGrid(bench_client_app(), num_nodes=cfg.simulation.sites,
                         run_config=cfg.to_flat(), run_id=run_id)
    site_mod.clear_sites()  # sites of earlier runs would hold their models
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, 1
    logging.getLogger("flwr").setLevel(logging.WARNING)
    with open(log, "a", encoding="utf-8") as fh, contextlib.redirect_stdout(fh):
        server_app.run(grid, cfg)
    wall = time.perf_counter() - t0
    site_mod.clear_sites()
    grid_bytes = [u["bytes"] for u in grid.uploads]
    (out / "bench.json").write_text(json.dumps({
        "wall_s": wall, "sites": cfg.simulation.sites,
        "grid_bytes": sum(grid_bytes) / max(1, len(grid_bytes))}), encoding="utf-8")
    return load_run(out)
