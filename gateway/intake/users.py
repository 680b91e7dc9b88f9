"""Which recipients of a job a user is: `GET /v1/jobs/{id}/decisions?user_id=`.

Built once per job from its stored body (only the user ids are decoded) and kept for the
most recently asked jobs: finding one user among 10,000 recipients is then a look-up, and
the store reads only the rows holding that user's decisions."""

from __future__ import annotations

from collections import OrderedDict

from gateway.retention import user_ids
from gateway.store import Store


class UserIndex:
    def __init__(self, jobs: int = 32):
        self.jobs = jobs
        self._places: OrderedDict[str, dict[str, list[int]]] = OrderedDict()

    async def recipients(self, store: Store, job_id: str, user_id: str) -> list[int]:
        places = self._places.get(job_id)
        if places is None:
            places = {}
            for i, user in enumerate(user_ids(await store.job_body(job_id))):
                places.setdefault(user, []).append(i)
            self._places[job_id] = places
            if len(self._places) > self.jobs:
                self._places.popitem(last=False)
        self._places.move_to_end(job_id)
        return places.get(user_id, [])

    def forget(self, job_id: str) -> None:
        """The job's stored body changed (a user's data erased)."""
        self._places.pop(job_id, None)
