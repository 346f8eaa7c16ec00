"""`talkingface tenant create|list|delete|purge|webhook-secret` and `talkingface key
create|list|revoke|limits`.

They work on the broker's Redis directly (TALKINGFACE_REDIS_URL), like the broker itself; see
talkingface.broker.keys for what is stored. `key create` prints the new key once: it cannot be
shown again. Exit 0 on success, 2 for bad usage or a refused request (the error's code and
message on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

EXIT_USAGE = 2


def _store(command: str):
    import redis

    from talkingface.broker.keys import KeyStore
    from talkingface.broker.service import redis_client
    from talkingface.config import ConfigError, Settings

    try:
        client = redis_client(Settings.from_env())
        client.ping()
    except ConfigError as exc:
        print(f"talkingface {command}: {exc}", file=sys.stderr)
        return None
    except redis.RedisError as exc:
        print(f"talkingface {command}: cannot reach Redis: {exc}", file=sys.stderr)
        return None
    return KeyStore(client)


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def cmd_tenant(args: argparse.Namespace) -> int:
    from talkingface.errors import TalkingFaceError

    store = _store("tenant")
    if store is None:
        return EXIT_USAGE
    try:
        if args.action == "create":
            store.create_tenant(args.name)
            result: Any = {"tenant": args.name, "created": True}
            text = f"tenant {args.name} created"
        elif args.action == "webhook-secret":
            from talkingface.broker.webhooks import tenant_secret

            secret = tenant_secret(store.redis, args.tenant, rotate=args.rotate)
            result = {"tenant": args.tenant, "webhook_secret": secret, "rotated": args.rotate}
            text = (f"webhook secret of tenant {args.tenant}"
                    f"{' (rotated: the old one no longer verifies)' if args.rotate else ''}:"
                    f"\n{secret}")  # fmt: skip
        elif args.action == "delete":
            deleted = store.delete_tenant(args.name)
            result = {"tenant": args.name, "deleted": True, "keys_deleted": deleted}
            text = f"tenant {args.name} deleted ({deleted} API keys deleted)"
        else:
            result = store.list_tenants()
            lines = [f"{'TENANT':30s} {'KEYS':>5s}  CREATED"]
            lines += [f"{t['tenant']:30s} {t['keys']:5d}  {_when(t['created_at'])}" for t in result]
            text = "\n".join(lines)
    except TalkingFaceError as exc:
        print(f"talkingface tenant {args.action}: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(result, sort_keys=True) if args.json else text)
    return 0


def cmd_tenant_purge(args: argparse.Namespace) -> int:
    """`tenant purge --tenant T [--yes]`: without --yes a dry run (counts, exit 2)."""
    from talkingface.broker.purge import TenantPurge
    from talkingface.broker.queue import WorkQueue
    from talkingface.broker.service import QUEUES
    from talkingface.config import Settings
    from talkingface.errors import TalkingFaceError
    from talkingface.storage import StoreError, store_from_settings

    keys = _store("tenant purge")
    if keys is None:
        return EXIT_USAGE
    try:
        settings = Settings.from_env()
        queues = [WorkQueue.from_settings(keys.redis, name, settings) for name in QUEUES]
        purge = TenantPurge(keys.redis, store_from_settings(settings), queues)
        counts = purge.purge(args.tenant, dry_run=not args.yes)
    except TalkingFaceError as exc:
        print(f"talkingface tenant purge: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        print(f"talkingface tenant purge: the object store failed: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = {"tenant": args.tenant, "purged": bool(args.yes), **counts}
    what = (f"{counts['jobs']} jobs, {counts['avatars']} avatars, {counts['api_keys']} API keys: "
            f"{counts['redis_keys']} Redis keys and {counts['objects']} objects")  # fmt: skip
    if args.yes:
        text = f"tenant {args.tenant} purged ({what} deleted)"
    else:
        text = f"tenant {args.tenant} holds {what}; nothing deleted: rerun with --yes to delete"
    print(json.dumps(result, sort_keys=True) if args.json else text)
    return 0 if args.yes else EXIT_USAGE


def cmd_key(args: argparse.Namespace) -> int:
    from talkingface.errors import TalkingFaceError

    store = _store("key")
    if store is None:
        return EXIT_USAGE
    try:
        if args.action == "create":
            if args.expires_days is not None and args.expires_days <= 0:
                raise TalkingFaceError("INVALID_REQUEST", "--expires-days must be more than 0")
            expires = None if args.expires_days is None else args.expires_days * 86400.0
            key, info = store.create_key(args.tenant, args.scopes, expires_in_s=expires,
                                         name=args.name or "", limits=_rates(args))  # fmt: skip
            result: Any = {**info.as_dict(), "key": key}
            text = "\n".join([
                f"API key {info.key_id} for tenant {info.tenant} (scopes "
                f"{','.join(info.scopes)}, expires {_when(info.expires_at)}):",
                key,
                "It is shown only now: store it (clients read TALKINGFACE_API_KEY).",
            ])  # fmt: skip
        elif args.action == "limits":
            if not _rates(args) and not args.clear:
                raise TalkingFaceError("INVALID_REQUEST", "name a limit to set or --clear")
            info = store.set_key_limits(args.key_id, _rates(args), clear=args.clear)
            result = info.as_dict()
            own = ", ".join(f"{k} = {v}" for k, v in info.limits) or "the defaults"
            text = f"API key {info.key_id} of tenant {info.tenant}: {own}"
        elif args.action == "revoke":
            info = store.revoke_key(args.key_id)
            result = info.as_dict()
            text = f"API key {info.key_id} of tenant {info.tenant} revoked"
        else:
            keys = store.list_keys(args.tenant)
            result = [k.as_dict() for k in keys]
            lines = [f"{'KEY ID':16s}  {'TENANT':20s} {'SCOPES':20s} {'STATUS':8s} "
                     f"{'EXPIRES':20s} NAME"]  # fmt: skip
            lines += [f"{k.key_id:16s}  {k.tenant:20s} {','.join(k.scopes):20s} "
                      f"{k.status():8s} {_when(k.expires_at):20s} {k.name}"
                      for k in keys]  # fmt: skip
            text = "\n".join(lines)
    except TalkingFaceError as exc:
        print(f"talkingface key {args.action}: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(result, sort_keys=True) if args.json else text)
    return 0


def add_tenant(sub: argparse._SubParsersAction) -> None:
    tenant = sub.add_parser("tenant", help="create, list or delete tenants (broker Redis)")
    actions = tenant.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="register a tenant")
    create.add_argument("name", help="tenant name ([A-Za-z0-9][A-Za-z0-9._-]{0,127})")
    actions.add_parser("list", help="every tenant with its number of keys")
    purge = actions.add_parser(
        "purge", help="delete every Redis key and stored object of a tenant (counts first)"
    )
    purge.add_argument("--tenant", required=True, help="tenant name")
    purge.add_argument("--yes", action="store_true",
                       help="really delete; without it only count what would go")  # fmt: skip
    purge.set_defaults(func=cmd_tenant_purge)
    delete = actions.add_parser("delete", help="unregister a tenant and delete its API keys")
    delete.add_argument("name", help="tenant name")
    webhook = actions.add_parser(
        "webhook-secret", help="the tenant's webhook signing secret (made on first use)"
    )
    webhook.add_argument("--tenant", required=True, help="tenant name")
    webhook.add_argument(
        "--rotate",
        action="store_true",
        help="replace it: deliveries from now on are signed with the new one",
    )
    for parser in actions.choices.values():
        parser.add_argument("--json", action="store_true", help="JSON on one line")
    tenant.set_defaults(func=cmd_tenant)


def _rate_flags(parser: argparse.ArgumentParser) -> None:
    """The key's own rates; unset flags leave the key on the TALKINGFACE_RATE_KEY_* defaults."""
    parser.add_argument(
        "--submit-per-second",
        type=float,
        metavar="R",
        help="SubmitRender + CreateAvatar calls per second (0 = no key limit)",
    )
    parser.add_argument("--submit-burst", type=int, metavar="N", help="submit bucket size")
    parser.add_argument(
        "--upload-per-second",
        type=float,
        metavar="R",
        help="Upload calls per second (0 = no key limit)",
    )
    parser.add_argument("--upload-burst", type=int, metavar="N",
                        help="upload bucket size")  # fmt: skip


