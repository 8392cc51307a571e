"""Storage for every capability, one module per concern over one storage account:

- ``account``: the blob, table and queue clients, single blobs, streamed blobs, ``table_key``;
- ``queues``: send (with the size check), withdraw, move a poison queue back;
- ``leases``: one lease per job, renewed while its run lasts;
- ``dead_letters``: a sync run's dead letters;
- ``claims``: one winner of N copies (a conditional insert or an ETag takeover), with a TTL and leases;
- ``runs``: processed files, checkpoints, run and chunk reports.

:class:`Storage` is all of them on one set of clients; the composition root (``shared.composition``) holds
one per worker.
"""

from __future__ import annotations

from shared.storage.dead_letters import DeadLetters
from shared.storage.leases import Leases
from shared.storage.queues import Queues
from shared.storage.runs import RunRecords


class Storage(Queues, Leases, DeadLetters, RunRecords):
    """The worker's storage: every concern's operations over one account's clients."""


__all__ = ["Storage"]
