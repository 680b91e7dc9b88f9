"""One TOML file, decoded into Structs that reject unknown keys.

`load_config` reports *every* problem with its key path (`store.synchronous: ...`) rather
than the first one msgspec meets, because an operator fixing a config file should not have
to run the checker once per typo. Secrets are read from the environment or a file and kept
in `Secret`, whose repr never shows the value.
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

DEFAULT_PATH = Path("config/gateway.toml")
ENV_VAR = "GATEWAY_CONFIG"

DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h|d|w)$"
TIME_OF_DAY_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
Duration = Annotated[str, msgspec.Meta(pattern=DURATION_PATTERN)]
TimeOfDay = Annotated[str, msgspec.Meta(pattern=TIME_OF_DAY_PATTERN)]
# What each pattern means, for people: check-config says this instead of the regex.
_PATTERN_WORDS = {
    DURATION_PATTERN: "a duration such as 500ms, 30s, 15m, 24h or 7d",
    TIME_OF_DAY_PATTERN: "a time of day as HH:MM, 00:00 to 23:59",
}
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds(duration: str) -> float:
    """`"90m"` -> 5400.0."""
    number, unit = re.fullmatch(r"([0-9.]+)([a-z]+)", duration).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


class ConfigError(Exception):
    """A config file that cannot be used; `problems` holds one line per bad key."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: " + "; ".join(problems))