def _rates(args: argparse.Namespace) -> dict[str, float]:
    names = ("submit_per_second", "submit_burst", "upload_per_second", "upload_burst")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def add_key(sub: argparse._SubParsersAction) -> None:
    key = sub.add_parser("key", help="create, list or revoke API keys (broker Redis)")
    actions = key.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="a new API key, printed once")
    create.add_argument("--tenant", required=True, help="the key's tenant (must exist)")
    create.add_argument("--scopes", required=True,
                        help="comma-separated: render, avatars, admin")  # fmt: skip
    create.add_argument("--expires-days", type=float, help="lifetime in days (default: none)")
    create.add_argument("--name", help="a label for `key list`")
    _rate_flags(create)
    listing = actions.add_parser("list", help="keys (ids, scopes, status; never secrets)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    revoke = actions.add_parser("revoke", help="revoke a key (it stays listed)")
    revoke.add_argument("key_id", help="the key's id (or the whole key)")
    limits = actions.add_parser(
        "limits", help="set or clear a key's own rate limits (within its tenant's)"
    )
    limits.add_argument("key_id", help="the key's id (or the whole key)")
    _rate_flags(limits)
    limits.add_argument("--clear", nargs="+", default=[], metavar="LIMIT",
                        help="back to the TALKINGFACE_RATE_KEY_* default: submit_per_second, "
                             "submit_burst, upload_per_second, upload_burst")  # fmt: skip
    for parser in actions.choices.values():
        parser.add_argument("--json", action="store_true", help="JSON on one line")
    key.set_defaults(func=cmd_key)
