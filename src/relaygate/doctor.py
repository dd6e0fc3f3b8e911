"""``relaygate doctor``: checks a set-up end to end and says how to fix what is wrong.

It loads the configuration, then checks concurrently, each check bounded by a
timeout: the database and its migrations, Redis (when configured), every
upstream and discovered Ollama server (reachable, models present, credentials
accepted), the clock against the upstreams, Redis and PostgreSQL, and the usage
outbox folder (writable, free space). Each finding is one line, ``OK``, ``WARN``
or ``FAIL``, with the fix in one sentence; any ``FAIL`` makes the exit status 1.
It changes nothing: no migration, no file, no request but reads.

Secrets never reach the output: keys are not printed, URLs lose their passwords.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgspec

from relaygate import __version__
from relaygate.errors import ConfigError
from relaygate.providers.anthropic import ANTHROPIC_VERSION
from relaygate.schema.requests import ollama_tagged
from relaygate.settings import DeploymentConfig, Settings, load_settings

__all__ = ["CHECK_TIMEOUT", "Finding", "diagnose", "run"]

CHECK_TIMEOUT = 3.0  # seconds per check
CLOCK_SKEW_WARN = 5.0  # seconds between this machine and another before a warning
REDIS_SLOW = 0.05  # seconds of PING round trip before a warning
OUTBOX_WARN_BYTES = 1024**3  # free space under the outbox below which it warns
OUTBOX_FAIL_BYTES = 100 * 1024**2  # ... and below which it fails
Status = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the report: a status, what was checked and found, and the fix."""

    status: Status
    what: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.what}"
        if self.fix:
            text += (" " if text.endswith((".", "?", "!")) else ". ") + f"Fix: {self.fix}."
        return mask_urls(text)


@dataclass(slots=True)
class _Report:
    """What the checks found, and the clocks they saw (source -> seconds ahead of ours)."""

    findings: list[Finding] = field(default_factory=list)
    clocks: dict[str, float] = field(default_factory=dict)

    def add(self, status: Status, what: str, fix: str = "") -> None:
        self.findings.append(Finding(status, what, fix))


def run(config: str | None, timeout: float = CHECK_TIMEOUT) -> int:
    """Print the report for the configuration ``config``; 1 when something failed."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        findings = [_config_failure(exc)]
    else:
        where = settings.config_path or "defaults and RELAYGATE_* variables"
        loaded = Finding("OK", f"configuration: {where} loads")
        findings = [loaded, *asyncio.run(diagnose(settings, timeout))]
    for finding in findings:
        print(finding.line(), flush=True)
    failed = sum(f.status == "FAIL" for f in findings)
    warned = sum(f.status == "WARN" for f in findings)
    print(f"relaygate {__version__} doctor: {failed} failed, {warned} warnings")
    return 1 if failed else 0


def _config_failure(exc: ConfigError) -> Finding:
    return Finding(
        "FAIL",
        f"configuration: {exc}",
        "correct that setting (every setting is in docs/configuration.md); nothing else "
        "is checked until the configuration loads",
    )


async def diagnose(settings: Settings, seconds: float = CHECK_TIMEOUT) -> list[Finding]:
    """Every check but the configuration's, run concurrently, each within ``seconds``."""
    from relaygate.store.migrate import alembic_config

    # Read the migration scripts before the loop runs: it is file I/O.
    migrations = await asyncio.to_thread(_known_revisions, alembic_config(""))
    report = _Report()  # what each check finds is printed in the order of this list
    checks: list[tuple[str, str, Callable[[_Report], Awaitable[None]]]] = [
        ("database", DATABASE_FIX, lambda found: _database(settings, migrations, found)),
        ("usage outbox", "", lambda found: _outbox(settings, found)),
    ]
    if settings.redis_url:
        fix = "start Redis or correct redis_url"
        checks.append(("redis", fix, lambda found: _redis(settings, seconds, found)))
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=seconds),
        headers={"User-Agent": f"relaygate/{__version__} doctor"},
        trust_env=False,
    )
    for upstream in _upstreams(settings):
        fix = f"make the server answer or correct {upstream.where}"
        checks.append((upstream.title, fix, _bind(upstream.check, session)))
    async with session:
        reports = await asyncio.gather(*(_bounded(c, seconds) for c in checks))
    for found in reports:
        report.findings += found.findings
        report.clocks.update(found.clocks)
    report.findings += _clock_findings(report.clocks)
    return report.findings


