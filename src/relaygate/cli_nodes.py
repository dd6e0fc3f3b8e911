"""``relaygate node`` (run a node agent) and ``relaygate nodes token ...`` (its tokens).

Token commands work on the database directly, without a running gateway, in the
style of ``relaygate keys``: a token's secret is printed once, at creation;
revoking cuts the node off at once in every gateway (through Redis when
configured, else each gateway's database check within ``nodes.revocation_poll``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relaygate.cli_admin import database, run_with_database
from relaygate.errors import ConfigError
from relaygate.settings import Settings, load_settings
from relaygate.store.nodes import NodeToken, NodeTokenStore

__all__ = ["add_node_commands"]

Job = Callable[[NodeTokenStore, argparse.Namespace], Awaitable[list[str]]]
if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

AGENT_DESCRIPTION = """\
Run beside a model server (Ollama, or an OpenAI-compatible server such as vLLM,
llama.cpp or LM Studio) and serve it through a relaygate gateway. The agent
connects OUT to the gateway over one WebSocket, so this machine needs no open
port, no public address and no port forwarding. It registers the node (the
token's name, the server's models, loaded models and --capacity), sends
heartbeats, forwards the gateway's requests to --upstream and streams the
answers back. A lost connection is retried with exponential backoff and jitter.

Create the token on the gateway with: relaygate nodes token create NAME
"""
AGENT_EPILOG = """\
exit status: 3 when the gateway refuses the token (revoked or unknown) or another
agent took this node's name; 2 for a wrong command line.
example:
  relaygate node --gateway https://gw.example.com --token-file /etc/relaygate/node-token \\
      --upstream http://127.0.0.1:11434
See docs/nodes-dial-out.md for running it as a service (systemd, launchd, Windows).
"""


def add_node_commands(commands: Commands) -> None:
    """Add ``node`` and ``nodes`` to the ``relaygate`` parser."""
    _add_agent(commands)
    _add_tokens(commands)


def _add_agent(commands: Commands) -> None:
    node = commands.add_parser(
        "node",
        help="serve a local model server through a gateway (dials out; no open port needed)",
        description=AGENT_DESCRIPTION,
        epilog=AGENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    node.add_argument(
        "--gateway", required=True, metavar="URL",
        help="the gateway's base URL, e.g. https://gw.example.com (ws:// and wss:// work too)",
    )  # fmt: skip
    token = node.add_mutually_exclusive_group(required=True)
    token.add_argument(
        "--token", metavar="TOKEN",
        help="the node token (rgn_...); it is sent in a header, never in the URL. "
        "Prefer --token-file: a token on the command line shows in ps",
    )  # fmt: skip
    token.add_argument(
        "--token-file", metavar="FILE", type=Path, help="read the node token from this file"
    )
    node.add_argument(
        "--upstream", default="http://127.0.0.1:11434", metavar="URL",
        help="the local model server's base URL (default http://127.0.0.1:11434, Ollama; "
        "for an OpenAI-compatible server give its /v1 base, e.g. http://127.0.0.1:8000/v1)",
    )  # fmt: skip
    node.add_argument(
        "--name", metavar="NAME",
        help="this node's name; when given it must match the token's (a guard against a "
        "token copied to the wrong machine)",
    )  # fmt: skip
    node.add_argument(
        "--kind", choices=["auto", "ollama", "openai"], default="auto",
        help="the local server's API (default auto: Ollama if /api/tags answers)",
    )  # fmt: skip
    node.add_argument(
        "--capacity", type=_capacity, default=4, metavar="N",
        help="requests sent to the local server at once; more wait in order (default 4)",
    )  # fmt: skip
    node.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    node.set_defaults(handler=_run_agent)


def _capacity(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError("must be between 1 and 10000")
    return value


def _run_agent(args: argparse.Namespace) -> None:
    from relaygate.tunnel.agent import AgentConfig, NodeAgent

    if args.token_file is not None:
        try:
            secret = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"--token-file: cannot read {args.token_file}: {exc.strerror}"
            ) from None
    else:
        secret = args.token.strip()
    if not secret:
        raise ConfigError("the node token is empty")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = AgentConfig(
        gateway=args.gateway,
        token=secret,
        upstream=args.upstream,
        name=args.name,
        kind=args.kind,
        capacity=args.capacity,
    )
    try:
        agent = NodeAgent(config)
    except ValueError as exc:
        raise ConfigError(f"--gateway: {exc}") from None
    try:
        code = _run_loop(agent.run())
    except KeyboardInterrupt:
        code = 0
    raise SystemExit(code)


def _run_loop(job: Coroutine[Any, Any, int]) -> int:
    """On uvloop where it exists (as the gateway runs), else asyncio's loop (Windows)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(job)
    return uvloop.run(job)


