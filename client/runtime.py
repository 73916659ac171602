"""The site runtime: the one long-lived process that serves this site's ClientApp tasks, in place
of Flower's SuperExec, with code the SITE installed.

Flower 1.42 runs a SuperNode with `--isolation process` as a queue only: it accepts messages from
the coordinator and waits for an external executor to acquire them on its local runtime API. Its
own executor (`flower-superexec` -> one `flwr-clientapp` process per message) would install the
coordinator's bundle (FAB) and import the ClientApp from it — so whoever submits a run decides
what code runs next to the site's data. This runtime instead:

- acquires each task from the SuperNode (HMAC-signed with a secret only the site holds, so no
  other local process can take the site's tasks),
- pulls (message, context, run, bundle) for it, checks the bundle's identity — app id and version
  against the fedtune installed here, and its content hash against the site policy's pins — and
  refuses a mismatch with code 459 and an operator-facing log line,
- runs the LOCALLY INSTALLED `client.app.app` in this process (the bundle's code is never
  installed, imported or executed), so the site's prepared data, tokenised splits and model stay
  warm across messages and rounds (client/site.py),
- unpacks the message's arrays when the coordinator packed them into one blob (client/wire.py:
  a few requests per message instead of one per array) and packs the reply's the same way,
- pushes the reply; whatever fails, only a code and a fixed reason leave (client/errors_mod.py).

It uses Flower's runtime helpers (`push_message`, `push_task_output`; the pull is
client/runtime_io.py): internals of the pinned flwr==1.42.0, kept under test
(tests/test_site_runtime.py)."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Message

from client.errors_mod import error_reply
from client.wire import is_packed, pack_reply, unpack_message
from common.errors import BUNDLE, FedtuneError

log = logging.getLogger("fedtune.site")
APP_ID = "fedtune/fedtune"  # [tool.flwr.app] publisher / [project] name
ACQUIRE = "/flwr.proto.Runtime/AcquireTask"


class BundleRefused(FedtuneError, RuntimeError):
    """The submitted bundle is not the fedtune this site installed (or not one it pinned)."""

    code = BUNDLE
    public = ("refused: the run's app bundle is not the fedtune version this site installed "
              "(or its hash is not pinned by the site's policy); submit the consortium's agreed "
              "release")


@dataclass(frozen=True)
class Installed:
    """What this site accepts: its own installation's app id and version, and optional pins."""

    app_id: str = APP_ID
    version: str = ""
    pinned: tuple[str, ...] = ()  # sha256 of accepted bundles; () = any bundle of that version

    @classmethod
    def here(cls, pinned: tuple[str, ...] = ()) -> "Installed":
        return cls(version=importlib.metadata.version("fedtune"), pinned=tuple(pinned))


def check_bundle(run, fab, installed: Installed) -> None:
    """Refuse a run whose bundle is not the installed fedtune (the bundle is never executed:
    this only keeps a site from taking part in a run that expects other code)."""
    problems = []
    if run.fab_id != installed.app_id:
        problems.append(f"app id {run.fab_id!r} (this site runs {installed.app_id!r})")
    if run.fab_version != installed.version:
        problems.append(f"version {run.fab_version!r} (this site has fedtune "
                        f"{installed.version!r}: upgrade one side)")
    if installed.pinned and fab.hash_str not in installed.pinned:
        problems.append(f"bundle sha256 {fab.hash_str} is not pinned by the site policy "
                        "(app-sha256)")
    if problems:
        raise BundleRefused("refused run %s: its bundle has %s" % (run.run_id, "; ".join(problems)))


