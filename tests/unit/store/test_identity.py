"""IdentityStore against real SQLite and PostgreSQL databases (the ``database_url`` fixture)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from relaygate.auth.keys import hash_secret
from relaygate.errors import Conflict, NotFound
from relaygate.store.engine import create_engine
from relaygate.store.identity import IdentityStore, utcnow
from relaygate.store.tables import api_keys

PREFIX = "rg_"


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[IdentityStore]:
    engine = create_engine(database_url)
    try:
        yield IdentityStore(engine)
    finally:
        await engine.dispose()


# tenants


async def test_tenant_create_get_list_update_delete(store: IdentityStore) -> None:
    acme = await store.create_tenant("acme", "pro")
    other = await store.create_tenant("other")
    assert acme.id.startswith("ten_") and acme.id != other.id

    got = await store.get_tenant(acme.id)
    assert (got.id, got.name, got.tier) == (acme.id, "acme", "pro")
    assert got.created_at.tzinfo is not None
    by_name = await store.tenant_by_name("acme")
    assert by_name is not None and by_name.id == acme.id
    assert await store.tenant_by_name("nobody") is None
    assert [t.name for t in await store.list_tenants()] == ["acme", "other"]

    renamed = await store.update_tenant(acme.id, {"name": "acme-2", "tier": None})
    assert (renamed.name, renamed.tier) == ("acme-2", None)
    assert (await store.get_tenant(acme.id)).name == "acme-2"

    await store.delete_tenant(other.id)
    with pytest.raises(NotFound):
        await store.get_tenant(other.id)
    assert [t.name for t in await store.list_tenants()] == ["acme-2"]


async def test_tenant_name_conflict_is_409(store: IdentityStore) -> None:
    first = await store.create_tenant("acme")
    second = await store.create_tenant("beta")
    with pytest.raises(Conflict) as created:
        await store.create_tenant("acme")
    assert created.value.status == 409 and created.value.param == "name"
    with pytest.raises(Conflict) as renamed:
        await store.update_tenant(second.id, {"name": "acme"})
    assert renamed.value.status == 409
    assert (await store.get_tenant(first.id)).name == "acme"
    assert (await store.get_tenant(second.id)).name == "beta"


async def test_unknown_tenant_is_404(store: IdentityStore) -> None:
    for call in (
        store.get_tenant("ten_missing"),
        store.update_tenant("ten_missing", {"tier": "pro"}),
        store.delete_tenant("ten_missing"),
        store.create_key("ten_missing", prefix=PREFIX),
    ):
        with pytest.raises(NotFound) as caught:
            await call
        assert caught.value.status == 404


async def test_tenant_with_live_keys_cannot_be_deleted(store: IdentityStore) -> None:
    tenant = await store.create_tenant("acme")
    record, _ = await store.create_key(tenant.id, prefix=PREFIX)
    with pytest.raises(Conflict):
        await store.delete_tenant(tenant.id)
    await store.revoke_key(record.id)
    await store.delete_tenant(tenant.id)
    with pytest.raises(NotFound):
        await store.get_key(record.id)


# keys


async def test_create_key_returns_record_and_secret_once(store: IdentityStore) -> None:
    tenant = await store.create_tenant("acme", "pro")
    expires = utcnow() + timedelta(days=30)
    record, secret = await store.create_key(
        tenant.id,
        prefix=PREFIX,
        role="admin",
        tier="enterprise",
        name="ci",
        description="for the CI",
        limits={"requests_per_minute": 5},
        expires_at=expires,
        metadata={"team": "infra", "n": [1, 2]},
    )
    assert secret.startswith(PREFIX) and len(secret) > 40
    assert record.id.startswith("key_")
    assert secret.startswith(record.prefix) and record.prefix != secret
    assert (record.tenant_id, record.tenant_name, record.tenant_tier) == (tenant.id, "acme", "pro")
    assert (record.role, record.tier, record.name, record.description) == (
        "admin", "enterprise", "ci", "for the CI",
    )  # fmt: skip
    assert record.limits == {"requests_per_minute": 5}
    assert record.metadata == {"team": "infra", "n": [1, 2]}
    assert record.enabled and record.revoked_at is None and record.last_used_at is None
    assert record.expires_at is not None
    assert abs((record.expires_at - expires).total_seconds()) < 1
    assert record.usable(utcnow())

    again = await store.get_key(record.id)
    assert again == record


async def test_find_by_hash(store: IdentityStore) -> None:
    tenant = await store.create_tenant("acme")
    record, secret = await store.create_key(tenant.id, prefix=PREFIX)
    found = await store.find_by_hash(hash_secret(secret))
    assert found is not None and found.id == record.id
    assert await store.find_by_hash(hash_secret(secret + "x")) is None
    assert await store.find_by_hash(hash_secret("rg_unknown")) is None


async def test_given_secret_is_stored_only_as_hash(store: IdentityStore) -> None:
    tenant = await store.create_tenant("acme")
    secret = "rg_given-secret-0123456789abcdefghijklmnop"
    record, returned = await store.create_key(tenant.id, prefix=PREFIX, secret=secret)
    assert returned == secret
    async with store.engine.connect() as conn:
        row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == record.id))).one()
    assert row.key_hash == hash_secret(secret)
    assert secret not in [str(v) for v in row]
    with pytest.raises(Conflict):
        await store.create_key(tenant.id, prefix=PREFIX, secret=secret)


async def test_get_unknown_key_is_404(store: IdentityStore) -> None:
    for call in (
        store.get_key("key_missing"),
        store.update_key("key_missing", {"enabled": False}),
        store.revoke_key("key_missing"),
        store.rotate_key("key_missing", PREFIX),
    ):
        with pytest.raises(NotFound):
            await call


async def test_list_keys_by_tenant_and_revoked(store: IdentityStore) -> None:
    acme = await store.create_tenant("acme")
    beta = await store.create_tenant("beta")
    a1, _ = await store.create_key(acme.id, prefix=PREFIX, name="a1")
    a2, _ = await store.create_key(acme.id, prefix=PREFIX, name="a2")
    b1, _ = await store.create_key(beta.id, prefix=PREFIX, name="b1")
    await store.revoke_key(a2.id)

    assert {k.id for k in await store.list_keys()} == {a1.id, b1.id}
    assert {k.id for k in await store.list_keys(include_revoked=True)} == {a1.id, a2.id, b1.id}
    assert [k.id for k in await store.list_keys(acme.id)] == [a1.id]
    assert {k.id for k in await store.list_keys(acme.id, include_revoked=True)} == {a1.id, a2.id}
    assert await store.list_keys("ten_missing") == []
    assert await store.count_keys() == 3


async def test_update_key_changes_only_editable_fields(store: IdentityStore) -> None:
    tenant = await store.create_tenant("acme")
    record, secret = await store.create_key(tenant.id, prefix=PREFIX, name="old")
    expires = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    updated = await store.update_key(
        record.id,
        {
            "name": "new", "description": "d", "role": "admin", "tier": "pro",
            "limits": {"requests_per_hour": 7}, "enabled": False, "expires_at": expires,
            "metadata": {"k": "v"},
            "key_hash": "0" * 64, "tenant_id": "ten_other", "id": "key_other",
        },
    )  # fmt: skip
    assert (updated.id, updated.tenant_id) == (record.id, tenant.id)
    assert (updated.name, updated.description, updated.role, updated.tier) == (
        "new", "d", "admin", "pro",
    )  # fmt: skip
    assert updated.limits == {"requests_per_hour": 7}
    assert updated.metadata == {"k": "v"}
    assert updated.expires_at == expires
    assert not updated.enabled
    assert updated.updated_at >= record.updated_at
    found = await store.find_by_hash(hash_secret(secret))  # the hash was not editable
    assert found is not None and found.id == record.id

    cleared = await store.update_key(record.id, {"limits": None, "expires_at": None})
    assert cleared.limits is None and cleared.expires_at is None


async def test_revoke_key(store: IdentityStore) -> None:
    tenant = await store.create_tenant("acme")
    record, secret = await store.create_key(tenant.id, prefix=PREFIX)
    revoked = await store.revoke_key(record.id)
    assert revoked.revoked_at is not None and not revoked.enabled
    assert revoked.public()["revoked"] is True
    assert not revoked.usable(utcnow())
    found = await store.find_by_hash(hash_secret(secret))
    assert found is not None and not found.usable(utcnow())
    with pytest.raises(NotFound):  # a revoked key cannot be given a new secret
        await store.rotate_key(record.id, PREFIX)


async def test_rotate_key_replaces_the_secret(store: IdentityStore) -> None:
    tenant = await store.create_tenant("acme")
    record, old = await store.create_key(tenant.id, prefix=PREFIX, name="svc")
    rotated, new = await store.rotate_key(record.id, PREFIX)
    assert new != old and new.startswith(PREFIX)
    assert rotated.id == record.id and rotated.name == "svc"
    assert new.startswith(rotated.prefix)
    assert await store.find_by_hash(hash_secret(old)) is None
    found = await store.find_by_hash(hash_secret(new))
    assert found is not None and found.id == record.id


async def test_expired_disabled_revoked_are_not_usable(store: IdentityStore) -> None:
    tenant = await store.create_tenant("acme")
    now = utcnow()
    live, _ = await store.create_key(tenant.id, prefix=PREFIX, expires_at=now + timedelta(hours=1))
    expired, _ = await store.create_key(
        tenant.id, prefix=PREFIX, expires_at=now - timedelta(seconds=1)
    )
    disabled, _ = await store.create_key(tenant.id, prefix=PREFIX)
    disabled = await store.update_key(disabled.id, {"enabled": False})
    revoked, _ = await store.create_key(tenant.id, prefix=PREFIX)
    revoked = await store.revoke_key(revoked.id)

    assert live.usable(now)
    assert not live.usable(now + timedelta(hours=2))
    for record in (expired, disabled, revoked):
        assert not (await store.get_key(record.id)).usable(now), record
    re_enabled = await store.update_key(disabled.id, {"enabled": True})
    assert re_enabled.usable(now)


async def test_changed_since_picks_up_updates(store: IdentityStore) -> None:
    tenant = await store.create_tenant("acme")
    a, _ = await store.create_key(tenant.id, prefix=PREFIX)
    b, _ = await store.create_key(tenant.id, prefix=PREFIX)
    c, _ = await store.create_key(tenant.id, prefix=PREFIX)

    changed = await store.changed_since(utcnow() - timedelta(minutes=1))
    assert set(changed) == {a.id, b.id, c.id}
    since = max(changed.values())
    assert await store.changed_since(since) == {}

    await store.update_key(a.id, {"enabled": False})
    await store.revoke_key(b.id)
    changed = await store.changed_since(since)
    assert set(changed) == {a.id, b.id}
    later = max(changed.values())
    assert later > since

    await store.rotate_key(c.id, PREFIX)
    changed = await store.changed_since(later)
    assert list(changed) == [c.id] and changed[c.id] > later


async def test_tenant_change_marks_its_keys_changed(store: IdentityStore) -> None:
    acme = await store.create_tenant("acme")
    beta = await store.create_tenant("beta")
    a, _ = await store.create_key(acme.id, prefix=PREFIX)
    await store.create_key(beta.id, prefix=PREFIX)
    since = max((await store.changed_since(utcnow() - timedelta(minutes=1))).values())
    await store.update_tenant(acme.id, {"tier": "enterprise"})
    assert list(await store.changed_since(since)) == [a.id]
    assert (await store.get_key(a.id)).tenant_tier == "enterprise"


async def test_record_last_used_in_one_batch(store: IdentityStore) -> None:
    tenant = await store.create_tenant("acme")
    a, _ = await store.create_key(tenant.id, prefix=PREFIX)
    b, _ = await store.create_key(tenant.id, prefix=PREFIX)
    c, _ = await store.create_key(tenant.id, prefix=PREFIX)
    at_a = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
    at_b = datetime(2030, 5, 6, 7, 9, 0, tzinfo=UTC)
    await store.record_last_used({})
    await store.record_last_used({a.id: at_a, b.id: at_b})
    assert (await store.get_key(a.id)).last_used_at == at_a
    assert (await store.get_key(b.id)).last_used_at == at_b
    assert (await store.get_key(c.id)).last_used_at is None
    await store.record_last_used({a.id: at_b, "key_gone": at_b})  # unknown ids are ignored
    assert (await store.get_key(a.id)).last_used_at == at_b


async def test_unicode_names_round_trip(store: IdentityStore) -> None:
    name = "Société Générale — 東京 🚀"
    tenant = await store.create_tenant(name)
    assert (await store.get_tenant(tenant.id)).name == name
    found = await store.tenant_by_name(name)
    assert found is not None and found.id == tenant.id
    record, _ = await store.create_key(
        tenant.id, prefix=PREFIX, name="ключ", description="説明 ✓", metadata={"ü": "ß"}
    )
    got = await store.get_key(record.id)
    assert (got.tenant_name, got.name, got.description) == (name, "ключ", "説明 ✓")
    assert got.metadata == {"ü": "ß"}


async def test_sql_looking_values_are_stored_verbatim(store: IdentityStore) -> None:
    evil = "x'); DROP TABLE api_keys; --"
    tenant = await store.create_tenant(evil)
    record, secret = await store.create_key(
        tenant.id, prefix=PREFIX, name=evil, description="' OR '1'='1", metadata={evil: evil}
    )
    got = await store.get_key(record.id)
    assert (got.tenant_name, got.name, got.description) == (evil, evil, "' OR '1'='1")
    assert got.metadata == {evil: evil}
    assert await store.tenant_by_name("' OR '1'='1") is None
    with pytest.raises(NotFound):
        await store.get_key("' OR '1'='1")
    assert await store.count_keys() == 1
    assert await store.find_by_hash(hash_secret(secret)) is not None


async def test_public_never_contains_hash_or_secret(store: IdentityStore) -> None:
    tenant = await store.create_tenant("acme")
    record, secret = await store.create_key(tenant.id, prefix=PREFIX, metadata={"a": 1})
    rotated, new_secret = await store.rotate_key(record.id, PREFIX)
    for rec, sec in ((record, secret), (rotated, new_secret)):
        public = rec.public()
        text = repr(public)
        assert "key_hash" not in public
        assert hash_secret(sec) not in text and sec not in text
        assert set(public) == {
            "id", "tenant_id", "prefix", "name", "description", "role", "tier", "limits",
            "enabled", "expires_at", "last_used_at", "metadata", "created_at", "revoked", "cache",
            "user",
        }  # fmt: skip
    assert tenant.public() == {
        "id": tenant.id, "name": "acme", "tier": None, "created_at": tenant.created_at.isoformat(),
    }  # fmt: skip
