"""Leases: a stored response that is running says which replica runs it, for a bounded time.

Rules:
- The replica that creates a running record (``queued`` / ``in_progress``, store=true) sets its
  lease with it (``ResponseStore.create``: the key ``…:lease``, this replica's ``owner`` id,
  expiring in ``lease_s``, ``TANDEM_RESPONSE_LEASE_S``, 10 s). ``Leases`` renews every lease
  this replica holds every ``lease_s / 3`` in one round trip, until the run has saved its end
  (the final ``update`` drops the lease) or been dropped.
- A reader (retrieve, cancel, a stream replay, on any replica) that finds a running record with
  no lease marks it ``failed`` with ``ORPHANED`` and a ``response.failed`` event at the next
  sequence number (``ResponseStore.fail_orphan``, one transaction; ``fetch`` does it for every
  endpoint), so a replay ends. Detection
  time: at most ``lease_s`` after the runner died (plus the reader's next look: a replay looks
  every 0.5 s).
- A runner that was only slow (say Redis was unreachable from it for longer than the lease)
  loses cleanly: its next event append collides with the ``response.failed`` event's sequence
  number, and its final ``update`` is a check-and-set on a running status, so it changes nothing.
- A replica that stops (SIGTERM) sets ``stopping``: its runs that end from then on record
  ``failed`` (``STOPPED``), not ``cancelled`` — nobody cancelled them.
- Renewals that fail (Redis unreachable) are logged and tried again at the next period.
"""

from __future__ import annotations

import asyncio
import logging

from ..errors import APIError
from .object import new_id
from .store import ResponseStore

log = logging.getLogger(__name__)

STOPPED = "The gateway running this response was shut down before the response finished."


class Leases:
    """The leases one replica holds on the responses it runs."""

    def __init__(self, store: ResponseStore, owner: str | None = None):
        self.store = store
        self.owner = owner or new_id("gw")
        self.stopping = False
        self._held: set[str] = set()
        self._renewer: asyncio.Task | None = None

    @property
    def held(self) -> int:
        return len(self._held)

    def hold(self, response_id: str) -> None:
        """Renew ``response_id``'s lease (set by ``create``) until ``release``."""
        self._held.add(response_id)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew())

    def release(self, response_id: str) -> None:
        """Stop renewing (idempotent); the lease expires unless the final save dropped it."""
        self._held.discard(response_id)

    async def _renew(self) -> None:
        while self._held:
            await asyncio.sleep(self.store.lease_s / 3)
            try:
                if self._held:
                    await self.store.renew_leases(sorted(self._held), self.owner)
            except APIError as err:
                log.warning("could not renew %d response leases: %s", len(self._held), err.message)

