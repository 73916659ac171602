"""After training: `export`, `predict`, `report`, `audit`, `keygen`, `release`, `verify`.

    fedtune export  RUN_DIR --out DIR [--int8] [--force] [--device D] [--personalized SITE]
    fedtune predict MODEL_DIR --data FILE --out FILE.{csv,jsonl} [--batch-size N] [--text-column COL] [--device D]
    fedtune report  RUN_DIR [--out FILE.html] [--bench DIR ...] [--serve]
    fedtune audit   RUN_DIR [--max-examples N]
    fedtune keygen  --out DIR [--force]
    fedtune release RUN_DIR --key KEY --out DIR [--force]
    fedtune verify  BUNDLE --pub KEY.pub --pin sha256:HEX|--policy FILE --base-model DIR|--skip-base-model-check
"""

import sys
from pathlib import Path
from typing import Optional

import typer

from fedtune.commands.common import arg, endpoint, opt

app = typer.Typer()
PANEL = "After training"


@app.command(rich_help_panel=PANEL, help="merged model (+int8) and adapter for deployment")
def export(run_dir: str = arg(..., help="run directory (config.toml + adapter/)"),
           out: str = opt(..., "--out", help="export directory to create"),
           int8: bool = opt(False, "--int8", help="also write a dynamically int8-quantised CPU model"),
           force: bool = opt(False, "--force", help="replace --out if it exists"),
           device: Optional[str] = opt(None, "--device", help="auto | cpu | cuda[:N] for the merge check "
                                       "(default: the run's train.device)"),
           personalized: Optional[str] = opt(None, "--personalized", metavar="SITE", help=(
               "export this site's personalized adapter (its site dir, or a simulated site's name under "
               "RUN_DIR/sites) instead of the global one (federation.personalize-epochs)"))) -> int:
    from fedtune.export import TOLERANCE, export_run

    meta = export_run(run_dir, out=out, int8=int8, force=force, device=device, personalized=personalized)
    if "personalized" in meta:
        print(f"export: {meta['personalized']['site']}'s personalized adapter from {meta['source_run']}")
    print(f"export: merged vs adapter max abs logit diff {meta['max_abs_logit_diff']:.3g} (limit {TOLERANCE:g})")
    if int8:
        print(f"export: int8 vs adapter max abs logit diff {meta['int8_max_abs_logit_diff']:.3g}, "
              f"same top label on {100 * meta['int8_argmax_agreement']:.0f} % of probe rows")
    print(f"export: wrote {out} (merged model + tokenizer), {Path(out) / 'adapter'}"
          + (f", {Path(out) / 'int8'}" if int8 else ""))
    return 0


@app.command(rich_help_panel=PANEL, help="batch predictions for a CSV/JSONL file")
def predict(model_dir: str = arg(..., help="an export directory (or its int8/) or a run directory"),
            data: str = opt(..., "--data", help="CSV/TSV/JSONL/Parquet input (label column optional)"),
            out: str = opt(..., "--out", help="predictions file: .csv or .jsonl"),
            batch_size: int = opt(64, "--batch-size"),
            text_column: Optional[str] = opt(None, "--text-column",
                                             help="text column of --data when it differs from the run's data.text-column"),
            quiet: bool = opt(False, "--quiet", help="no progress bar"),
            device: Optional[str] = opt(None, "--device",
                                        help="auto | cpu | cuda[:N] (default: the run's train.device, else auto)")) -> int:
    from fedtune.predict import predict_file

    result = predict_file(model_dir, data=data, out=out, batch_size=batch_size, text_column=text_column,
                          progress=not quiet, device=device)
    extra = f", accuracy {result['accuracy']:.4f} against the file's labels" if "accuracy" in result else ""
    print(f"predict: {result['rows']} rows in {result['seconds']:.2f}s ({result['rows_per_s']:.0f} rows/s)"
          f"{extra} -> {result['out']}")
    return 0


