"""Section 1 — traffic: bytes a site sends per round and per run, for full-model FedAvg (computed:
every trainable tensor of the full model as an ArrayRecord, no training), LoRA r=16 on every
linear layer (the default), LoRA r=8 on query+value, FFA-LoRA, and each compression mode, with the
accuracy each reaches in the same short federated run on Banking77 (bench/inproc.py).

Bytes are what Flower ships: ArrayRecord.count_bytes() of each train reply (array data incl. the
~128-byte .npy header per array, plus the key names), counted at the Grid before decoding."""

from __future__ import annotations

R8QV = ["model.lora-r=8", "model.lora-alpha=16", "model.target-modules=query,value"]
ROWS = [  # (row, extra settings, uncompressed reference row)
    ("LoRA r16 all-linear (default)", [], None),
    ("LoRA r8 query,value", R8QV, None),
    ("FFA-LoRA r16 all-linear", ["model.lora-variant=ffa"], None),
    ("r16 + fp16", ["compression.mode=fp16"], "LoRA r16 all-linear (default)"),
    ("r16 + int8 (error feedback)", ["compression.mode=int8"], "LoRA r16 all-linear (default)"),
    ("r16 + topk 1% (error feedback)", ["compression.mode=topk", "compression.topk-fraction=0.01"],
     "LoRA r16 all-linear (default)"),
    ("FFA-LoRA + topk 4% (error feedback)", ["model.lora-variant=ffa", "compression.mode=topk",
                                              "compression.topk-fraction=0.04"], "FFA-LoRA r16 all-linear"),
    ("FFA-LoRA r8 query,value", R8QV + ["model.lora-variant=ffa"], None),
    ("FFA-LoRA r8 q,v + int8 (error feedback)", R8QV + ["model.lora-variant=ffa", "compression.mode=int8"],
     "FFA-LoRA r8 query,value"),
]
DEFAULT = "LoRA r16 all-linear (default)"
TARGET_RATIO = 1000  # per-round bytes <= 1/1000 of full-model FedAvg
TARGET_POINTS = 1.0  # at <= 1 accuracy point below the uncompressed LoRA of the same adapter


def full_model_bytes(h) -> dict:
    """Per-round upload of full-model FedAvg: every parameter of the model + head, fp32."""
    from flwr.app import ArrayRecord

    from common.adapter import get_state, state_nbytes
    from common.model import build_model

    cfg = h.config("banking77", ["model.finetune=full"])
    num_labels = len(__import__("pandas").read_csv(h.data_file("banking77"))["label"].unique())
    model = build_model(cfg.model, num_labels=num_labels, seed=0).model
    state = get_state(model)
    return {"params": sum(v.numel() for v in state.values()), "state_nbytes": state_nbytes(state),
            "wire_bytes": ArrayRecord(state).count_bytes()}


def run(h) -> dict:
    full = full_model_bytes(h)
    rows = {}
    for label, extra, ref in ROWS:
        r = h.federate("banking77", extra)
        acc = r["summary"].get("accuracy", float("nan"))
        rows[label] = {"settings": extra, "reference": ref,
                       "bytes_per_site_round": r["bytes_per_site_round"],
                       "bytes_per_site_run": r["bytes_per_site_round"] * r["rounds"],
                       "bytes_all_sites_run": r["bytes_total_all_sites"],
                       "rounds": r["rounds"], "sites": r["sites"],
                       "raw_adapter_bytes": r["summary"].get("bytes_per_site_round"),
                       "full_over_this": full["wire_bytes"] / max(1.0, r["bytes_per_site_round"]),
                       "accuracy": acc}
    for row in rows.values():
        ref = rows.get(row["reference"]) if row["reference"] else None
        row["points_vs_uncompressed"] = 100 * (row["accuracy"] - ref["accuracy"]) if ref else 0.0
        row["points_vs_default_lora"] = 100 * (row["accuracy"] - rows[DEFAULT]["accuracy"])
        row["meets_target"] = bool(row["full_over_this"] >= TARGET_RATIO
                                   and row["points_vs_uncompressed"] >= -TARGET_POINTS
                                   and row["points_vs_default_lora"] >= -TARGET_POINTS)
    best = max(rows, key=lambda k: (rows[k]["meets_target"], rows[k]["full_over_this"]))
    return {"full_model": full, "rows": rows, "best": best,
            "target": {"ratio": TARGET_RATIO, "max_points_lost": TARGET_POINTS}}


def table(res: dict) -> str:
    f = res["full_model"]
    lines = ["| what a site sends | bytes / site / round | bytes / site / run | full-model / this "
             "| accuracy | vs same adapter uncompressed (points) | vs default LoRA (points) | target met |",
             "|---|---:|---:|---:|---:|---:|---:|:-:|",
             f"| full-model FedAvg ({f['params']:,} params, computed) | {f['wire_bytes']:,} | - | 1 "
             "| - | - | - | - |"]
    for label, r in res["rows"].items():
        same = f"{r['points_vs_uncompressed']:+.1f}" if r["reference"] else "-"
        lines.append(f"| {label} | {r['bytes_per_site_round']:,.0f} | {r['bytes_per_site_run']:,.0f} "
                     f"| {r['full_over_this']:,.0f} | {r['accuracy']:.4f} | {same} | "
                     f"{r['points_vs_default_lora']:+.1f} | {'yes' if r['meets_target'] else 'no'} |")
    lines += ["", "Target: <= 1/1000 of full-model FedAvg per round, at <= 1 point below the uncompressed "
              "default LoRA and below the same adapter uncompressed."]
    return "\n".join(lines)
