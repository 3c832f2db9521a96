"""The embedded queue's transport: kombu's filesystem transport, which stops
polling as soon as its worker begins a shutdown and loses no message when
its worker is killed.

Why: Celery runs a transport without event-loop support (this one) in its
blocking loop, which drains the queue for up to 2 s per cycle, sees the
shutdown flag only between cycles and then runs one more cycle: an idle
worker's warm shutdown waited about 4 s for nothing (`bitmesh down`, every
embedded test worker). ``worker_shutting_down`` (sent by Celery's
SIGTERM/SIGINT/SIGQUIT handler in the worker's main process) sets a flag that
ends the current drain within one polling interval and every later one at
once. Nothing else changes: a task already running still finishes (warm
shutdown), and no message is fetched after the flag is set.

Claimed, not deleted: kombu's transport deletes a message's file as it
fetches it, so a worker killed between that fetch and the job's lease lost
the job until a worker next started (and a QUEUED one for good). Here a
fetch moves the file (one rename) into ``claimed/<pid>/`` of the fetching
process; an ack or a reject removes it (a requeue writes a fresh file, as
kombu does). :func:`restore_claimed`, run when a worker starts and by the
trainer service's resender, moves the files of processes that no longer
exist back into the queue. Duplicates are harmless: job runs take a lease
and check the job's state first.

Written whole, then named: kombu's ``_put`` opens the message's final
``*.msg`` name and writes into it, so a fetch that renames the file in
between (this module's claim) read it empty, and the worker died on the
JSON error with the job left QUEUED (seen once: ``scripts/run.sh`` hung on
a clean clone). Here a message is written under a temporary name no fetch
matches and renamed into place (atomic); a claimed file that still does not
parse (a writer of kombu's own kind) goes back to the queue for a later
fetch instead of ending the worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from queue import Empty
from typing import Any

from celery.signals import worker_shutting_down
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)

__all__ = ["Transport", "restore_claimed"]

_stopping = threading.Event()


@worker_shutting_down.connect
def _stop_polling(**_: Any) -> None:
    _stopping.set()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def restore_claimed(claimed_folder: str | Path, data_folder_in: str | Path) -> int:
    """Put back into the queue the messages fetched by processes now gone;
    return how many. (A dead process's pid reused meanwhile keeps its files
    until that process ends too; the trainer's resender covers the job.)"""
    claimed, inbox = Path(claimed_folder), Path(data_folder_in)
    if not claimed.is_dir():
        return 0
    restored = 0
    for folder in claimed.iterdir():
        if not folder.name.isdigit() or _pid_alive(int(folder.name)):
            continue
        for message in sorted(folder.iterdir()):
            try:
                message.rename(inbox / message.name)
                restored += 1
            except OSError:
                continue  # taken by another restorer
        with contextlib.suppress(OSError):
            folder.rmdir()
    return restored


class Channel(filesystem.Channel):  # type: ignore[misc]
    """kombu's filesystem channel whose fetched files wait in ``claimed/<pid>/``
    until acked or rejected (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._claims: dict[str, Path] = {}

    @property
    def claimed_folder(self) -> Path | None:
        folder = self.transport_options.get("claimed_folder")
        return Path(folder) / str(os.getpid()) if folder else None

    def _get(self, queue: str, timeout: Any = None) -> Any:
        mine = self.claimed_folder
        if mine is None:
            return super()._get(queue)
        mine.mkdir(parents=True, exist_ok=True)
        inbox = Path(self.data_folder_in)
        for name in sorted(os.listdir(inbox)):
            if name.partition(".")[2] != f"{queue}.msg":
                continue
            claimed = mine / name
            try:
                (inbox / name).rename(claimed)  # atomic: one fetcher wins
            except OSError:
                continue
            try:
                payload = loads(bytes_to_str(claimed.read_bytes()))
            except ValueError:  # still being written by a non-atomic writer
                log.warning("message %s did not parse yet; back into the queue", name)
                with contextlib.suppress(OSError):
                    claimed.rename(inbox / name)
                continue
            tag = payload.get("properties", {}).get("delivery_tag")
            if tag is None:
                claimed.unlink(missing_ok=True)
            else:
                self._claims[str(tag)] = claimed
            return payload
        raise Empty()

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Put ``payload`` onto ``queue``: written whole under a name no fetch
        matches, then renamed to kombu's ``<ms>_<uuid>.<queue>.msg`` (module doc)."""
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        folder = Path(self.data_folder_out)
        partial = folder / f".partial-{uuid.uuid4().hex}"
        partial.write_bytes(str_to_bytes(dumps(payload)))
        os.replace(partial, folder / name)

    def _release(self, delivery_tag: Any) -> None:
        claimed = self._claims.pop(str(delivery_tag), None)
        if claimed is not None:
            claimed.unlink(missing_ok=True)

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        super().basic_ack(delivery_tag, multiple)
        self._release(delivery_tag)

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue=requeue)  # a requeue writes a new file
        self._release(delivery_tag)

    def _restore(self, message: Any) -> None:
        super()._restore(message)  # at shutdown: back into the queue as a new file
        self._release(message.delivery_tag)


class Transport(filesystem.Transport):  # type: ignore[misc]
    """kombu's filesystem transport, drained in polling-interval steps."""

    Channel = Channel

    def drain_events(self, connection: Any, timeout: Any = None, **kwargs: Any) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        step = self.polling_interval or 0.1
        while not _stopping.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                super().drain_events(connection, timeout=step if left is None else min(step, left))
            except TimeoutError:
                continue
            return
        raise TimeoutError()