def _rss_mib() -> float:
    """This process's resident memory now (Linux), to show it stays flat across rounds."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _local_app():
    from client.app import app  # the site's own installation, never the bundle

    return app


class SiteRuntime:
    """Serves the SuperNode's ClientApp tasks until `stop` is set (see the module docstring)."""

    def __init__(self, *, address: str, installed: Installed, secret: bytes | None = None,
                 timing_log: Path | None = None, app: Callable | None = None,
                 poll_seconds: float = 0.1, metrics=None):
        self.address, self.installed, self.secret = address, installed, secret
        self.timing_log, self.poll = timing_log, poll_seconds
        self.metrics = metrics  # optional: .observe(type, error_code=...) per task (fedtune/status/prom.py)
        self.app = app or _local_app()

    def _client(self, token: str | None = None):
        from flwr.supercore.interceptors import (
            RuntimeTokenHttpInterceptor,
            RuntimeVersionHttpInterceptor,
            SuperExecAuthHttpInterceptor,
        )
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        interceptors = [RuntimeVersionHttpInterceptor(
            component_name="flwr-clientapp" if token else "SuperExec")]
        if token:
            interceptors.append(RuntimeTokenHttpInterceptor(token))
        elif self.secret:
            interceptors.append(SuperExecAuthHttpInterceptor(master_secret=self.secret,
                                                             protected_methods={ACQUIRE}))
        return RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=True, root_certificates=None,
            interceptors=interceptors, retry_invoker=make_simple_http_retry_invoker())

    def serve(self, stop: threading.Event) -> None:
        """Acquire and run tasks one at a time (a site trains one message at a time)."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611

        client = self._client()
        try:
            while not stop.is_set():
                try:
                    res = client.AcquireTask(AcquireTaskRequest(
                        supported_task_types=["flwr-clientapp"], agentapp_fab_hashes=[]))
                except Exception as err:  # noqa: BLE001 - the SuperNode may still be starting
                    log.debug("runtime: SuperNode not ready (%s)", err)
                    stop.wait(1.0)
                    continue
                if res.HasField("task") and res.token:
                    self.handle(res.token)
                else:
                    stop.wait(self.poll)
        finally:
            client.close()

    def handle(self, token: str) -> dict | None:
        """Pull one task's input, run the local ClientApp, push the reply."""
        from flwr.common.constant import SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

        from client.runtime_io import pull_task_input

        t0 = time.perf_counter()
        client = self._client(token)
        beat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        beat.start()
        context, status = None, SubStatus.FAILED
        try:
            message, context, run, fab = pull_task_input(client)
            t1 = time.perf_counter()
            reply = self._run(message, context, run, fab)
            t2 = time.perf_counter()
            # counted before the reply leaves: a scrape after the coordinator has it sees it
            self._count(message.metadata.message_type,
                        reply.error.code if reply.has_error() else None)
            push_message(client, reply, context)
            status = SubStatus.COMPLETED
            return self._timing(message, reply, t0, t1, t2, time.perf_counter())
        except Exception as err:  # noqa: BLE001 - pulling/pushing failed: the task expires
            log.error("runtime: task failed outside the ClientApp: %s: %s", type(err).__name__, err)
            self._count("unknown", "task")
            return None
        finally:
            push_task_output(client, context=context, sub_status=status, details="")
            if beat.is_running:
                beat.stop()
            client.close()

    def _count(self, message_type: str, error_code) -> None:
        """The optional metrics hook; counting never changes what the task did."""
        if self.metrics is None:
            return
        try:
            self.metrics.observe(message_type, error_code=error_code)
        except Exception as err:  # noqa: BLE001 - an observer only
            log.warning("runtime: metrics not updated: %s: %s", type(err).__name__, err)

    def _run(self, message: Message, context, run, fab) -> Message:
        try:
            check_bundle(run, fab, self.installed)
            packed = is_packed(message)  # the coordinator packed the arrays: client/wire.py
            if packed:
                unpack_message(message)
            reply = self.app(message=message, context=context)
            return pack_reply(reply) if packed else reply  # after the guard passed it
        except BundleRefused as err:
            log.warning("runtime: %s — nothing was run", err)
            print(f"fedtune site: REFUSED run {run.run_id}: its bundle is not this site's "
                  f"fedtune {self.installed.version} (see the site log)", flush=True)
            return error_reply(message, err)
        except Exception as err:  # noqa: BLE001 - nothing may leave with an exception's text
            return error_reply(message, err)

    def _timing(self, message: Message, reply: Message, t0, t1, t2, t3) -> dict:
        """Where the site's time per message went (site-local file; nothing of it is sent)."""
        work = 0.0
        if reply.has_content():
            for rec in reply.content.metric_records.values():
                work = float(rec.get("train_seconds", rec.get("eval_seconds", 0.0)) or 0.0)
        # wait: until the SuperNode has the message's arrays from the coordinator (transport);
        # overhead: message in hand -> work starts, and work ends -> reply handed to the SuperNode
        entry = {"time": time.time(), "type": message.metadata.message_type,
                 "run": message.metadata.run_id, "wait": t1 - t0, "call": t2 - t1, "work": work,
                 "push": t3 - t2, "overhead": (t3 - t1) - work, "error": reply.has_error(),
                 "rss_mib": _rss_mib()}
        if self.timing_log is not None:
            with open(self.timing_log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
        return entry
