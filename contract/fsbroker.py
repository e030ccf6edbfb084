"""The embedded broker: kombu's filesystem transport, made safe for producers and consumers running at once.

kombu's filesystem transport (5.7) creates a message file and then writes into it, and a consumer takes any
file with a matching name without taking its lock: a consumer that lists the folder at the wrong moment
reads an empty file, the worker dies on a JSON error and the message is lost. That happens in practice: a
worker consumes while Celery's timer thread in the same process sends chord_unlock retries, and the API
sends `copd.advance` while workers poll. Here a message is written under a name no consumer matches and
renamed into place (atomic), and a consumer claims a message by renaming it into the processed folder
next to the queue (atomic on one filesystem: of two consumers one wins, the other looks further), where
kombu moves it to the system temp folder (a copy when /tmp is another filesystem, which two workers could
both make).

Used through Celery's `broker_transport` setting (server.dispatch.broker_config), so the URL stays
`filesystem://` and the transport options are kombu's.
"""

from __future__ import annotations

import itertools
import logging
import os
import uuid
from queue import Empty
from time import monotonic

from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger("copd.broker")
_SENT = itertools.count()  # messages this process has sent


class Channel(filesystem.Channel):
    """Atomic put (write a hidden file, fsync, rename) and atomic claim (rename) of message files."""

    def _put(self, queue, payload, **kwargs):
        # zero-padded milliseconds, then this process's send counter: names sort in sending order (kombu's
        # unpadded ones do not, past a digit; two sends within one millisecond keep their order too)
        name = f"{int(round(monotonic() * 1000)):015d}_{next(_SENT):012d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        tmp = os.path.join(self.data_folder_out, f".{name}.tmp")  # `.x.q.msg.tmp` never matches `<x>.q.msg`
        with open(tmp, "wb") as f:
            f.write(str_to_bytes(dumps(payload)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)

    def _get(self, queue):
        wanted = f"{queue}.msg"
        claim_dir = self.processed_folder
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.startswith(".") or name.partition(".")[2] != wanted:
                continue
            claimed = os.path.join(claim_dir, name)
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except FileNotFoundError:  # another consumer took it first
                continue
            try:
                with open(claimed, "rb") as f:
                    payload = f.read()
            finally:
                if not self.store_processed:
                    os.remove(claimed)
            try:
                return loads(bytes_to_str(payload))
            except ValueError:
                log.error("broker: dropped unreadable message %s (%d bytes)", name, len(payload))
        raise Empty()


class Transport(filesystem.Transport):
    """kombu's filesystem transport with the Channel above."""

    Channel = Channel