class Secret:
    """A secret value that is safe to log: str() and repr() mask it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class SecretRef(_Section):
    """Where a secret lives: `{ env = "NAME" }` or `{ file = "path" }`."""

    env: str | None = None
    file: str | None = None

    def resolve(self, path: str) -> Secret:
        if (self.env is None) == (self.file is None):
            raise ConfigError([f"{path}: give exactly one of `env` or `file`"])
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ConfigError([f"{path}.env: environment variable {self.env} is not set"])
            return Secret(value)
        try:
            return Secret(Path(self.file).read_text().strip())  # type: ignore[arg-type]
        except OSError as exc:
            raise ConfigError([f"{path}.file: cannot read {self.file}: {exc.strerror}"]) from None


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    # API keys come from the environment or a file, never from this file: it gets committed.
    # These are the keys of the `default` tenant; [tenants.<name>] adds others.
    api_keys_env: str = "GATEWAY_API_KEYS"
    api_keys_file: str | None = None
    # Keys that see every tenant's jobs (their own jobs belong to `default`).
    admin_keys_env: str = "GATEWAY_ADMIN_KEYS"
    shutdown_timeout: Duration = "30s"
    # A client must send a request's headers within this, and its body within `body_timeout`
    # of the headers: a client that trickles bytes holds a connection for no longer.
    header_timeout: Duration = "10s"
    body_timeout: Duration = "60s"
    # Plain `POST /v1/jobs` requests (the one-message path) answered by a lean HTTP/1.1
    # reader of our own instead of aiohttp's server (~20% less CPU per job); any other
    # request hands its connection to aiohttp. false: every request through aiohttp.
    fast_intake: bool = True


class LimitsConfig(_Section):
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16 * 1024 * 1024
    max_recipients: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    max_variants: Annotated[int, msgspec.Meta(ge=1)] = 20
    max_template_chars: Annotated[int, msgspec.Meta(ge=1)] = 20_000
    max_devices: Annotated[int, msgspec.Meta(ge=1)] = 50
    max_channels: Annotated[int, msgspec.Meta(ge=1)] = 16


class IntakeConfig(_Section):
    idempotency_ttl: Duration = "24h"
    max_inflight_recipients: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    # A stream of small jobs is pushed back (429) before it builds a backlog: past this
    # many jobs accepted and waiting for a worker, or when the oldest has waited this long.
    max_queued_jobs: Annotated[int, msgspec.Meta(ge=1)] = 5_000
    max_queue_age: Duration = "2s"
    # `POST /v1/jobs?wait=2s` answers with the job's decisions when it ends within the
    # wait; a longer wait asked for is cut to this.
    max_wait: Duration = "10s"
    retry_after: Annotated[int, msgspec.Meta(ge=1)] = 2


class StoreConfig(_Section):
    url: str = "sqlite:data/gateway.db"
    # "full" fsyncs each group commit: an accepted job survives a power cut, not only a crash.
    synchronous: Literal["normal", "full"] = "full"
    group_commit_max: Annotated[int, msgspec.Meta(ge=1)] = 512
    # While writes arrive from many requests at once, a commit waits up to this long for
    # more to share it ("0ms": never): at 1,000 one-message jobs/s, 2ms of wait cut the
    # gateway's CPU per message by a fifth. A lone caller never waits.
    group_commit_wait: Duration = "2ms"
    key_prefix: str = "gw:"  # Redis: every key starts with this (several gateways on one Redis)
    # Redis: this process's consumer name in the intake stream's group; at start-up a
    # process resumes the jobs it had taken under this name. Default: the host name; give
    # each process on one host its own (e.g. the pod or unit name).
    instance: str | None = None
    # Redis: every `heartbeat` a process renews its hold on the jobs it has taken; a job
    # whose hold is 3 heartbeats old is taken over by another process from its last
    # recorded batch.
    heartbeat: Duration = "2s"


class PipelineConfig(_Section):
    # Jobs run at once (each pipelines its own batches); one waiting on a slow provider
    # holds one of them.
    workers: Annotated[int, msgspec.Meta(ge=1, le=256)] = 32
    # Jobs of one batch (`batch_size` recipients or fewer: an order shipped, a login code)
    # running at once, apart from `workers`: such a job spends its time waiting on two
    # commits and a provider's answer, so 32 of them capped a stream at ~2,600 jobs/s.
    small_job_workers: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 128
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 500


class DeliveryConfig(_Section):
    # Transient failures are retried until this long after a delivery's first attempt (or
    # the job's expires_at), whatever the number of attempts.
    max_delivery_time: Duration = "15m"
    # Retries within this of a send wait in memory; later ones wait in the store
    # (deferred: retrying) and the scheduler releases them when due.
    retry_window: Duration = "10s"
    backoff_base: Duration = "500ms"
    backoff_max: Duration = "30s"
    # Deliveries in flight at once per provider, across all batches (its stream limits),
    # unless the channel's plugin sets `default_concurrency`; per channel over both.
    concurrency: Annotated[int, msgspec.Meta(ge=1)] = 256
    concurrency_per_channel: dict[str, Annotated[int, msgspec.Meta(ge=1)]] = {}
    # Circuit breaker: this many consecutive transient failures open it for the cooldown
    # (doubling while probes fail, up to 10 minutes); meanwhile deliveries wait in the store.
    breaker_failures: Annotated[int, msgspec.Meta(ge=1)] = 20
    breaker_cooldown: Duration = "30s"


class QuietHoursConfig(_Section):
    enabled: bool = True
    start: TimeOfDay = "21:00"
    end: TimeOfDay = "08:00"
    channels: list[str] = msgspec.field(default_factory=lambda: ["push", "speaker"])  # names, "push", "any"
    action: Literal["defer", "drop", "ignore"] = "defer"
    fallback_timezone: str = "UTC"  # for recipients without a valid IANA zone
    spread: Duration = "15m"  # deferred releases spread over this, per recipient
    transactional: bool = False  # apply to transactional messages too


class ScheduleConfig(_Section):
    poll_interval: Duration = "1s"  # how often due deferred messages are looked for
    lease: Duration = "5m"  # a claimed batch returns to the queue if not done by then
    batch_size: Annotated[int, msgspec.Meta(ge=1)] = 500


class PluginsConfig(_Section):
    # Entry-point names to skip, e.g. to replace a built-in channel with your own.
    disable: list[str] = []


TenantName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
DEFAULT_TENANT = "default"


class TenantConfig(_Section):
    # The tenant's API keys, comma or newline separated: `{ env = "CRM_API_KEYS" }`.
    api_keys: SecretRef


CallbackEvent = Literal["decisions", "job.completed", "job.cancelled", "token.invalidated", "opt_out.recorded"]


class CallbackConfig(_Section):
    url: str  # where the tenant's events are POSTed (from here only, never from a job)
    secret: SecretRef  # whsec_<base64>: signs them (Standard Webhooks)
    events: list[CallbackEvent] = msgspec.field(
        default_factory=lambda: ["decisions", "job.completed", "job.cancelled", "token.invalidated", "opt_out.recorded"]
    )
    # An event not delivered by then (retried with backoff meanwhile) is given up, with a
    # log line and gateway_callbacks_dropped_total.
    max_age: Duration = "1d"
    timeout: Duration = "10s"


class RetentionConfig(_Section):
    # Ended jobs (completed, cancelled) are forgotten this long after they ended: their
    # bodies (addresses, attributes) and decisions. Housekeeping runs every 10 minutes.
    jobs: Duration = "30d"


class LoggingConfig(_Section):
    format: Literal["text", "json"] = "text"  # json: one object per line, with each line's fields
    level: Literal["debug", "info", "warning", "error"] = "info"
    # Provider trouble (failures by provider and reason) is summarised once per interval,
    # never logged per message.
    provider_summary: Duration = "60s"


class GatewayConfig(_Section):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    intake: IntakeConfig = msgspec.field(default_factory=IntakeConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    pipeline: PipelineConfig = msgspec.field(default_factory=PipelineConfig)
    delivery: DeliveryConfig = msgspec.field(default_factory=DeliveryConfig)
    plugins: PluginsConfig = msgspec.field(default_factory=PluginsConfig)
    quiet_hours: QuietHoursConfig = msgspec.field(default_factory=QuietHoursConfig)
    schedule: ScheduleConfig = msgspec.field(default_factory=ScheduleConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    # Status callbacks, by tenant (`default`: the tenant of server.api_keys_env's keys).
    callbacks: dict[str, CallbackConfig] = {}
    # Upstream systems apart: each tenant's keys see only its jobs, decisions, idempotency
    # keys and opt-outs, and its caps count apart.
    tenants: dict[TenantName, TenantConfig] = {}
    # Frequency caps, as [[caps]] tables; see config/gateway.toml.
    caps: list[Any] = []
    # One table per channel, checked against that channel's own Config Struct once the
    # plugins are loaded (`gateway.loader.configure_channels`).
    channels: dict[str, dict[str, Any]] = {}


def struct_problems(data: Any, struct: type[msgspec.Struct], path: str) -> list[str]:
    """Every problem in `data` for `struct`, each with its dotted key path, in words.

    msgspec stops at the first error, so walk the Struct's fields and convert each one on
    its own; nested Structs (and dicts of Structs) are walked the same way.
    """
    if not isinstance(data, dict):
        return [f"{path or '(top level)'}: expected a table, got {_kind(data)}"]
    info = msgspec.inspect.type_info(struct)
    fields = {f.encode_name: f for f in info.fields}  # type: ignore[attr-defined]
    problems = [f"{_join(path, key)}: unknown key{unknown_hint(key, fields)}" for key in data if key not in fields]
    for name, field in fields.items():
        key_path = _join(path, name)
        if name not in data:
            if field.required:
                problems.append(f"{key_path}: required key is missing")
            continue
        value, ftype = data[name], field.type
        if isinstance(ftype, msgspec.inspect.StructType):
            problems += struct_problems(value, ftype.cls, key_path)
        elif (
            isinstance(ftype, msgspec.inspect.DictType)
            and isinstance(ftype.value_type, msgspec.inspect.StructType)
            and isinstance(value, dict)
        ):
            for sub, subvalue in value.items():
                problems += struct_problems(subvalue, ftype.value_type.cls, _join(key_path, sub))
        else:
            try:
                msgspec.convert(value, _hints(struct)[field.name])
            except msgspec.ValidationError as exc:
                problems.append(explain(exc, key_path, value, ftype))
    return problems


def did_you_mean(word: str, choices: Any) -> str:
    """` (did you mean 'speaker'?)` for a near miss among `choices`, else ``."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_hint(word: str, choices: Any) -> str:
    """A did-you-mean, else the allowed names when there are few of them."""
    hint = did_you_mean(word, choices)
    names = sorted(str(c) for c in choices)
    if not hint and 0 < len(names) <= 12:
        return f" (allowed: {', '.join(names)})"
    return hint