@app.command(rich_help_panel=PANEL, help="one self-contained HTML page about a run")
@endpoint("status", default_port=8750, what="the status page (--serve)", off_switch=False)
def report(run_dir: str = arg(...),
           out: Optional[str] = opt(None, "--out", help="HTML file (default RUN_DIR/report.html)"),
           bench: Optional[list[str]] = opt(None, "--bench", metavar="DIR", help=(
               "folder of bench result JSON with a `baselines` key (default RUN_DIR/bench/results)")),
           serve: bool = opt(False, "--serve", help="serve the run's live status page instead "
                             "(works during and after a run; read-only)"),
           status=None) -> int:
    from fedtune.report import write_report

    if serve:
        from fedtune.status.server import serve_run

        return serve_run(Path(run_dir), status())
    path, n_plots = write_report(run_dir, out=out, bench_dirs=[Path(b) for b in bench] if bench else None)
    print(f"report: wrote {path} ({n_plots} plots, self-contained)")
    return 0


@app.command(rich_help_panel=PANEL, help="membership-inference audit per simulated site")
def audit(run_dir: str = arg(...),
          max_examples: int = opt(2000, "--max-examples", help="rows per split and site (default 2000)")) -> int:
    from fedtune.audit import AUDIT_NAME, audit_run

    result = audit_run(run_dir, max_examples=max_examples)
    for site, auc in result.items():
        flag = "  <- members distinguishable: consider DP-SGD or fewer rounds" if auc > 0.6 else ""
        print(f"audit: {site:<16} loss-threshold AUC {auc:.3f}{flag}")
    print(f"audit: wrote {Path(run_dir) / AUDIT_NAME}")
    return 0


@app.command(rich_help_panel=PANEL, help="make an Ed25519 signing key pair")
def keygen(out: str = opt(..., "--out", help="folder for fedtune_ed25519.key / .pub"),
           force: bool = opt(False, "--force", help="replace an existing key pair")) -> int:
    from fedtune.release_keys import keygen as make_keys
    from fedtune.release_keys import load_public_key
    from fedtune.release_trust import key_fingerprint

    key, pub = make_keys(out, force=force)
    print(f"keygen: private key {key} (mode 0600: keep it secret), public key {pub} (give it to verifiers)")
    print(f"keygen: fingerprint {key_fingerprint(load_public_key(pub))} — publish it over a channel "
          "verifiers trust; they pass it to `fedtune verify --pin`")
    return 0


@app.command(rich_help_panel=PANEL, help="signed bundle: adapter + model card + manifest")
def release(run_dir: str = arg(...),
            key: str = opt(..., "--key", help="private key from `fedtune keygen`"),
            out: str = opt(..., "--out", help="bundle directory to create"),
            force: bool = opt(False, "--force", help="replace --out if it exists")) -> int:
    from fedtune.release import release as make_release

    card = make_release(run_dir, key=key, out=out, force=force)
    print(f"release: wrote signed bundle {out} ({card['task']['type']}, {card['training']['rounds']} rounds, "
          f"sites {', '.join(card['sites'])})")
    return 0


@app.command(rich_help_panel=PANEL, help="check a release bundle's signature, hashes and base model")
def verify(bundle: str = arg(...),
           pub: str = opt(..., "--pub", help="the publisher's public key (.pub)"),
           base_model: Optional[str] = opt(None, "--base-model", help=(
               "base model directory to check the adapter against (required unless --skip-base-model-check)")),
           pin: Optional[list[str]] = opt(None, "--pin", metavar="sha256:HEX", help=(
               "the publisher key's fingerprint, obtained over a channel you trust (repeatable)")),
           policy: Optional[str] = opt(None, "--policy", help=(
               "release policy TOML: publisher-key-sha256 = [...], base-model-sha256 = [...]")),
           skip_base_model_check: bool = opt(False, "--skip-base-model-check",
                                             help="do not hash the base model (prints a warning)")) -> int:
    from fedtune.release import verify_bundle

    if skip_base_model_check:
        print("verify: WARNING --skip-base-model-check: the adapter is NOT checked against the base "
              "model you will run it on", file=sys.stderr, flush=True)
    result = verify_bundle(bundle, pub=pub, base_model=base_model, pins=pin or None, policy=policy,
                           check_base=not skip_base_model_check)
    base = "matches --base-model" if result["base_model_checked"] else "NOT checked"
    print(f"verify: OK — signature by key {result['key_id']}, {result['files']} files intact, "
          f"base model {result['base_model_sha256'][:16]}… {base}")
    return 0
