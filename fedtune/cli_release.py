"""CLI for what comes after training: export, predict, report, audit, keygen, release, verify.

    fedtune export  RUN_DIR --out DIR [--int8] [--force] [--device D] [--personalized SITE]
    fedtune predict MODEL_DIR --data FILE --out FILE.{csv,jsonl} [--batch-size N] [--text-column COL] [--device D]
    fedtune report  RUN_DIR [--out FILE.html] [--bench DIR ...]
    fedtune audit   RUN_DIR [--max-examples N]
    fedtune keygen  --out DIR [--force]
    fedtune release RUN_DIR --key KEY --out DIR [--force]
    fedtune verify  BUNDLE --pub KEY.pub --pin sha256:HEX|--policy FILE --base-model DIR|--skip-base-model-check

`register(subparsers)` adds them to the main `fedtune` parser; `python -m fedtune.cli_release`
runs them standalone. Every handler returns an exit code; FedtuneError means exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path



def cmd_export(args: argparse.Namespace) -> int:
    from fedtune.export import TOLERANCE, export_run

    meta = export_run(args.run_dir, out=args.out, int8=args.int8, force=args.force, device=args.device,
                      personalized=args.personalized)
    if "personalized" in meta:
        print(f"export: {meta['personalized']['site']}'s personalized adapter from {meta['source_run']}")
    print(f"export: merged vs adapter max abs logit diff {meta['max_abs_logit_diff']:.3g} (limit {TOLERANCE:g})")
    if args.int8:
        print(f"export: int8 vs adapter max abs logit diff {meta['int8_max_abs_logit_diff']:.3g}, "
              f"same top label on {100 * meta['int8_argmax_agreement']:.0f} % of probe rows")
    print(f"export: wrote {args.out} (merged model + tokenizer), {Path(args.out) / 'adapter'}"
          + (f", {Path(args.out) / 'int8'}" if args.int8 else ""))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from fedtune.predict import predict_file

    result = predict_file(args.model_dir, data=args.data, out=args.out, batch_size=args.batch_size,
                          text_column=args.text_column, progress=not args.quiet, device=args.device)
    extra = f", accuracy {result['accuracy']:.4f} against the file's labels" if "accuracy" in result else ""
    print(f"predict: {result['rows']} rows in {result['seconds']:.2f}s ({result['rows_per_s']:.0f} rows/s)"
          f"{extra} -> {result['out']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedtune.report import write_report

    if args.serve:
        from fedtune.status.server import options, serve_run

        return serve_run(Path(args.run_dir), options(args))
    bench = [Path(b) for b in args.bench] if args.bench else None
    path, n_plots = write_report(args.run_dir, out=args.out, bench_dirs=bench)
    print(f"report: wrote {path} ({n_plots} plots, self-contained)")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from fedtune.audit import AUDIT_NAME, audit_run

    result = audit_run(args.run_dir, max_examples=args.max_examples)
    for site, auc in result.items():
        flag = "  <- members distinguishable: consider DP-SGD or fewer rounds" if auc > 0.6 else ""
        print(f"audit: {site:<16} loss-threshold AUC {auc:.3f}{flag}")
    print(f"audit: wrote {Path(args.run_dir) / AUDIT_NAME}")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from fedtune.release import keygen

    from fedtune.release import load_public_key
    from fedtune.release_trust import key_fingerprint

    key, pub = keygen(args.out, force=args.force)
    print(f"keygen: private key {key} (mode 0600: keep it secret), public key {pub} (give it to verifiers)")
    print(f"keygen: fingerprint {key_fingerprint(load_public_key(pub))} — publish it over a channel "
          "verifiers trust; they pass it to `fedtune verify --pin`")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from fedtune.release import release

    card = release(args.run_dir, key=args.key, out=args.out, force=args.force)
    print(f"release: wrote signed bundle {args.out} ({card['task']['type']}, {card['training']['rounds']} rounds, "
          f"sites {', '.join(card['sites'])})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from fedtune.release import verify_bundle

    if args.skip_base_model_check:
        print("verify: WARNING --skip-base-model-check: the adapter is NOT checked against the base "
              "model you will run it on", file=sys.stderr, flush=True)
    result = verify_bundle(args.bundle, pub=args.pub, base_model=args.base_model, pins=args.pin,
                           policy=args.policy, check_base=not args.skip_base_model_check)
    base = "matches --base-model" if result["base_model_checked"] else "NOT checked"
    print(f"verify: OK — signature by key {result['key_id']}, {result['files']} files intact, "
          f"base model {result['base_model_sha256'][:16]}… {base}")
    return 0


def register(subparsers) -> None:
    """Add export/predict/report/audit/keygen/release/verify to an argparse subparsers object."""
    p = subparsers.add_parser("export", help="merged model (+int8) and adapter for deployment")
    p.add_argument("run_dir", help="run directory (config.toml + adapter/)")
    p.add_argument("--out", required=True, help="export directory to create")
    p.add_argument("--int8", action="store_true", help="also write a dynamically int8-quantised CPU model")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--device", help="auto | cpu | cuda[:N] for the merge check (default: the run's train.device)")
    p.add_argument("--personalized", metavar="SITE",
                   help="export this site's personalized adapter (its site dir, or a simulated site's "
                        "name under RUN_DIR/sites) instead of the global one (federation.personalize-epochs)")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("predict", help="batch predictions for a CSV/JSONL file")
    p.add_argument("model_dir", help="an export directory (or its int8/) or a run directory")
    p.add_argument("--data", required=True, help="CSV/TSV/JSONL/Parquet input (label column optional)")
    p.add_argument("--out", required=True, help="predictions file: .csv or .jsonl")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--text-column", help="text column of --data when it differs from the run's data.text-column")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", help="auto | cpu | cuda[:N] (default: the run's train.device, else auto)")
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser("report", help="one self-contained HTML page about a run")
    p.add_argument("run_dir")
    p.add_argument("--out", help="HTML file (default RUN_DIR/report.html)")
    p.add_argument("--bench", action="append", metavar="DIR",
                   help="folder of bench result JSON with a `baselines` key (default RUN_DIR/bench/results)")
    p.add_argument("--serve", action="store_true", help="serve the run's live status page instead "
                   "(works during and after a run; read-only)")
    from fedtune.status.server import add_args as add_status_args

    add_status_args(p, default_port=8750, what="the status page (--serve)", off_switch=False)
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("audit", help="membership-inference audit per simulated site")
    p.add_argument("run_dir")
    p.add_argument("--max-examples", type=int, default=2000, help="rows per split and site (default 2000)")
    p.set_defaults(func=cmd_audit)

    p = subparsers.add_parser("keygen", help="make an Ed25519 signing key pair")
    p.add_argument("--out", required=True, help="folder for fedtune_ed25519.key / .pub")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    p.set_defaults(func=cmd_keygen)

    p = subparsers.add_parser("release", help="signed bundle: adapter + model card + manifest")
    p.add_argument("run_dir")
    p.add_argument("--key", required=True, help="private key from `fedtune keygen`")
    p.add_argument("--out", required=True, help="bundle directory to create")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_release)

    p = subparsers.add_parser("verify", help="check a release bundle's signature, hashes and base model")
    p.add_argument("bundle")
    p.add_argument("--pub", required=True, help="the publisher's public key (.pub)")
    p.add_argument("--base-model", help="base model directory to check the adapter against (required "
                   "unless --skip-base-model-check)")
    p.add_argument("--pin", action="append", metavar="sha256:HEX",
                   help="the publisher key's fingerprint, obtained over a channel you trust (repeatable)")
    p.add_argument("--policy", help="release policy TOML: publisher-key-sha256 = [...], "
                   "base-model-sha256 = [...]")
    p.add_argument("--skip-base-model-check", action="store_true",
                   help="do not hash the base model (prints a warning)")
    p.set_defaults(func=cmd_verify)


if __name__ == "__main__":  # `python -m` this module = the `fedtune` console script
    from fedtune.cli import main

    sys.exit(main())