def _bind(
    check: Callable[[aiohttp.ClientSession, _Report], Awaitable[None]],
    session: aiohttp.ClientSession,
) -> Callable[[_Report], Awaitable[None]]:
    return lambda found: check(session, found)


async def _bounded(
    check: tuple[str, str, Callable[[_Report], Awaitable[None]]], seconds: float
) -> _Report:
    """Run one check within ``seconds``; a check that breaks is a finding, not a crash."""
    title, fix, run_check = check
    found = _Report()
    try:
        async with asyncio.timeout(seconds):
            await run_check(found)
    except TimeoutError:
        found.add("FAIL", f"{title}: no answer within {seconds:g} s", fix)
    except Exception as exc:  # a diagnosis reports what it could not check
        found.add("FAIL", f"{title}: could not be checked: {_brief(exc)}", fix)
    return found


# database


def _known_revisions(config: object) -> tuple[str | None, set[str]]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(config)  # type: ignore[arg-type]
    return script.get_current_head(), {s.revision for s in script.walk_revisions()}


DATABASE_FIX = "start the database server, or correct database_url"


async def _database(
    settings: Settings, migrations: tuple[str | None, set[str]], report: _Report
) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from relaygate.store.engine import create_engine, is_sqlite, safe_url

    url, shown = settings.database_url, safe_url(settings.database_url)
    if is_sqlite(url) and not await asyncio.to_thread(_sqlite_exists, url):
        report.add("OK", f"database {shown}: not created yet ('relaygate serve' creates it)")
        return
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            current = await conn.run_sync(_current_revision)
            if not is_sqlite(url):
                now = await conn.scalar(text("SELECT extract(epoch FROM now())"))
                report.clocks["PostgreSQL"] = float(now) - time.time()
    except (OSError, SQLAlchemyError) as exc:
        report.add("FAIL", f"database {shown}: cannot connect: {_brief(exc)}", DATABASE_FIX)
        return
    finally:
        await engine.dispose()
    report.add("OK", f"database {shown}: connected")
    report.findings.append(_migrations(current, *migrations))
    await _provider_secrets(settings, report)


SECRETS_DOC = "see docs/byok.md"


async def _provider_secrets(settings: Settings, report: _Report) -> None:
    """Whether every stored provider secret (BYOK) is readable with RELAYGATE_SECRET_KEY."""
    from sqlalchemy.exc import SQLAlchemyError

    from relaygate.store.engine import create_engine
    from relaygate.vault.crypto import SecretBox
    from relaygate.vault.store import VaultStore

    try:
        box = SecretBox.from_setting(settings.secret_key)
    except ConfigError as exc:
        report.add("FAIL", f"provider secrets: {exc}", SECRETS_DOC)
        return
    engine = create_engine(settings.database_url)
    try:
        counts = await VaultStore(engine).fingerprints()
    except SQLAlchemyError:
        return  # no vault table yet: the migration warning above says what to do
    finally:
        await engine.dispose()
    stored = sum(counts.values())
    if box is None:
        if stored:
            report.add(
                "FAIL",
                f"provider secrets: {stored} stored, and RELAYGATE_SECRET_KEY is not set "
                "(the gateway refuses to start)",
                f"set RELAYGATE_SECRET_KEY to the key they were stored with; {SECRETS_DOC}",
            )
        else:
            report.add("OK", "provider secrets: none stored; no secret key set (users cannot "
                       "store provider keys until RELAYGATE_SECRET_KEY is set)")  # fmt: skip
        return
    unreadable = sum(n for fp, n in counts.items() if not box.readable(fp))
    older = sum(n for fp, n in counts.items() if box.readable(fp) and fp != box.newest)
    if unreadable:
        report.add(
            "FAIL",
            f"provider secrets: {unreadable} of {stored} are under a key RELAYGATE_SECRET_KEY "
            "does not list (the gateway refuses to start)",
            "add that key back after the newest, then run 'relaygate secrets rotate'",
        )
    elif older:
        report.add(
            "WARN",
            f"provider secrets: {older} of {stored} are still under an older key",
            "run 'relaygate secrets rotate', then drop the old key from RELAYGATE_SECRET_KEY",
        )
    else:
        report.add("OK", f"provider secrets: {stored} stored, all under the newest key")