def _add_tokens(commands: Commands) -> None:
    nodes = commands.add_parser("nodes", help="manage the tokens of nodes that dial out")
    sub = nodes.add_subparsers(title="nodes commands", metavar="COMMAND")
    nodes.set_defaults(handler=lambda _args: nodes.print_help())
    token = sub.add_parser("token", help="create, list and revoke node tokens")
    tokens = token.add_subparsers(title="token commands", metavar="COMMAND")
    token.set_defaults(handler=lambda _args: token.print_help())
    create = _command(tokens, "create", "create a node token and print it once", _create)
    create.add_argument("name", metavar="NAME", help="the node's name (letters, digits, . _ -)")
    create.add_argument("--quiet", action="store_true", help="print only the token")
    listing = _command(tokens, "list", "list node tokens (never their secrets)", _list)
    listing.add_argument("--all", action="store_true", help="include revoked tokens")
    revoke = _command(tokens, "revoke", "revoke a node token: its node is cut off at once", _revoke)
    revoke.add_argument("token_id", metavar="TOKEN_ID")


def _command(sub: Commands, name: str, text: str, job: Job) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=text, description=text)
    parser.add_argument("--config", metavar="FILE", help="YAML configuration file")
    parser.set_defaults(handler=lambda args: _run(args, job))
    return parser


def _run(args: argparse.Namespace, job: Job) -> None:
    settings = load_settings(args.config)
    run_with_database(settings, _with_store(settings, args, job))


async def _with_store(settings: Settings, args: argparse.Namespace, job: Job) -> None:
    async with database(settings) as engine:
        revoked = await job(NodeTokenStore(engine), args)
    if revoked and settings.redis_url:
        await _publish(settings, revoked)


async def _publish(settings: Settings, token_ids: list[str]) -> None:
    """Tell running gateways at once (best effort: they also check the database)."""
    import redis.asyncio as redis

    from relaygate.auth.invalidation import Events

    client = redis.from_url(settings.redis_url or "")
    try:
        events = Events(client, settings.redis_prefix, "nodes", lambda _t: None, _log())
        for token_id in token_ids:
            await events.publish_text(token_id)
    finally:
        await client.aclose()


def _log() -> logging.Logger:
    return logging.getLogger("relaygate")


async def _create(store: NodeTokenStore, args: argparse.Namespace) -> list[str]:
    record, secret = await store.create(args.name)
    if args.quiet:
        print(secret)
    else:
        print(
            f"Created node token {record.id} for node {record.name}.\n"
            "The token is shown only once; store it on the node now:\n\n"
            f"    {secret}\n\n"
            f"Then run there: relaygate node --gateway URL --token-file FILE "
            "--upstream http://127.0.0.1:11434"
        )
    return []


async def _list(store: NodeTokenStore, args: argparse.Namespace) -> list[str]:
    records = await store.list(include_revoked=args.all)
    rows = [("ID", "NODE", "PREFIX", "CREATED", "REVOKED")]
    rows += [_row(r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return []


def _row(record: NodeToken) -> tuple[str, str, str, str, str]:
    revoked = record.revoked_at.strftime("%Y-%m-%d %H:%M") if record.revoked_at else "-"
    created = record.created_at.strftime("%Y-%m-%d %H:%M")
    return (record.id, record.name, record.prefix + "...", created, revoked)


async def _revoke(store: NodeTokenStore, args: argparse.Namespace) -> list[str]:
    record = await store.revoke(args.token_id)
    print(f"Revoked node token {record.id} (node {record.name}); the node is cut off.")
    return [record.id]
