"""The site's SuperNode entry point (client/supernode.py): Flower's SuperNode with shorter waits.

It patches two module-level names of flwr==1.42.0's SuperNode loop; these tests fail loudly when a
Flower upgrade moves them (the waits would silently come back), and check that the entry point is
Flower's own command line. The deployed tests (test_site_runtime.py, test_deploy_integration.py)
run every site through it."""

from __future__ import annotations

import functools
import inspect
import subprocess
import sys

from client import supernode


def test_the_loop_still_uses_the_names_we_shorten():
    from flwr.supernode import start_client_internal as sci

    src = inspect.getsource(sci)
    assert "time.sleep(3)" in src and "time.sleep(0.5)" in src  # idle poll, reply wait
    assert "obj_contents = pull_objects(" in inspect.getsource(sci._pull_and_store_message)


def test_install_caps_the_waits_and_shortens_the_fetch_backoff(monkeypatch):
    from flwr.supercore.inflatable.inflatable_utils import pull_objects
    from flwr.supernode import start_client_internal as sci

    from flwr.supercore import heartbeat as beat
    from flwr.supernode import fleet_http_connection as fleet

    for module, name in ((sci, "time"), (sci, "pull_objects"), (fleet, "HEARTBEAT_DEFAULT_INTERVAL"),
                         (beat, "HEARTBEAT_DEFAULT_INTERVAL")):
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    monkeypatch.setenv("FEDTUNE_SUPERNODE_POLL", "0.5")
    supernode.install()
    assert isinstance(sci.time, supernode.ShortWaits) and sci.time.cap == 0.5
    assert sci.time.monotonic is not None and sci.time.time() > 0  # the rest of `time` as is
    assert isinstance(sci.pull_objects, functools.partial) and sci.pull_objects.func is pull_objects
    assert sci.pull_objects.keywords == {"initial_backoff": supernode.FIRST_RETRY_S,
                                         "backoff_cap": supernode.MAX_RETRY_S}


def test_heartbeat_interval_is_announced_and_kept_the_same(monkeypatch):
    from flwr.supercore import heartbeat as beat
    from flwr.supernode import fleet_http_connection as fleet
    from flwr.supernode import start_client_internal as sci

    assert "heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL" in inspect.getsource(fleet)
    assert "HEARTBEAT_DEFAULT_INTERVAL - HEARTBEAT_CALL_TIMEOUT" in inspect.getsource(beat)
    for module, name in ((sci, "time"), (sci, "pull_objects"), (fleet, "HEARTBEAT_DEFAULT_INTERVAL"),
                         (beat, "HEARTBEAT_DEFAULT_INTERVAL")):
        monkeypatch.setattr(module, name, getattr(module, name))
    monkeypatch.delenv("FEDTUNE_SUPERNODE_HEARTBEAT", raising=False)
    supernode.install()
    assert fleet.HEARTBEAT_DEFAULT_INTERVAL == beat.HEARTBEAT_DEFAULT_INTERVAL == 10
    supernode.install(heartbeat=25)
    assert fleet.HEARTBEAT_DEFAULT_INTERVAL == beat.HEARTBEAT_DEFAULT_INTERVAL == 25
    for raw, want in (("5", 10), ("x", 10), ("45", 45), ("99999", 1800)):
        monkeypatch.setenv("FEDTUNE_SUPERNODE_HEARTBEAT", raw)
        assert supernode.heartbeat_seconds() == want


def test_poll_interval_is_bounded(monkeypatch):
    for raw, want in (("", 0.25), ("nonsense", 0.25), ("0", 0.01), ("99", 3.0), ("1.5", 1.5)):
        monkeypatch.setenv("FEDTUNE_SUPERNODE_POLL", raw)
        assert supernode.poll_seconds() == want


def test_entry_point_is_flowers_supernode_command_line():
    out = subprocess.run([sys.executable, "-P", "-m", "client.supernode", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--superlink" in out.stdout and "--isolation" in out.stdout