def _sqlite_exists(url: str) -> bool:
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return not database or database == ":memory:" or Path(database).exists()


def _current_revision(connection: object) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()  # type: ignore[arg-type]


def _migrations(current: str | None, head: str | None, known: set[str]) -> Finding:
    upgrade = "run 'relaygate db upgrade' with the same configuration ('serve' also does at start)"
    if current == head:
        return Finding("OK", f"migrations: at head ({head})")
    if current is None:
        return Finding("WARN", "migrations: the database has no relaygate schema yet", upgrade)
    if current not in known:
        return Finding(
            "FAIL",
            f"migrations: the database is at {current}, which this relaygate does not know "
            "(a newer relaygate migrated it)",
            "upgrade relaygate to the version that migrated this database",
        )
    return Finding("WARN", f"migrations: at {current}, head is {head}", upgrade)


# redis


async def _redis(settings: Settings, seconds: float, report: _Report) -> None:
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    assert settings.redis_url
    shown = f"redis {mask_url(settings.redis_url)}"
    client = Redis.from_url(
        settings.redis_url, socket_connect_timeout=seconds, socket_timeout=seconds
    )
    try:
        await client.ping()  # connects
        latency = float("inf")
        for _ in range(3):  # the best of three round trips: the network, not the scheduler
            started = time.perf_counter()
            await client.ping()
            latency = min(latency, time.perf_counter() - started)
        seconds, micros = await client.time()
    except (RedisError, OSError) as exc:
        fix = "start Redis or correct redis_url (workers share limits and the cache through it)"
        report.add("FAIL", f"{shown}: {_brief(exc)}", fix)
        return
    finally:
        await client.aclose()
    report.clocks["Redis"] = seconds + micros / 1e6 - time.time()
    ms = latency * 1000
    if latency > REDIS_SLOW:
        fix = "run Redis close to the gateway (same host or network); limits wait for it"
        report.add("WARN", f"{shown}: PING took {ms:.0f} ms", fix)
    else:
        report.add("OK", f"{shown}: PING {ms:.1f} ms")


# upstreams


