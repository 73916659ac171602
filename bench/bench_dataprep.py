"""Benchmark: validate + clean + scrub throughput on 100,000 short banking rows.

Rows are banking77 texts resampled with a seed, about 10% carrying injected PII (email, phone,
card, IBAN, date, name, MRN). Prints rows/s per step and writes bench/results/dataprep.json and
bench/results/dataprep.md.

    python bench/bench_dataprep.py [--rows 100000] [--data ../shared/data/banking77/train.csv]
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.data.clean import clean_frame  # noqa: E402
from common.data.config import DataConfig  # noqa: E402
from common.atomic import atomic_write_bytes, atomic_write_json  # noqa: E402
from common.data.scrub import scrub_frame  # noqa: E402
from common.data.validate import validate_frame  # noqa: E402

TARGET_ROWS_PER_S = 20_000
PII_SNIPPETS = (
    "my email is jane.doe{n}@example.com", "call me on +44 20 7946 {n:04d}", "my card is 4111 1111 1111 1111",
    "IBAN GB82 WEST 1234 5698 7654 32", "it happened on 03/{d:02d}/2023", "Mr Smith said so",
    "account number is 1234{n:04d}", "phone (555) 123-{n:04d}", "on {d} March 2024",
)


def build_rows(texts: list[str], labels: list[str], *, rows: int, seed: int) -> pd.DataFrame:
    """Resample texts to ``rows`` rows, appending a PII snippet to about 10% of them."""
    rng = random.Random(seed)
    out_t, out_l = [], []
    for _ in range(rows):
        i = rng.randrange(len(texts))
        text = texts[i]
        if rng.random() < 0.10:
            snippet = rng.choice(PII_SNIPPETS).format(n=rng.randrange(10_000), d=rng.randint(1, 28))
            text = f"{text} {snippet}"
        out_t.append(text)
        out_l.append(labels[i])
    return pd.DataFrame({"text": out_t, "label": out_l}, dtype=object)


def run(rows: int, data: Path, seed: int) -> dict:
    """Time each step once on ``rows`` rows; returns the results dict."""
    base = pd.read_csv(data, dtype=str, keep_default_na=False)
    raw = build_rows(base["text"].tolist(), base["label"].tolist(), rows=rows, seed=seed)
    cfg = DataConfig()
    t0 = time.perf_counter()
    frame, _ = validate_frame(raw, cfg=cfg, source="bench")
    t1 = time.perf_counter()
    frame, clean_counts = clean_frame(frame, cfg=cfg)
    t2 = time.perf_counter()
    frame, pii = scrub_frame(frame, date_policy="mask", seed=seed)
    t3 = time.perf_counter()
    # Resampling repeats texts, so clean() dedupes most rows; also time scrub on every row (worst case).
    validated, _ = validate_frame(raw, cfg=cfg, source="bench")
    t4 = time.perf_counter()
    scrub_frame(validated, date_policy="mask", seed=seed)
    scrub_all = time.perf_counter() - t4
    timings = {"validate_s": t1 - t0, "clean_s": t2 - t1, "scrub_s": t3 - t2, "total_s": t3 - t0}
    return {
        "rows": rows,
        "rows_after_clean": int(clean_counts["rows_out"]),
        "rows_per_s": round(rows / timings["total_s"]),
        "target_rows_per_s": TARGET_ROWS_PER_S,
        "meets_target": rows / timings["total_s"] >= TARGET_ROWS_PER_S,
        "per_step_rows_per_s": {k.removesuffix("_s"): round(rows / v) for k, v in timings.items() if v > 0},
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "scrub_all_rows_s": round(scrub_all, 3),
        "scrub_all_rows_per_s": round(rows / scrub_all),
        "worst_case_rows_per_s": round(rows / (timings["validate_s"] + timings["clean_s"] + scrub_all)),
        "pii_hits": pii,
        "python": platform.python_version(),
        "pandas": pd.__version__,
        "machine": platform.machine(),
    }


def to_markdown(res: dict) -> str:
    """Results as a small markdown table."""
    lines = ["# Data prep benchmark (validate + clean + scrub)", "",
             f"{res['rows']:,} rows, python {res['python']}, pandas {res['pandas']}", "",
             "| step | seconds | rows/s |", "|---|---:|---:|"]
    for step, secs in res["seconds"].items():
        name = step.removesuffix("_s")
        lines.append(f"| {name} | {secs} | {res['per_step_rows_per_s'].get(name, 0):,} |")
    verdict = "meets" if res["meets_target"] else "MISSES"
    lines += ["", f"**{res['rows_per_s']:,} rows/s** ({verdict} the {res['target_rows_per_s']:,} rows/s target); "
              f"{res['rows_after_clean']:,} rows left after dedupe.",
              f"Worst case, scrubbing all {res['rows']:,} rows without dedupe: "
              f"{res['worst_case_rows_per_s']:,} rows/s (scrub alone {res['scrub_all_rows_per_s']:,} rows/s).", ""]
    return "\n".join(lines)


def main() -> int:
    """Run the benchmark and write bench/results/dataprep.{json,md}."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/banking77/train.csv")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    res = run(args.rows, args.data, args.seed)
    out = Path(__file__).resolve().parent / "results"
    atomic_write_json(out / "dataprep.json", res)
    atomic_write_bytes(out / "dataprep.md", to_markdown(res).encode())
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