@functools.cache
def _hints(struct: type) -> dict[str, Any]:
    return typing.get_type_hints(struct, include_extras=True)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "array": "a list",
    "object": "a table",
    "null": "nothing",
}


def explain(exc: msgspec.ValidationError, path: str, value: Any, ftype: Any) -> str:
    """msgspec's message for an operator: the formats and allowed values in words, the
    value that was given, the key path down to a list item."""
    message, _, where = str(exc).partition(" - at ")
    sub = where.strip("`").removeprefix("$")
    if sub:  # inside a list or table: that item's path and value
        path += sub
        value = _at(value, sub)
    got = f", got {_show(value)}"
    if m := re.fullmatch(r"Expected `\w+` matching regex '(.*)'", message):
        pattern = m.group(1).replace("\\\\", "\\")  # msgspec doubles the backslashes
        return f"{path}: expected {_PATTERN_WORDS.get(pattern, f'text matching {pattern}')}{got}"
    if message.startswith("Invalid enum value"):
        allowed = _literals(ftype)
        listed = ", ".join(repr(a) for a in allowed)
        return f"{path}: expected one of {listed}{got}{did_you_mean(str(value), allowed)}"
    if m := re.fullmatch(r"Expected `([\w |]+)`(?:, got `\w+`)?(.*)", message):
        kinds = [_TYPE_WORDS.get(t, t) for t in m.group(1).split(" | ") if t != "null"]
        return f"{path}: expected {' or '.join(kinds)}{m.group(2)}{got}"
    return f"{path}: {message}"


