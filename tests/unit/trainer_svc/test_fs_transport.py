"""The embedded queue's transport delivers as kombu's does until its worker
starts a shutdown, then fetches nothing more and stops polling at once."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from celery.signals import worker_shutting_down
from kombu import Connection, Exchange, Queue

from trainer_svc import fs_transport

pytestmark = pytest.mark.unit


def test_no_message_is_fetched_once_the_worker_shuts_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fs_transport, "_stopping", threading.Event())
    folders = {name: tmp_path / name for name in ("in", "processed")}
    for folder in folders.values():
        folder.mkdir()
    options = {
        "data_folder_in": str(folders["in"]),
        "data_folder_out": str(folders["in"]),
        "processed_folder": str(folders["processed"]),
        "polling_interval": 0.01,
    }
    queue = Queue("q", Exchange("q", type="direct"), routing_key="q")
    received: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        received.append(body)
        message.ack()

    with Connection(
        "filesystem://", transport=fs_transport.Transport, transport_options=options
    ) as conn:
        producer = conn.Producer()
        with conn.Consumer(queue, callbacks=[on_message]):
            producer.publish({"n": 1}, exchange=queue.exchange, routing_key="q", declare=[queue])
            conn.drain_events(timeout=30)
            assert received == [{"n": 1}]

            producer.publish({"n": 2}, exchange=queue.exchange, routing_key="q")
            worker_shutting_down.send(sender="test", sig="SIGTERM", how="Warm", exitcode=0)
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=30)  # kombu's own would deliver message 2
            assert received == [{"n": 1}]
    assert len(list(folders["in"].iterdir())) == 1  # the second message waits for a worker


_FETCH_AND_HANG = """
import sys, threading
from kombu import Connection, Exchange, Queue
from trainer_svc import fs_transport
options = dict(zip(("data_folder_in", "data_folder_out", "claimed_folder"), sys.argv[1:4]))
options["polling_interval"] = 0.01
queue = Queue("q", Exchange("q", type="direct"), routing_key="q")
with Connection("filesystem://", transport=fs_transport.Transport, transport_options=options) as conn:
    with conn.Consumer(queue, callbacks=[lambda body, message: None]):  # never acks
        conn.drain_events(timeout=60)
        threading.Event().wait(120)
"""


def test_a_message_fetched_by_a_killed_consumer_is_put_back(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.waiting import wait_for

    inbox, claimed = tmp_path / "in", tmp_path / "claimed"
    inbox.mkdir()
    options = {
        "data_folder_in": str(inbox),
        "data_folder_out": str(inbox),
        "claimed_folder": str(claimed),
        "polling_interval": 0.01,
    }
    queue = Queue("q", Exchange("q", type="direct"), routing_key="q")
    with Connection(
        "filesystem://", transport=fs_transport.Transport, transport_options=options
    ) as conn:
        conn.Producer().publish(
            {"job": "qat-1"}, exchange=queue.exchange, routing_key="q", declare=[queue]
        )
    root = Path(__file__).resolve().parents[3]
    consumer = subprocess.Popen(
        [sys.executable, "-c", _FETCH_AND_HANG, str(inbox), str(inbox), str(claimed)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        mine = claimed / str(consumer.pid)
        wait_for(lambda: mine.is_dir() and any(mine.iterdir()), 60, "the consumer's fetch")
        assert not any(inbox.iterdir())  # fetched: out of the queue, but not deleted
        assert fs_transport.restore_claimed(claimed, inbox) == 0  # its consumer lives
    finally:
        consumer.send_signal(signal.SIGKILL)
        consumer.wait(30)
    assert fs_transport.restore_claimed(claimed, inbox) == 1
    assert not mine.exists()

    received: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        received.append(body)
        message.ack()

    with (
        Connection(
            "filesystem://", transport=fs_transport.Transport, transport_options=options
        ) as conn,
        conn.Consumer(queue, callbacks=[on_message]),
    ):
        conn.drain_events(timeout=30)
    assert received == [{"job": "qat-1"}]
    assert not any(inbox.iterdir())
    assert not any((claimed / str(os.getpid())).iterdir())  # acked: the claim is gone


def test_a_message_being_written_is_never_fetched_half_and_never_kills_the_fetcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu writes a message into its final name, so a claim could read it
    empty and the worker died on the JSON error (``scripts/run.sh`` hung on a
    clean clone). Messages are now renamed into place whole; a file that
    still does not parse goes back to the queue for a later fetch."""
    monkeypatch.setattr(fs_transport, "_stopping", threading.Event())
    inbox, claimed = tmp_path / "in", tmp_path / "claimed"
    inbox.mkdir()
    options = {
        "data_folder_in": str(inbox),
        "data_folder_out": str(inbox),
        "claimed_folder": str(claimed),
        "polling_interval": 0.01,
    }
    queue = Queue("q", Exchange("q", type="direct"), routing_key="q")
    received: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        received.append(body)
        message.ack()

    with Connection(
        "filesystem://", transport=fs_transport.Transport, transport_options=options
    ) as conn:
        # What kombu's own writer leaves for an instant: the final name, empty.
        half = inbox / "1_half.q.msg"
        half.write_bytes(b"")
        with conn.Consumer(queue, callbacks=[on_message]):
            producer = conn.Producer()
            producer.publish({"n": 1}, exchange=queue.exchange, routing_key="q", declare=[queue])
            assert not [p for p in inbox.iterdir() if p.name.startswith(".partial-")]
            conn.drain_events(timeout=30)  # the empty file is skipped, not fatal
            assert received == [{"n": 1}]
            assert half.exists()  # back in the queue, untouched