@dataclass(slots=True)
class _Upstream:
    """One upstream (provider, base URL, key) and the models configured on it."""

    provider: str
    base_url: str
    api_key: str | None
    wanted: dict[str, str] = field(default_factory=dict)  # upstream model -> where configured
    discovered: bool = False  # an Ollama server whose models are added at start
    required: bool = True  # False for the implicit local Ollama discovery
    node: str | None = None  # a pool's node: "node NAME of pool POOL"
    place: str | None = None  # where it is configured, when not a deployment

    @property
    def title(self) -> str:
        kind = "Ollama server" if self.discovered else f"upstream {self.provider}"
        return f"{self.node or kind} {mask_url(self.base_url)}"

    @property
    def where(self) -> str:
        if self.place is not None:
            return self.place
        return next(iter(self.wanted.values()), "discover_ollama") + (
            ".base_url" if self.wanted else ""
        )

    async def check(self, session: aiohttp.ClientSession, report: _Report) -> None:
        path, headers = _probe(self.provider, self.api_key)
        try:
            async with session.get(self.base_url.rstrip("/") + path, headers=headers) as reply:
                body = await reply.read()
                status, date = reply.status, reply.headers.get("Date")
            if self.provider == "gemini" and status == 400 and b"API_KEY_INVALID" in body:
                status = 401  # Google answers a key it does not know with a 400
        except (aiohttp.ClientError, OSError) as exc:
            self._unreachable(exc, report)
            return
        if date and (sent := _http_date(date)) is not None:
            report.clocks[self.title] = sent - time.time()
        self._verdict(status, body, report)

    def _unreachable(self, exc: BaseException, report: _Report) -> None:
        if not self.required:
            report.add("OK", f"{self.title}: not running (optional: used only when it answers)")
            return
        fix = f"start the server or correct {self.where}"
        report.add("FAIL", f"{self.title}: unreachable: {_brief(exc)}", fix)

    def _verdict(self, status: int, body: bytes, report: _Report) -> None:
        if status in (401, 403):
            where = next(iter(self.wanted.values()), "the deployment")
            fix = f"set the right key in {where}.api_key (or its ${{VAR}})"
            shown = "no key was sent" if not self.api_key else "the key was refused"
            report.add("FAIL", f"{self.title}: credentials refused ({status}, {shown})", fix)
            return
        if status != 200:
            fix = f"check that {self.where} is the API's base URL (e.g. ending in /v1)"
            report.add("WARN", f"{self.title}: listing models answered {status}", fix)
            return
        try:
            served = _model_names(self.provider, msgspec.json.decode(body))
        except (msgspec.DecodeError, AttributeError, TypeError):
            fix = f"check that {self.where} points at a {self.provider} API"
            report.add("WARN", f"{self.title}: the model list is not one it understands", fix)
            return
        self._models(served, report)

    def _models(self, served: set[str], report: _Report) -> None:
        missing = [m for m in self.wanted if _canonical(self.provider, m) not in served]
        for model in missing:
            pull = f"'ollama pull {model}' there, or " if self.provider == "ollama" else ""
            fix = f"{pull}correct {self.wanted[model]}.model to a model it serves"
            report.add("FAIL", f"{self.title}: model {model!r} is not served there", fix)
        if not missing:
            count = len(self.wanted) if self.wanted else len(served)
            report.add("OK", f"{self.title}: reachable, {count} models present")