def _at(value: Any, sub: str) -> Any:
    for part in re.findall(r"\[(\d+)\]|\.(\w+)", sub):
        try:
            value = value[int(part[0])] if part[0] else value[part[1]]
        except (LookupError, TypeError, ValueError):
            return value
    return value


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return _kind(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "true/false"}.get(type(value), type(value).__name__)


def _literals(ftype: Any) -> list[Any]:
    """The values a Literal field (or a list or union of Literals) allows."""
    if isinstance(ftype, msgspec.inspect.LiteralType):
        return list(ftype.values)
    for inner in getattr(ftype, "types", ()) or (getattr(ftype, "item_type", None), getattr(ftype, "value_type", None)):
        if inner is not None and (found := _literals(inner)):
            return found
    return []


def convert_section(data: Any, struct: type[msgspec.Struct], path: str) -> Any:
    problems = struct_problems(data, struct, path)
    if problems:
        raise ConfigError(problems)
    return msgspec.convert(data, struct)


def default_path() -> Path | None:
    """Without --config: $GATEWAY_CONFIG, else ./config/gateway.toml if present."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


def read_config(path: Path) -> dict[str, Any]:
    """The file's TOML as a dict, or ConfigError (it cannot be read, or is not TOML)."""
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror}"], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from None


def load_config(path: str | Path | None = None) -> GatewayConfig:
    """The file's sections as Structs, or ConfigError naming every bad key. What refers to
    plugins and other sections is checked by `gateway.checkconfig.check_config`."""
    path = Path(path) if path is not None else default_path()
    if path is None:
        return GatewayConfig()
    data = read_config(path)
    try:
        return convert_section(data, GatewayConfig, "")
    except ConfigError as exc:
        raise ConfigError(exc.problems, str(path)) from None


