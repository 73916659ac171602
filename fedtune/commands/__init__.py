"""The `fedtune` verbs, one module per area, joined into one typer app by `fedtune/cli.py`:

    train.py    simulate, ledger, tune, explain          (training and the site's privacy ledger)
    data.py     prepare                                  (a site's data, offline)
    release.py  export, predict, report, audit, keygen, release, verify   (after training)
    ops.py      certs, coordinator start|enroll, site start|keygen, run   (deployment)

A command parses its flags (typer) and its run config (once), calls typed code and returns an
exit code; a FedtuneError becomes `error: ...` and exit code 2 in `fedtune.cli.main`. No module
here imports `fedtune.cli`."""