def _probe(provider: str, api_key: str | None) -> tuple[str, dict[str, str]]:
    """The model listing's path on an upstream, and the headers that carry its key."""
    if provider == "ollama":
        return "/api/tags", {}
    if provider == "gemini":  # the key in its header, never in the URL
        return "/models?pageSize=1000", {"x-goog-api-key": api_key} if api_key else {}
    if provider == "anthropic":
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        return "/v1/models?limit=1000", headers | ({"x-api-key": api_key} if api_key else {})
    path = "/api/models" if provider == "openwebui" else "/models"
    return path, {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _upstreams(settings: Settings) -> list[_Upstream]:
    found: dict[tuple[str, str, str | None], _Upstream] = {}
    for i, model in enumerate(settings.models):
        for j, dep in enumerate(model.deployments):
            if dep.provider == "mock" or not dep.base_url:
                continue
            key = (dep.provider, dep.base_url.rstrip("/"), dep.api_key)
            upstream = found.setdefault(key, _Upstream(*key))
            where = f"models[{i}].deployments[{j}]"
            upstream.wanted.setdefault(_upstream_model(dep, model.name), where)
    for name, pool in settings.pools.items():
        for k, node in enumerate(pool.nodes):
            if node.base_url is None:  # dials out: no address to check from here
                continue
            key = (pool.provider, node.base_url.rstrip("/"), node.api_key)
            found.setdefault(
                key,
                _Upstream(*key, node=f"node {node.name} of pool {name}",
                          place=f"pools.{name}.nodes[{k}].base_url"),
            )  # fmt: skip
    explicit = settings.discover_ollama is not None
    for url in settings.ollama_discovery_urls:
        key = ("ollama", url.rstrip("/"), None)
        found.setdefault(key, _Upstream(*key, discovered=True, required=explicit))
    return list(found.values())


def _upstream_model(dep: DeploymentConfig, name: str) -> str:
    model = dep.model or name
    return model.removeprefix("models/") if dep.provider == "gemini" else model


def _canonical(provider: str, name: str) -> str:
    """The name as the provider lists it (Ollama's carry a tag, ``latest`` by default)."""
    return ollama_tagged(name) if provider == "ollama" else name


def _model_names(provider: str, body: object) -> set[str]:
    if not isinstance(body, dict):
        raise TypeError("not an object")
    if provider == "ollama":
        entries = body.get("models", [])
        names = {str(m.get(k)) for m in entries for k in ("name", "model") if m.get(k)}
        return {_canonical("ollama", n) for n in names}
    if provider == "gemini":
        entries = body.get("models", [])
        return {str(m["name"]).removeprefix("models/") for m in entries if "name" in m}
    return {str(m["id"]) for m in body.get("data", []) if isinstance(m, dict) and "id" in m}


def _http_date(value: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


# clock


def _clock_findings(clocks: dict[str, float]) -> list[Finding]:
    if not clocks:
        return []
    off = {source: skew for source, skew in clocks.items() if abs(skew) > CLOCK_SKEW_WARN}
    fix = (
        "synchronise the clocks (NTP: 'timedatectl set-ntp true'); limits, usage times "
        "and JWT expiry depend on them"
    )
    findings = [
        Finding(
            "WARN",
            f"clock: this machine is {abs(skew):.0f} s {'behind' if skew > 0 else 'ahead of'} "
            f"{source}",
            fix,
        )
        for source, skew in sorted(off.items())
    ]
    if not findings:
        sources = ", ".join(sorted(clocks))
        findings.append(Finding("OK", f"clock: within {CLOCK_SKEW_WARN:g} s of {sources}"))
    return findings


# usage outbox


async def _outbox(settings: Settings, report: _Report) -> None:
    finding = await asyncio.to_thread(_outbox_finding, Path(settings.usage.outbox_dir))
    report.findings.append(finding)


def _outbox_finding(directory: Path) -> Finding:
    """Whether usage records can be written under ``directory``, and the room left there."""
    what = f"usage outbox {directory}"
    fix = f"make {directory} a folder the gateway's user can write, or set usage.outbox_dir"
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return Finding("FAIL", f"{what}: cannot be created ({existing} is not a folder)", fix)
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".relaygate-doctor-"):
            pass
    except OSError as exc:
        return Finding("FAIL", f"{what}: {existing} is not writable ({exc.strerror})", fix)
    free = shutil.disk_usage(existing).free
    room = f"{free / 1024**3:.1f} GiB free"
    if free < OUTBOX_FAIL_BYTES:
        return Finding("FAIL", f"{what}: only {room}", "free disk space there")
    if free < OUTBOX_WARN_BYTES:
        return Finding("WARN", f"{what}: only {room}", "free disk space there")
    made = "" if existing == directory else " (created at start)"
    return Finding("OK", f"{what}: writable{made}, {room}")


# output


_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")


def mask_urls(text: str) -> str:
    """Hide the user and password of every URL in ``text`` (errors may quote URLs)."""
    return _USERINFO.sub(r"\g<scheme>****@", text)


def mask_url(url: str) -> str:
    """The URL without its user and password."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = "****@" + (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _brief(exc: BaseException) -> str:
    """An exception in one short line: its type and first line."""
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
