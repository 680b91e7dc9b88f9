"""The Redis store: the same interface as the embedded one, for several gateway processes.

Every write that must be atomic is one Lua script (one round trip per batch): accepting a
job with its idempotency key, recording a batch (decisions, counts, cursor, deferred
messages), reserving caps for a batch (sliding-window logs per user and rule, all rules or
none), claiming due deferred messages (a claim pushes the message's due time forward by
the lease, so a crashed claimer's messages come back). Keys of one user share a hash tag
(`{u:ID}`) for Redis Cluster. Expiry is Redis TTLs: idempotency keys, cap logs.

Intake is a Redis Stream with one consumer group: accepting a job adds its id to the
stream in the same script that stores it, so a `202` means queued as well as stored. Any
process takes jobs with XREADGROUP (as many as it has idle workers, within its in-flight
bound), which puts them in its pending list; its heartbeat re-claims its own pending
entries (XCLAIM, resetting their idle time), so an entry idle past the lease belongs to a
process that stopped, and XAUTOCLAIM hands it to another, which resumes the job from its
stored cursor. Finishing a job acknowledges and deletes its entry in the same script that
records the finish.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.config import redact_url
from gateway.model.caps import CapOutcome, CapRequest, Denied, Granted, new_reservation_id
from gateway.model.decision import Decision
from gateway.model.delivery import Result
from gateway.store.base import (
    DecisionCursor,
    DecisionQuery,
    DeferredItem,
    FeedCursor,
    IdempotencyRecord,
    InvalidTokenEntry,
    JobCursor,
    JobQuery,
    JobRecord,
    OptOut,
    Outbox,
    OutboxEvent,
    Store,
    StoreBusy,
    StoreUnavailable,
    pack_state,
    with_state,
)

_pack = msgspec.msgpack.encode
_decision = msgspec.msgpack.Decoder(Decision)
_idem = msgspec.msgpack.Decoder(IdempotencyRecord)
_ack = msgspec.msgpack.Decoder(tuple[str, Result])
_strings = msgspec.json.Decoder(list[str])
_json = msgspec.json.Encoder()
CAP_TTL_FLOOR = 8 * 86400  # calendar weeks and a day of slack
SCAN_PAGES = 10  # listing jobs with filters: pages of the time index read per call, at most

# KEYS: idempotency key (or ''), job hash, body, open jobs zset, intake stream, queued
# recipients counter, queued jobs counter, id of the last entry taken, the jobs by time of
# every tenant and of this one (zsets, for listing). ARGV: idempotency
# record, its TTL ms, campaign, recipients, warnings, created_at, body, job id, queue
# limit (0: none), queued jobs limit, queue age limit in ms, tenant. Returns the existing
# idempotency record, {what, how many} when the queue is full, or false.
ACCEPT = """
if KEYS[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('GET', KEYS[1]) end
local queued = tonumber(redis.call('GET', KEYS[6]) or '0')
local limit = tonumber(ARGV[9])
if limit > 0 and queued > 0 and queued + tonumber(ARGV[4]) > limit then return {'recipients', queued} end
local jobs = tonumber(redis.call('GET', KEYS[7]) or '0')
if tonumber(ARGV[10]) > 0 and jobs >= tonumber(ARGV[10]) then return {'jobs', jobs} end
if jobs > 0 and tonumber(ARGV[11]) > 0 then
  local first = redis.call('XRANGE', KEYS[5], '(' .. (redis.call('GET', KEYS[8]) or '0-0'), '+', 'COUNT', 1)[1]
  if first then
    local t = redis.call('TIME')
    local age = t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(string.match(first[1], '^(%d+)'))
    if age > tonumber(ARGV[11]) then return {'age_ms', age} end
  end
end
if KEYS[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
redis.call('HSET', KEYS[2], 'campaign', ARGV[3], 'state', 'accepted', 'recipients', ARGV[4], 'cursor', 0,
           'warnings', ARGV[5], 'created_at', ARGV[6], 'tenant', ARGV[12])
redis.call('SET', KEYS[3], ARGV[7])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[8])
local entry = redis.call('XADD', KEYS[5], '*', 'job', ARGV[8])
redis.call('HSET', KEYS[2], 'entry', entry)
redis.call('INCRBY', KEYS[6], ARGV[4])
redis.call('INCR', KEYS[7])
redis.call('ZADD', KEYS[9], ARGV[6], ARGV[8])
redis.call('ZADD', KEYS[10], ARGV[6], ARGV[8])
return false
"""

# KEYS: deferred reasons hash. Counts its values in Redis (a backlog of 100,000 is one
# small reply, not 100,000 values over the wire): {reason, count, ...}.
COUNT_REASONS = """
local counts = {}
for _, reason in ipairs(redis.call('HVALS', KEYS[1])) do counts[reason] = (counts[reason] or 0) + 1 end
local out = {}
for reason, n in pairs(counts) do table.insert(out, reason); table.insert(out, n) end
return out
"""

# KEYS: intake stream, queued recipients counter, queued jobs counter, id of the last
# entry taken. ARGV: group, consumer, count, key prefix. Takes up to `count` new jobs:
# {job ids...}, or {false, last stream id} when there are none (the id to wait after).
TAKE = """
local res = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
local out = {}
if res then
  for _, e in ipairs(res[1][2]) do
    local id = e[2][2]
    local job = ARGV[4] .. 'job:{' .. id .. '}'
    redis.call('HSET', job, 'owner', ARGV[2])
    redis.call('DECRBY', KEYS[2], tonumber(redis.call('HGET', job, 'recipients') or '0'))
    redis.call('SET', KEYS[4], e[1])
    table.insert(out, id)
  end
  if #out > 0 and tonumber(redis.call('DECRBY', KEYS[3], #out)) < 0 then redis.call('SET', KEYS[3], 0) end
end
if #out > 0 then return out end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then return {false, info[i + 1]} end
end
return {false, '0-0'}
"""

# KEYS: intake stream. ARGV: group, consumer, 'renew' | 'resume'. Re-claims this
# consumer's pending entries (their idle time starts again: the hold is renewed);
# 'resume' also returns their job ids. One script, so an entry another process has just
# claimed is not taken back.
HOLD = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 100000, ARGV[2])
local out = {}
for c = 1, #pending, 500 do
  local ids = {}
  for j = c, math.min(c + 499, #pending) do table.insert(ids, pending[j][1]) end
  if ARGV[3] == 'resume' then
    for _, e in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))) do
      if e and e[2] then table.insert(out, e[2][2]) end
    end
  else
    table.insert(ids, 'JUSTID')
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))
  end
end
return out
"""

# KEYS: intake stream. ARGV: group, consumer, lease ms, key prefix. Entries idle past
# the lease (their process stopped renewing) become this consumer's; their job ids.
ORPHANS = """
local out = {}
local start = '0-0'
repeat
  local res = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], start, 'COUNT', 100)
  start = res[1]
  for _, e in ipairs(res[2]) do
    if e and e[2] then
      local id = e[2][2]
      redis.call('HSET', ARGV[4] .. 'job:{' .. id .. '}', 'owner', ARGV[2])
      table.insert(out, id)
    end
  end
until start == '0-0'
return out
"""

# KEYS: job hash, decisions hash, outcomes hash, counts hash, order zset, deferred zset,
# deferred reasons hash, job's deferred set, open jobs zset.
# ARGV: job id, cursor (or -1 to keep), n decisions, then per decision: field, outcome,
# blob, order score; then n deferred, per item: member, due, reason; now; then n dead
# tokens, per token: user, channel, token (to the invalid-tokens stream, KEYS[12]); then n
# status callbacks, per event: id, type, job, data, at (to the tenant's outbox, KEYS[13]);
# then '1' and the end event's id, job, data, at (added if this write ends the job) or '0'.
RECORD = """
local n = tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  local field, outcome, blob, score = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local old = redis.call('HGET', KEYS[3], field)
  if old then redis.call('HINCRBY', KEYS[4], old, -1) end
  redis.call('HINCRBY', KEYS[4], outcome, 1)
  redis.call('HSET', KEYS[3], field, outcome)
  redis.call('HSET', KEYS[2], field, blob)
  redis.call('ZADD', KEYS[5], 'NX', score, field)
  if outcome ~= 'deferred' then
    local member = ARGV[1] .. '|' .. field
    if redis.call('SREM', KEYS[8], member) == 1 then
      redis.call('ZREM', KEYS[6], member)
      redis.call('HDEL', KEYS[7], member)
      redis.call('HDEL', KEYS[10], member)
    end
  end
  i = i + 4
end
local m = tonumber(ARGV[i])
i = i + 1
for _ = 1, m do
  redis.call('ZADD', KEYS[6], ARGV[i + 1], ARGV[i])
  redis.call('HSET', KEYS[7], ARGV[i], ARGV[i + 2])
  if ARGV[i + 3] ~= '' then redis.call('HSET', KEYS[10], ARGV[i], ARGV[i + 3])
  else redis.call('HDEL', KEYS[10], ARGV[i]) end
  redis.call('SADD', KEYS[8], ARGV[i])
  i = i + 4
end
local state = redis.call('HGET', KEYS[1], 'state')
local ended = redis.call('HEXISTS', KEYS[1], 'cancelled_at') == 1 and 'cancelled' or 'completed'
if tonumber(ARGV[2]) >= 0 and state ~= 'completed' and state ~= 'cancelled' then
  local cursor = tonumber(redis.call('HGET', KEYS[1], 'cursor') or '0')
  if tonumber(ARGV[2]) > cursor then redis.call('HSET', KEYS[1], 'cursor', ARGV[2]) end
  if state == 'accepted' then redis.call('HSET', KEYS[1], 'state', 'running') end
  redis.call('ZREMRANGEBYSCORE', KEYS[11], '-inf', '(' .. ARGV[2])
end
local now = ARGV[i]
local ends = false
if state == 'waiting' and redis.call('SCARD', KEYS[8]) == 0 then
  redis.call('HSET', KEYS[1], 'state', ended, 'finished_at', now)
  redis.call('DEL', KEYS[11])
  ends = true
end
local t = tonumber(ARGV[i + 1] or '0')
local tenant = redis.call('HGET', KEYS[1], 'tenant') or 'default'
for j = i + 2, i + 1 + 3 * t, 3 do
  redis.call('XADD', KEYS[12], 'MAXLEN', '~', 1000000, '*', 'tenant', tenant, 'job', ARGV[1],
             'user', ARGV[j], 'channel', ARGV[j + 1], 'token', ARGV[j + 2], 'at', now)
end
i = i + 2 + 3 * t
local e = tonumber(ARGV[i] or '0')
for j = i + 1, i + 5 * e, 5 do
  redis.call('XADD', KEYS[13], '*', 'id', ARGV[j], 'type', ARGV[j + 1], 'job', ARGV[j + 2], 'data', ARGV[j + 3],
             'at', ARGV[j + 4])
end
i = i + 1 + 5 * e
if ends and ARGV[i] == '1' then
  redis.call('XADD', KEYS[13], '*', 'id', ARGV[i + 1], 'type', 'job.' .. ended, 'job', ARGV[i + 2],
             'data', ARGV[i + 3], 'at', ARGV[i + 4])
end
return true
"""

# KEYS: job hash. ARGV: now. Marks the job cancelled unless it completed; its fields.
CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HGET', KEYS[1], 'state') ~= 'completed' then redis.call('HSETNX', KEYS[1], 'cancelled_at', ARGV[1]) end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: job hash, acks. ARGV: score, member pairs. Providers' answers, unless the job is
# completed (a late flush must not leave them behind for good).
ACKS = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'completed' or state == 'cancelled' then return false end
for i = 1, #ARGV, 2 do redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i + 1]) end
return true
"""

# KEYS: job hash. ARGV: cursor. Returns how many times in a row the job was retried there.
RETRY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'retry_cursor') == ARGV[1] then
  return redis.call('HINCRBY', KEYS[1], 'retries', 1)
end
redis.call('HSET', KEYS[1], 'retry_cursor', ARGV[1], 'retries', 1)
return 1
"""

# KEYS: job hash, job's deferred set, open jobs zset, intake stream, acks, the tenant's
# outbox. ARGV: now, job id, group, then '1' and the end event's id, job, data, at, or '0'.
FINISH = """
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry then
  redis.call('XACK', KEYS[4], ARGV[3], entry)
  redis.call('XDEL', KEYS[4], entry)
end
local recipients = redis.call('HGET', KEYS[1], 'recipients')
redis.call('HSET', KEYS[1], 'cursor', recipients)
if redis.call('SCARD', KEYS[2]) > 0 then
  redis.call('HSET', KEYS[1], 'state', 'waiting')
else
  local ended = redis.call('HEXISTS', KEYS[1], 'cancelled_at') == 1 and 'cancelled' or 'completed'
  redis.call('HSET', KEYS[1], 'state', ended, 'finished_at', ARGV[1])
end
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('DEL', KEYS[5])
local state = redis.call('HGET', KEYS[1], 'state')
if ARGV[4] == '1' and state ~= 'waiting' then
  redis.call('XADD', KEYS[6], '*', 'id', ARGV[5], 'type', 'job.' .. state, 'job', ARGV[6], 'data', ARGV[7],
             'at', ARGV[8])
end
return true
"""

# KEYS: the tenant's outbox lease. ARGV: owner, ttl ms. Taken, or renewed by its owner.
LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# ARGV: now, dry (1: check only), then per request: user, id, n checks, then per check: rule, since, limit,
# period (-1: calendar), reset (-1: rolling), action. Returns per request {0, id} or
# {1, rule, action, free_at}.
RESERVE = """
local now = tonumber(ARGV[1])
local dry = ARGV[2] == '1'  -- check only: grants count against later requests, nothing is written
local extra = {}  -- dry: grants of this call per key, all at `now`
local out = {}
local i = 3
while i <= #ARGV do
  local user, id, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local checks = {}
  for c = 1, n do
    -- since is kept as given: re-formatting a number in Lua would round it
    checks[c] = {ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]),
                 tonumber(ARGV[i + 4]), ARGV[i + 5]}
    i = i + 6
  end
  local denied = nil
  for _, ch in ipairs(checks) do
    local key = 'cap:{u:' .. user .. '}:' .. ch[1]
    local low = ch[2]
    if ch[4] >= 0 then low = '(' .. ch[2] end
    local stored = redis.call('ZCOUNT', key, low, '+inf')
    local count = stored + (extra[key] or 0)
    if count >= ch[3] then
      local free
      if ch[5] >= 0 then free = ch[5]
      elseif ch[3] == 0 then free = math.huge
      elseif count - ch[3] >= stored then free = now + ch[4]
      else
        local entry = redis.call('ZRANGEBYSCORE', key, low, '+inf', 'WITHSCORES', 'LIMIT', count - ch[3], 1)
        free = tonumber(entry[2]) + ch[4]
      end
      local drop = (ch[6] == 'drop')
      if denied == nil or (drop and not denied.drop) or (drop == denied.drop and free > denied.free) then
        denied = {rule = ch[1], action = ch[6], free = free, drop = drop}
      end
    end
  end
  if denied then
    local free = denied.free
    if free == math.huge then free = -1 end
    table.insert(out, {1, denied.rule, denied.action, tostring(free)})
  elseif dry then
    for _, ch in ipairs(checks) do
      local key = 'cap:{u:' .. user .. '}:' .. ch[1]
      extra[key] = (extra[key] or 0) + 1
    end
    table.insert(out, {0, id})
  else
    for _, ch in ipairs(checks) do
      local key = 'cap:{u:' .. user .. '}:' .. ch[1]
      redis.call('ZADD', key, now, id)
      local ttl = math.max(ch[4], 0) + 86400 * 8
      redis.call('EXPIRE', key, math.floor(ttl))
      redis.call('SADD', 'capres:' .. id, key)
      redis.call('EXPIRE', 'capres:' .. id, math.floor(ttl))
    end
    table.insert(out, {0, id})
  end
end
return out
"""

REFUND = """
for _, id in ipairs(ARGV) do
  for _, key in ipairs(redis.call('SMEMBERS', 'capres:' .. id)) do redis.call('ZREM', key, id) end
  redis.call('DEL', 'capres:' .. id)
end
return true
"""

# KEYS: deferred zset, reasons hash. ARGV: now, limit, lease.
CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for j = 1, #due, 2 do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), due[j])
  table.insert(out, {due[j], due[j + 1], redis.call('HGET', KEYS[2], due[j]) or '',
                     redis.call('HGET', KEYS[3], due[j]) or ''})
end
return out
"""


def _bytes(value: bytes | str) -> bytes:
    """A reply value: bytes, as the client never decodes (redis-py types it bytes | str)."""
    return value if isinstance(value, bytes) else value.encode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _job_record(job_id: str, raw: dict[bytes | str, bytes | str]) -> JobRecord:
    f = {_text(k): _text(v) for k, v in raw.items()}
    return JobRecord(
        id=job_id,
        campaign=f["campaign"],
        state=f["state"],
        recipients=int(f["recipients"]),
        cursor=int(f["cursor"]),
        warnings=_strings.decode(f["warnings"]),
        created_at=float(f["created_at"]),
        finished_at=float(f["finished_at"]) if "finished_at" in f else None,
        tenant=f.get("tenant", "default"),
        cancelled_at=float(f["cancelled_at"]) if "cancelled_at" in f else None,
    )


def _end_args(outbox: Outbox | None) -> list[Any]:
    end = outbox.on_end if outbox is not None else None
    return ["1", end.id, end.job_id, end.data, repr(end.at)] if end is not None else ["0"]


def _tenant_of(key: str) -> str:
    """The tenant of a tenant-qualified key (`tenant_key`)."""
    tenant, separator, _ = key.partition("\x1f")
    return tenant if separator else "default"


def _unavailable_on_error(method: Any) -> Any:
    """Redis errors on reads become StoreUnavailable, as the writes' do (API: 503)."""
    import functools

    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc

    return wrapper


GROUP = "gateway"  # every process consumes the intake stream in this one group


class RedisStore(Store):
    shared_queue = True

    def __init__(
        self,
        url: str,
        prefix: str = "gw:",
        instance: str = "gateway",
        queue_limit: int = 0,
        queue_jobs: int = 0,
        queue_age: float = 0.0,
    ):
        self.url = url
        self.p = prefix
        self.instance = instance
        self.queue_limit, self.queue_jobs, self.queue_age = queue_limit, queue_jobs, queue_age
        self.redis: aioredis.Redis | None = None
        self.stream = self._k("jobs")
        self._lease_ms = 6000

    async def open(self) -> None:
        # Connections pooled before a Redis restart are dead: retry such errors on a fresh
        # connection instead of failing the caller's batch.
        self.redis = aioredis.from_url(
            self.url,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            health_check_interval=10,
        )
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"cannot reach {redact_url(self.url)}: {exc}") from exc
        r = self.redis
        self._accept, self._record, self._finish = (
            r.register_script(ACCEPT),
            r.register_script(RECORD),
            r.register_script(FINISH),
        )
        self._reserve, self._refund, self._claim = (
            r.register_script(RESERVE),
            r.register_script(REFUND),
            r.register_script(CLAIM),
        )
        self._orphans, self._take, self._hold = (
            r.register_script(ORPHANS),
            r.register_script(TAKE),
            r.register_script(HOLD),
        )
        self._retry, self._acks = r.register_script(RETRY), r.register_script(ACKS)
        self._count_reasons = r.register_script(COUNT_REASONS)
        self._cancel = r.register_script(CANCEL)
        self._lease = r.register_script(LEASE)
        await self._create_group()

    async def _create_group(self) -> None:
        try:
            await self._r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None

    async def ping(self) -> bool:
        """A write (a Redis out of memory, or a read-only replica, still answers PING)."""
        try:
            return bool(await self._r.set(self._k("health", self.instance), "1", px=60_000))
        except (RedisError, OSError):
            return False

    @property
    def _r(self) -> aioredis.Redis:
        if self.redis is None:
            raise StoreUnavailable("store is not open")
        return self.redis

    def _k(self, *parts: str) -> str:
        return self.p + ":".join(parts)

    def _job_keys(self, job_id: str) -> list[str]:
        j = f"job:{{{job_id}}}"
        return [  # RECORD's keys (the others take the ones they need)
            self._k(j),
            self._k(j, "dec"),
            self._k(j, "out"),
            self._k(j, "counts"),
            self._k(j, "order"),
            self._k("deferred"),
            self._k("deferred", "reason"),
            self._k(j, "waiting"),
            self._k("open"),
            self._k("deferred", "state"),
            self._k(j, "acks"),
            self._k("invalid-tokens"),
        ]

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc

    # -- jobs ------------------------------------------------------------------------
    async def accept_job(
        self, job: JobRecord, body: bytes, idempotency: IdempotencyRecord | None, now: float
    ) -> IdempotencyRecord | None:
        keys = self._job_keys(job.id)
        idem_key = self._k("idem", idempotency.key) if idempotency else ""
        ttl_ms = max(1, int((idempotency.expires_at - now) * 1000)) if idempotency else 0
        existing = await self._call(
            self._accept,
            [
                idem_key,
                keys[0],
                self._k(f"job:{{{job.id}}}", "body"),
                keys[8],
                self.stream,
                self._k("queued"),
                self._k("queued", "jobs"),
                self._k("queued", "taken"),
                self._k("jobs-by-time"),
                self._k("jobs-by-time", job.tenant),
            ],
            [
                _pack(idempotency) if idempotency else b"",
                ttl_ms,
                job.campaign,
                job.recipients,
                _json.encode(job.warnings),
                repr(job.created_at),
                body,
                job.id,
                self.queue_limit,
                self.queue_jobs,
                int(self.queue_age * 1000),
                job.tenant,
            ],
        )
        if isinstance(existing, list):
            raise StoreBusy(self._busy(existing[0].decode(), int(existing[1])))
        return _idem.decode(existing) if existing else None

    def _busy(self, what: str, count: int) -> str:
        if what == "recipients":
            return f"{count} recipients are queued and not yet taken (limit {self.queue_limit})"
        if what == "jobs":
            return f"{count} jobs are queued and not yet taken (limit {self.queue_jobs})"
        return f"the oldest queued job has waited {count / 1000:.1f}s (limit {self.queue_age:g}s)"

    @_unavailable_on_error
    async def get_idempotency(self, key: str, now: float) -> IdempotencyRecord | None:
        raw = await self._r.get(self._k("idem", key))
        record = _idem.decode(_bytes(raw)) if raw else None
        return record if record is not None and record.expires_at > now else None

    async def resumable_jobs(self) -> list[JobRecord]:
        """The jobs this instance had taken and not finished (still in its pending list,
        re-claimed here so no other process takes them meanwhile); the others are other
        processes' or still queued for whoever takes them."""
        return await self._unfinished(await self._call(self._hold, [self.stream], [GROUP, self.instance, "resume"]))

    async def _unfinished(self, ids: list[bytes]) -> list[JobRecord]:
        """The records of these jobs that are still to run, read in one round trip."""
        if not ids:
            return []
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for i in ids:
                    pipe.hgetall(self._k(f"job:{{{i.decode()}}}"))
                raws = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        jobs = [_job_record(i.decode(), raw) for i, raw in zip(ids, raws, strict=True) if raw]
        return [j for j in jobs if j.state in ("accepted", "running")]

    async def take_jobs(self, count: int, wait: float) -> list[JobRecord]:
        for attempt in range(2):
            try:
                raw = await self._take(
                    keys=[self.stream, self._k("queued"), self._k("queued", "jobs"), self._k("queued", "taken")],
                    args=[GROUP, self.instance, count, self.p],
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise StoreUnavailable(str(exc)) from exc
                await self._create_group()  # Redis lost its data (restarted without persistence)
                continue
            except (RedisError, OSError) as exc:
                raise StoreUnavailable(str(exc)) from exc
            if raw and raw[0] is not None:
                return await self._unfinished(raw)
            if attempt == 0 and wait > 0:
                # Nothing queued: wait for the next entry after the last one the stream
                # has seen (XREAD does not consume it), then take again.
                try:
                    await self._r.xread({self.stream: raw[1]}, count=1, block=max(1, int(wait * 1000)))
                except (RedisError, OSError) as exc:
                    raise StoreUnavailable(str(exc)) from exc
        return []

    @_unavailable_on_error
    async def job_body(self, job_id: str) -> bytes:
        body = await self._r.get(self._k(f"job:{{{job_id}}}", "body"))
        if body is None:
            raise KeyError(job_id)
        return _bytes(body)

    def _decision_args(self, decisions: Sequence[Decision], now: float, channels: Sequence[str]) -> list[Any]:
        """Each decision's field, outcome, body and place: recipient, then the job's channel
        order (a score kept from the first time the pair is recorded)."""
        args: list[Any] = [len(decisions)]
        rank = {name: n for n, name in enumerate(channels)}
        for d in decisions:
            if not d.at:
                d.at = now
            place = rank.setdefault(d.channel, len(rank))
            args += [f"{d.recipient}|{d.channel}", d.outcome, _pack(d), d.recipient * 1000 + min(place, 999)]
        return args

    def _deferred_args(self, job_id: str, items: Sequence[DeferredItem]) -> list[Any]:
        args: list[Any] = [len(items)]
        for item in items:
            state = pack_state(item)
            args += [f"{job_id}|{item.recipient}|{item.channel}", repr(item.due), item.reason, state]
        return args

    async def record_batch(
        self,
        job_id: str,
        cursor: int,
        decisions: Sequence[Decision],
        now: float,
        deferred: Sequence[DeferredItem] = (),
        channels: Sequence[str] = (),
        finish: bool = False,
        outbox: Outbox | None = None,
    ) -> None:
        args = [*self._decision_args(decisions, now, channels), *self._deferred_args(job_id, deferred), repr(now)]
        dead = [(d.user_id, d.channel, token) for d in decisions if d.invalid_tokens for token in d.invalid_tokens]
        args += [len(dead), *(value for entry in dead for value in entry)]
        events = outbox.events if outbox is not None else []
        args += [len(events), *(v for e in events for v in (e.id, e.type, e.job_id, e.data, repr(e.at)))]
        args += _end_args(outbox)
        keys = [*self._job_keys(job_id), self._outbox_key(outbox)]
        await self._call(self._record, keys, [job_id, cursor, *args])
        if finish:  # its own script: FINISH reads what RECORD wrote (deferred messages)
            await self.finish_job(job_id, now, outbox)

    async def count_retry(self, job_id: str, cursor: int) -> int:
        return int(await self._call(self._retry, [self._job_keys(job_id)[0]], [cursor]))

    async def finish_job(self, job_id: str, now: float, outbox: Outbox | None = None) -> None:
        keys = self._job_keys(job_id)
        end = _end_args(outbox)
        await self._call(
            self._finish,
            [keys[0], keys[7], keys[8], self.stream, keys[10], self._outbox_key(outbox)],
            [repr(now), job_id, GROUP, *end],
        )

    def _outbox_key(self, outbox: Outbox | None) -> str:
        return self._k("outbox", outbox.tenant if outbox is not None else "default")

    @_unavailable_on_error
    async def append_outbox(self, outbox: Outbox) -> None:
        async with self._r.pipeline(transaction=True) as pipe:
            for e in outbox.events:
                pipe.xadd(
                    self._outbox_key(outbox),
                    {"id": e.id, "type": e.type, "job": e.job_id, "data": e.data, "at": repr(e.at)},
                )
            await pipe.execute()

    @_unavailable_on_error
    async def outbox(self, tenant: str, limit: int) -> list[OutboxEvent]:
        rows: list[tuple[bytes, dict[bytes, bytes]]] = await self._r.xrange(  # type: ignore[assignment]
            self._k("outbox", tenant), "-", "+", count=limit
        )
        return [
            OutboxEvent(
                seq=_text(entry_id),
                id=_text(f[b"id"]),
                type=_text(f[b"type"]),
                job_id=_text(f[b"job"]),
                data=_bytes(f[b"data"]),
                at=float(f[b"at"]),
            )
            for entry_id, f in rows
        ]

    @_unavailable_on_error
    async def outbox_done(self, tenant: str, seq: str) -> None:
        ms, _, n = seq.partition("-")
        await self._r.xtrim(self._k("outbox", tenant), minid=f"{ms}-{int(n) + 1}", approximate=False)

    @_unavailable_on_error
    async def outbox_lease(self, tenant: str, owner: str, ttl: float) -> bool:
        return bool(await self._call(self._lease, [self._k("outbox-lease", tenant)], [owner, int(ttl * 1000)]))

    async def record_acks(self, job_id: str, acks: Sequence[tuple[int, str, Result]]) -> None:
        if not acks:
            return
        keys = self._job_keys(job_id)
        args: list[Any] = []
        for recipient, delivery_id, result in acks:
            args += [recipient, _pack((delivery_id, result))]
        await self._call(self._acks, [keys[0], keys[10]], args)

    @_unavailable_on_error
    async def acks(self, job_id: str) -> dict[int, dict[str, Result]]:
        entries: list[tuple[bytes, float]] = await self._r.zrange(  # type: ignore[assignment]
            self._job_keys(job_id)[10], 0, -1, withscores=True
        )
        found: dict[int, dict[str, Result]] = {}
        for entry, recipient in entries:
            delivery_id, result = _ack.decode(entry)
            found.setdefault(int(recipient), {})[delivery_id] = result
        return found

    @_unavailable_on_error
    async def cancel_job(self, job_id: str, now: float) -> JobRecord | None:
        raw = await self._call(self._cancel, [self._k(f"job:{{{job_id}}}")], [repr(now)])
        if not raw:
            return None
        return _job_record(job_id, dict(zip(raw[::2], raw[1::2], strict=True)))

    @_unavailable_on_error
    async def delete_job(self, job_id: str) -> None:
        keys = self._job_keys(job_id)
        record = await self.get_job(job_id)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(
                keys[0], keys[1], keys[2], keys[3], keys[4], keys[7], keys[10], self._k(f"job:{{{job_id}}}", "body")
            )
            pipe.zrem(self._k("jobs-by-time"), job_id)
            if record is not None:
                pipe.zrem(self._k("jobs-by-time", record.tenant), job_id)
            await pipe.execute()

    @_unavailable_on_error
    async def replace_job_body(self, job_id: str, body: bytes) -> None:
        await self._r.set(self._k(f"job:{{{job_id}}}", "body"), body)

    @_unavailable_on_error
    async def deferred_of(self, job_id: str) -> list[DeferredItem]:
        keys = self._job_keys(job_id)
        members = sorted(_text(m) for m in await self._r.smembers(keys[7]))
        if not members:
            return []
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.zmscore(keys[5], members)
            pipe.hmget(keys[6], members)
            pipe.hmget(keys[9], members)
            dues, reasons, states = await pipe.execute()
        items = []
        for member, due, reason, state in zip(members, dues, reasons, states, strict=True):
            if due is None:
                continue
            _, recipient, channel = member.split("|")
            items.append(
                with_state(DeferredItem(job_id, int(recipient), channel, float(due), _text(reason or b"")), state)
            )
        return items

    @_unavailable_on_error
    async def deferred_counts(self) -> dict[str, int]:
        raw = await self._call(self._count_reasons, [self._k("deferred", "reason")], [])
        return {_text(raw[i]): int(raw[i + 1]) for i in range(0, len(raw), 2)}

    @_unavailable_on_error
    async def list_jobs(self, query: JobQuery) -> tuple[list[JobRecord], JobCursor | None]:
        """Newest first from the tenant's time index (ties by id, as the index orders them),
        filtered here a page of records at a time, reading at most `SCAN_PAGES` pages per
        call: the cursor goes on from where the reading stopped."""
        index = self._k("jobs-by-time", query.tenant) if query.tenant is not None else self._k("jobs-by-time")
        low = f"({query.created_after!r}" if query.created_after is not None else "-inf"
        size = max(query.limit, 100)
        found: list[JobRecord] = []
        cursor = query.before
        for _ in range(SCAN_PAGES):
            top = repr(cursor[0]) if cursor is not None else "+inf"
            page: list[tuple[bytes, float]] = await self._r.zrevrangebyscore(  # type: ignore[assignment]
                index, top, low, start=0, num=size, withscores=True
            )
            fresh = [(_text(m), s) for m, s in page if cursor is None or s < cursor[0] or _text(m) < cursor[1]]
            if not fresh:
                return found, None
            records = await self._records([m for m, _ in fresh])
            for (member, score), record in zip(fresh, records, strict=True):
                cursor = (score, member)
                if record is not None and query.matches(record):
                    found.append(record)
                    if len(found) == query.limit:
                        return found, cursor
            if len(page) < size:
                return found, None
        return found, cursor

    async def _records(self, ids: list[str]) -> list[JobRecord | None]:
        async with self._r.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hgetall(self._k(f"job:{{{i}}}"))
            rows = await pipe.execute()
        return [_job_record(i, raw) if raw else None for i, raw in zip(ids, rows, strict=True)]

    @_unavailable_on_error
    async def get_job(self, job_id: str) -> JobRecord | None:
        raw = await self._r.hgetall(self._k(f"job:{{{job_id}}}"))
        return _job_record(job_id, raw) if raw else None

    @_unavailable_on_error
    async def outcome_counts(self, job_id: str) -> dict[str, int]:
        raw = await self._r.hgetall(self._k(f"job:{{{job_id}}}", "counts"))
        return {_text(k): int(v) for k, v in raw.items() if int(v)}

    @_unavailable_on_error
    async def decisions(self, job_id: str, offset: int, limit: int) -> list[Decision]:
        keys = self._job_keys(job_id)
        fields: list[bytes] = await self._r.zrange(keys[4], offset, offset + limit - 1)  # type: ignore[assignment]
        if not fields:
            return []
        return [_decision.decode(_bytes(blob)) for blob in await self._r.hmget(keys[1], fields) if blob is not None]

    @_unavailable_on_error
    async def find_decisions(self, job_id: str, query: DecisionQuery) -> tuple[list[Decision], DecisionCursor | None]:
        """The order zset gives places, the outcomes hash filters; only matches' bodies are
        read. A user's places are read directly; other filters read the zset a page at a
        time, at most `SCAN_PAGES` pages per call (the cursor goes on from there)."""
        keys = self._job_keys(job_id)
        after: float = query.after[0] * 1000 + query.after[1] if query.after is not None else -1
        picked: list[tuple[str, float]] = []
        for _ in range(SCAN_PAGES):
            page, last = await self._places(keys[4], after, query)
            if query.channel is not None:
                page = [(f, s) for f, s in page if f.partition("|")[2] == query.channel]
            if query.outcome is not None and page:
                outcomes = await self._r.hmget(keys[2], [f for f, _ in page])
                page = [p for p, o in zip(page, outcomes, strict=True) if o is not None and _text(o) == query.outcome]
            picked += page[: query.limit - len(picked)]
            if len(picked) == query.limit or last is None:
                break
            after = last
        blobs = await self._r.hmget(keys[1], [f for f, _ in picked]) if picked else []
        found = [_decision.decode(_bytes(b)) for b in blobs if b is not None]
        if len(picked) < query.limit and last is None:
            return found, None
        end = int(picked[-1][1]) if len(picked) == query.limit else int(after)
        return found, (end // 1000, end % 1000)

    async def _places(
        self, order: str, after: float, query: DecisionQuery
    ) -> tuple[list[tuple[str, float]], float | None]:
        """(field, score) after `after`: the user's, or the next page; and where a next
        page would start (None: nothing is left)."""
        if query.recipients is not None:
            async with self._r.pipeline(transaction=False) as pipe:
                for r in sorted(set(query.recipients)):
                    pipe.zrangebyscore(order, r * 1000, r * 1000 + 999, withscores=True)
                places = [(_text(f), s) for rows in await pipe.execute() for f, s in rows if s > after]
            return places, None
        size = max(query.limit, 1000)
        rows: list[tuple[bytes, float]] = await self._r.zrangebyscore(  # type: ignore[assignment]
            order, f"({after!r}", "+inf", start=0, num=size, withscores=True
        )
        places = [(_text(f), s) for f, s in rows]
        return places, (places[-1][1] if len(rows) == size else None)

    async def purge_expired(self, now: float) -> int:
        return 0  # idempotency keys carry a Redis TTL

    # -- several processes ---------------------------------------------------------------
    async def heartbeat(self, ttl: float) -> None:
        self._lease_ms = max(1, int(ttl * 1000))
        await self._call(self._hold, [self.stream], [GROUP, self.instance, "renew"])

    async def claim_orphaned_jobs(self) -> list[JobRecord]:
        return await self._unfinished(
            await self._call(self._orphans, [self.stream], [GROUP, self.instance, self._lease_ms, self.p])
        )

    # -- frequency caps --------------------------------------------------------------
    async def reserve_caps(self, requests: Sequence[CapRequest], now: float) -> list[CapOutcome]:
        return await self._caps(requests, now, dry=False)

    async def check_caps(self, requests: Sequence[CapRequest], now: float) -> list[CapOutcome]:
        return await self._caps(requests, now, dry=True)

    async def _caps(self, requests: Sequence[CapRequest], now: float, dry: bool) -> list[CapOutcome]:
        args: list[Any] = [repr(now), "1" if dry else "0"]
        for request in requests:
            args += [request.user, new_reservation_id(), len(request.checks)]
            for c in request.checks:
                args += [
                    c.rule,
                    repr(c.since),
                    c.limit,
                    repr(c.period if c.period is not None else -1),
                    repr(c.reset if c.reset is not None else -1),
                    c.action,
                ]
        if len(args) == 2:
            return [Granted(None) for _ in requests]
        raw = await self._call(self._reserve, [], args)
        outcomes: list[CapOutcome] = []
        for request, item in zip(requests, raw, strict=True):
            if not request.checks:
                outcomes.append(Granted(None))
            elif int(item[0]) == 0:
                outcomes.append(Granted(item[1].decode()))
            else:
                free = float(item[3])
                outcomes.append(Denied(item[1].decode(), item[2].decode(), float("inf") if free < 0 else free))
        return outcomes

    async def refund_caps(self, reservations: Sequence[str]) -> None:
        if reservations:
            await self._call(self._refund, [], list(reservations))

    async def prune_caps(self, before: float) -> None:
        return None  # cap logs carry a Redis TTL

    # -- email opt-outs --------------------------------------------------------------
    @_unavailable_on_error
    async def record_opt_out(self, address: str, campaign: str, now: float) -> None:
        key = address.lower()
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.sadd(self._k("optouts"), key)
            pipe.zadd(self._k("optouts", "by-time"), {key: now})
            pipe.hset(self._k("optouts", "campaign"), key, campaign)
            await pipe.execute()

    @_unavailable_on_error
    async def clear_opt_out(self, address: str) -> bool:
        key = address.lower()
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.srem(self._k("optouts"), key)
            pipe.zrem(self._k("optouts", "by-time"), key)
            pipe.hdel(self._k("optouts", "campaign"), key)
            removed, _, _ = await pipe.execute()
        return bool(removed)

    @_unavailable_on_error
    async def opt_out_feed(
        self, tenant: str, after: FeedCursor | None, limit: int
    ) -> tuple[list[OptOut], FeedCursor | None]:
        """Oldest first from the time index, keeping the tenant's, a bounded read per call."""
        found: list[tuple[str, float]] = []
        at, last = after if after is not None else (-1.0, "")
        for _ in range(SCAN_PAGES):
            rows: list[tuple[bytes, float]] = await self._r.zrangebyscore(  # type: ignore[assignment]
                self._k("optouts", "by-time"), repr(at), "+inf", start=0, num=1000, withscores=True
            )
            page = [(_text(k), s) for k, s in rows if s > at or _text(k) > last]
            found += [(k, s) for k, s in page if _tenant_of(k) == tenant][: limit - len(found)]
            if len(found) == limit or len(rows) < 1000 or not page:
                break
            last, at = page[-1][0], page[-1][1]
        campaigns = await self._r.hmget(self._k("optouts", "campaign"), [k for k, _ in found]) if found else []
        entries = [
            OptOut(address=k.rpartition("\x1f")[2], campaign=_text(c) if c else None, at=s)
            for (k, s), c in zip(found, campaigns, strict=True)
        ]
        return entries, (found[-1][1], found[-1][0]) if len(found) == limit else None

    @_unavailable_on_error
    async def invalid_token_feed(
        self, tenant: str, after: str | None, limit: int
    ) -> tuple[list[InvalidTokenEntry], str | None]:
        """From the stream every tenant's dead tokens go to, keeping the tenant's."""
        found: list[InvalidTokenEntry] = []
        start = f"({after}" if after else "-"
        for _ in range(SCAN_PAGES):
            rows: list[tuple[bytes, dict[bytes, bytes]]] = await self._r.xrange(  # type: ignore[assignment]
                self._k("invalid-tokens"), start, "+", count=1000
            )
            for entry_id, fields in rows:
                f = {_text(k): _text(v) for k, v in fields.items()}
                start = f"({_text(entry_id)}"
                if f["tenant"] == tenant:
                    found.append(
                        InvalidTokenEntry(
                            channel=f["channel"],
                            token=f["token"],
                            user_id=f["user"],
                            job_id=f["job"],
                            at=float(f["at"]),
                        )
                    )
                    if len(found) == limit:
                        return found, _text(entry_id)
            if len(rows) < 1000:
                break
        return found, None

    @_unavailable_on_error
    async def opt_outs(self) -> set[str]:
        return {_text(a) for a in await self._r.smembers(self._k("optouts"))}

    # -- deferred messages -----------------------------------------------------------
    async def claim_due(self, now: float, limit: int, lease: float) -> list[DeferredItem]:
        keys = self._job_keys("-")
        raw = await self._call(self._claim, [keys[5], keys[6], keys[9]], [repr(now), limit, repr(lease)])
        items = []
        for member, due, reason, state in raw:
            job_id, recipient, channel = member.decode().split("|")
            items.append(with_state(DeferredItem(job_id, int(recipient), channel, float(due), reason.decode()), state))
        return items

    async def settle_deferred(
        self,
        job_id: str,
        decisions: Sequence[Decision],
        deferred: Sequence[DeferredItem],
        now: float,
        channels: Sequence[str] = (),
        outbox: Outbox | None = None,
    ) -> None:
        await self.record_batch(job_id, -1, decisions, now, deferred, channels, outbox=outbox)
