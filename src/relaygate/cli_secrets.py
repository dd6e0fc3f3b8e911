"""``relaygate secrets``: the master key of users' stored provider keys (BYOK).

* ``secrets new-key`` prints a fresh key for ``RELAYGATE_SECRET_KEY``.
* ``secrets rotate`` re-encrypts every stored provider key under the newest key of
  ``RELAYGATE_SECRET_KEY`` (the first listed), while gateways keep serving: each row
  is replaced in one statement, and a gateway holding both keys reads either form.
  Afterwards the old key can be dropped from the variable.
"""

from __future__ import annotations

import argparse
import asyncio

from relaygate.errors import ConfigError
from relaygate.settings import Settings, load_settings

__all__ = ["add_secrets_commands"]


def add_secrets_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    secrets = commands.add_parser(
        "secrets", help="the master key of users' stored provider keys (BYOK)"
    )
    sub = secrets.add_subparsers(title="secrets commands", metavar="COMMAND")
    secrets.set_defaults(handler=lambda _args: secrets.print_help())
    new = sub.add_parser(
        "new-key",
        help="print a fresh key for RELAYGATE_SECRET_KEY",
        description="Print a fresh Fernet key. Put it first in RELAYGATE_SECRET_KEY "
        "(comma-separated, newest first), then run 'relaygate secrets rotate'.",
    )
    new.set_defaults(handler=_new_key)
    rotate = sub.add_parser(
        "rotate",
        help="re-encrypt every stored provider key under the newest key",
        description="Re-encrypt every stored provider key under the first key of "
        "RELAYGATE_SECRET_KEY. Safe while gateways serve; afterwards drop the old keys.",
    )
    rotate.add_argument("--config", metavar="FILE", help="YAML configuration file")
    rotate.set_defaults(handler=_rotate)


def _new_key(args: argparse.Namespace) -> None:
    from relaygate.vault.crypto import new_key

    print(new_key())


def _rotate(args: argparse.Namespace) -> None:
    settings = load_settings(args.config)
    rotated, stored, newest = asyncio.run(rotate_secrets(settings))
    print(
        f"Re-encrypted {rotated} provider key(s); all {stored} stored are now under the "
        f"newest key (fingerprint {newest}). Keys after the first in RELAYGATE_SECRET_KEY "
        "can be dropped once every gateway has restarted with the new key first."
    )


async def rotate_secrets(settings: Settings) -> tuple[int, int, str]:
    """(rotated, stored, newest key's fingerprint); a ConfigError when it cannot be done."""
    from relaygate.store.engine import create_engine
    from relaygate.vault.crypto import SecretBox
    from relaygate.vault.store import VaultStore

    box = SecretBox.from_setting(settings.secret_key)
    if box is None:
        raise ConfigError(
            "secret_key: RELAYGATE_SECRET_KEY is not set; set it to the new key followed by "
            "the old one(s), comma-separated"
        )
    engine = create_engine(settings.database_url)
    try:
        store = VaultStore(engine)
        counts = await store.fingerprints()
        unreadable = sum(n for fp, n in counts.items() if not box.readable(fp))
        if unreadable:
            raise ConfigError(
                f"secret_key: {unreadable} stored provider key(s) are under a key "
                "RELAYGATE_SECRET_KEY does not list; add it after the newest and run again"
            )
        try:
            rotated = await store.rotate(box)
        except ValueError as exc:
            raise ConfigError(f"secret_key: {exc}") from None
        stored = sum((await store.fingerprints()).values())
    finally:
        await engine.dispose()
    return rotated, stored, box.newest