def usable_part(data: dict[str, Any], problems: list[str]) -> GatewayConfig:
    """The config without its bad keys (left at their defaults), so the checks that need a
    config (plugins, policy, channels) still run and report in the same round."""
    try:
        return msgspec.convert(without_problems(data, problems), GatewayConfig)
    except msgspec.ValidationError:  # a bad key that cannot be left out: its whole section
        bad = {re.split(r"[.\[:]", problem, maxsplit=1)[0] for problem in problems}
        return msgspec.convert({k: v for k, v in data.items() if k not in bad}, GatewayConfig)


def without_problems(data: dict[str, Any], problems: list[str], prefix: str = "") -> dict[str, Any]:
    """A copy of `data` without the keys `problems` name (paths under `prefix`)."""
    pruned = copy.deepcopy(data)
    for problem in reversed(problems):  # list items from the last: earlier indexes hold
        path = problem.split(": ", 1)[0]
        if prefix:
            if not path.startswith(prefix + "."):
                continue
            path = path[len(prefix) + 1 :]
        _delete(pruned, re.findall(r"\[\d+\]|[^.\[\]]+", path))
    return pruned


def _delete(data: Any, parts: list[str]) -> None:
    try:
        for part in parts[:-1]:
            data = data[int(part[1:-1])] if part.startswith("[") else data[part]
        last = parts[-1]
        del data[int(last[1:-1]) if last.startswith("[") else last]
    except (LookupError, TypeError, ValueError):
        pass


def redact_url(url: str) -> str:
    """A URL without its password (`redis://:secret@host` -> `redis://:***@host`), to log."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


class ApiKey(typing.NamedTuple):
    secret: Secret
    tenant: str
    admin: bool = False


def key_table(config: GatewayConfig) -> list[ApiKey]:
    """Every API key with its tenant: the server's keys (`default`), admin keys, and each
    tenant's; a key given to two tenants is an error."""
    found = [ApiKey(k, DEFAULT_TENANT) for k in api_keys(config.server)]
    found += [ApiKey(Secret(k), DEFAULT_TENANT, True) for k in _split(os.environ.get(config.server.admin_keys_env, ""))]
    problems = []
    for name, tenant in config.tenants.items():
        if name == DEFAULT_TENANT:
            problems.append(f"tenants.{name}: `default` is the tenant of server.api_keys_env's keys")
            continue
        try:
            keys = _split(tenant.api_keys.resolve(f"tenants.{name}.api_keys").reveal())
            found += [ApiKey(Secret(k), name) for k in keys]
        except ConfigError as exc:
            problems += exc.problems
    owners: dict[str, str] = {}
    for key in found:
        owner = owners.setdefault(key.secret.reveal(), key.tenant)
        if owner != key.tenant:
            problems.append(f"tenants.{key.tenant}.api_keys: a key of tenant {owner!r} too; each key has one tenant")
    if problems:
        raise ConfigError(problems)
    return found


def _split(raw: str) -> list[str]:
    return [k.strip() for k in re.split(r"[,\n]", raw) if k.strip() and not k.strip().startswith("#")]


def api_keys(server: ServerConfig) -> list[Secret]:
    """Keys from $api_keys_env (comma separated) and/or api_keys_file (one per line)."""
    keys: list[str] = []
    raw = os.environ.get(server.api_keys_env, "")
    keys += [k.strip() for k in raw.split(",") if k.strip()]
    if server.api_keys_file:
        try:
            text = Path(server.api_keys_file).read_text()
        except OSError as exc:
            raise ConfigError([f"server.api_keys_file: cannot read: {exc.strerror}"]) from None
        keys += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [Secret(k) for k in keys]
