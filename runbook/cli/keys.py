"""`runbook keys`: the signing keys (steps.repository.signing). `keys create --out PATH` makes a key pair
(the private key 0600 at PATH, its public line at PATH.pub); `keys list` shows the key this host signs with
and the public keys it trusts, each with its id.

Importing this module stays cheap: the handlers import the signing machinery (and `cryptography`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from runbook.cli.options import add_config
from runbook.errors import Exit


def register(sub: Any) -> None:
    k = sub.add_parser("keys", help="signing keys: create a key pair, list the keys this host signs with and trusts")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION", help="create or list")
    c = ksub.add_parser("create", help="a new Ed25519 key pair: the private key (0600) at --out, its public "
                        "key at --out.pub")
    c.add_argument("--out", required=True, metavar="PATH",
                   help="the private key file to write (never over an existing file; keep it outside the repository)")
    c.add_argument("--comment", metavar="TEXT", help="the public key's comment (default: user@host, date, key id)")
    c.set_defaults(func=cmd_create)
    ls = ksub.add_parser("list", help="the key this host signs with and the public keys it trusts, with their ids")
    add_config(ls)
    ls.set_defaults(func=cmd_list)


def cmd_create(args: argparse.Namespace) -> int:
    from steps.repository.signing import create_key_files

    out = Path(args.out).expanduser().absolute()
    signer, pub, line = create_key_files(out, args.comment)
    print(f"key id {signer.key_id}")
    print(f"private key: {out} (mode 0600: only this host's backup user may read it; keep it outside the "
          "repository and back it up apart from the repository)")
    print(f"public key:  {pub}")
    print(f"  {line}")
    print("in the repository config of this (backup) host:")
    print(f"  signing: {{private_key: {out}, public_keys: [{pub}]}}")
    print(f"and on every host that reads the repository (recovery, verify, status): {pub} in signing.public_keys")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from steps.repository.config import load_repository_config
    from steps.repository.signing import keys_report

    cfg, path = load_repository_config(args.config)
    rep = keys_report(cfg)
    code = 0
    print(f"keys of {path}:")
    if rep.signer is not None:
        trusted = "" if rep.signer_trusted else "  WARNING: not among the public keys below: its backups are " \
            "refused on this host"
        print(f"  signs with   {rep.signer.key_id}  {rep.signer.path}{trusted}")
        code = 0 if rep.signer_trusted else 1
    elif rep.signer_error:
        print(f"  signs with   ? {rep.signer_path}: {rep.signer_error}")
    else:
        print("  signs with   nothing (no signing.private_key: this host cannot write backups, and its run "
              "summaries and verification records go unsigned)")
    if rep.trusted_error:
        print(f"runbook: keys: {rep.trusted_error}", file=sys.stderr)
        return Exit.CANNOT_RUN
    if not rep.trusted:
        print("  trusts       nothing (no signing.public_keys: every backup is refused unless --allow-unsigned)")
        return max(code, 1)
    wal = _wal_key_line(cfg, {k.key_id for k in rep.trusted})
    if wal is not None:
        print(wal[0])
        code = max(code, wal[1])
    for k in rep.trusted:
        mark = "  (signs here)" if rep.signer is not None and k.key_id == rep.signer.key_id else ""
        print(f"  trusts       {k.key_id}  {k.source}" + (f"  {k.comment}" if k.comment else "") + mark)
    return code


def _wal_key_line(cfg: Any, trusted: set[str]) -> tuple[str, int] | None:
    """The WAL sealing key (signing.wal_private_key), told by its public half beside it (`KEY.pub`): the key
    itself is the server's user's, not this one's to open."""
    from pathlib import Path

    from steps.repository.signing import SigningError, parse_public_line

    path = cfg.signing.wal_private_key if cfg.signing else None
    if path is None:
        return None
    pub = Path(str(path) + ".pub")
    try:
        line = next(ln for ln in pub.read_text().splitlines() if ln.strip() and not ln.startswith("#"))
        kid = parse_public_line(line.strip(), str(pub)).key_id
    except (OSError, StopIteration, SigningError) as e:
        return f"  seals WAL    ? {path} (its public half {pub} cannot be read: {e})", 1
    if kid not in trusted:
        return (f"  seals WAL    {kid}  {path}  WARNING: not among the public keys below: recoveries on this host "
                "refuse the WAL it seals"), 1
    return f"  seals WAL    {kid}  {path}", 0
