"""`runbook keys`: the signing keys (steps.repository.signing) and the encryption keys (steps.crypto).
`keys create --out PATH` makes a signing key pair (the private key 0600 at PATH, its public line at PATH.pub),
`--age` an age identity instead (PATH 0600, its recipient at PATH.pub); `keys list` shows the key this host signs
with, the public keys it trusts, the age recipients and identities it is configured with and which epochs of each
repository it opens; `keys rotate` adds an age recipient to every epoch, `keys revoke` removes one.

Importing this module stays cheap: the handlers import the signing machinery (and `cryptography`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from runbook.cli.options import add_allow_unsigned, add_config
from runbook.errors import Exit


def register(sub: Any) -> None:
    k = sub.add_parser("keys", help="signing and encryption keys: create, list, rotate and revoke")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION",
                            help="create, list, rotate or revoke")
    c = ksub.add_parser("create", help="a new Ed25519 signing key pair (or with --age an age identity): the private "
                        "key (0600) at --out, its public key at --out.pub")
    c.add_argument("--out", required=True, metavar="PATH",
                   help="the private key file to write (never over an existing file; keep it outside the repository)")
    c.add_argument("--age", action="store_true",
                   help="an age identity (encryption.identity_files) and its recipient (encryption.recipients) "
                        "instead of a signing key; `age-keygen -o PATH` makes the same kind of file")
    c.add_argument("--comment", metavar="TEXT", help="the public key's comment (default: user@host, date, key id)")
    c.set_defaults(func=cmd_create)
    ls = ksub.add_parser("list", help="the keys this host signs with and trusts, its age recipients and identities, "
                         "and which encryption epochs of each repository it opens")
    add_config(ls)
    add_allow_unsigned(ls)
    ls.add_argument("--no-epochs", action="store_true", help="do not open the repositories to list their epochs")
    ls.set_defaults(func=cmd_list)
    r = ksub.add_parser("rotate", help="add an age recipient to every encryption epoch this host opens (re-wraps "
                        "the small key objects; no data is rewritten)")
    add_config(r)
    r.add_argument("--add", action="append", required=True, metavar="RECIPIENT|FILE",
                   help="an age public key (age1...) or a file of them; repeatable")
    add_allow_unsigned(r)
    r.set_defaults(func=cmd_rotate)
    v = ksub.add_parser("revoke", help="remove an age recipient from every encryption epoch (re-wraps without it, "
                        "deletes the older wraps)")
    add_config(v)
    v.add_argument("recipient", metavar="RECIPIENT", help="the age public key (age1...) to remove")
    v.add_argument("--yes", action="store_true", help="do not ask for typed confirmation")
    add_allow_unsigned(v)
    v.set_defaults(func=cmd_revoke)


def cmd_create(args: argparse.Namespace) -> int:
    from steps.repository.signing import create_key_files

    out = Path(args.out).expanduser().absolute()
    if args.age:
        return _create_age(out, args.comment)
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


def _create_age(out: Path, comment: str | None) -> int:
    from steps.crypto.keys import create_identity_file

    ident, pub = create_identity_file(out, comment)
    print(f"age identity: {out} (mode 0600: the private key; only on hosts that restore or verify, outside the "
          "repository, and kept apart from it: without it, nothing encrypted to it can be read)")
    print(f"recipient:    {ident.recipient}  (also in {pub})")
    print("on every host that writes (backup, database):")
    print(f"  encryption: {{recipients: [{ident.recipient}]}}")
    print("on the hosts that restore or verify:")
    print(f"  encryption: {{identity_files: [{out}]}}")
    print(f"by hand: age -d -i {out} FILE.age (docs/encryption.md); `age-keygen -o PATH` makes an equivalent file")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from steps.repository.config import load_repository_config

    cfg, path = load_repository_config(args.config)
    code = _list_signing(cfg, path)
    if cfg.encryption is not None or any(getattr(getattr(cfg, n), "encrypt", None) for n in ("local", "s3")):
        code = max(code, _list_encryption(cfg, args))
    return code


def _list_signing(cfg: Any, path: Path) -> int:
    from steps.repository.signing import keys_report

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


def _list_encryption(cfg: Any, args: argparse.Namespace) -> int:
    from steps.crypto.keys import encryption_report

    rep = encryption_report(cfg, allow_unsigned=args.allow_unsigned, epochs=not args.no_epochs)
    code = 0
    where = ", ".join(f"{name} {'encrypted' if on else 'NOT encrypted'}" for name, on in rep.encrypts.items())
    print(f"encryption ({where}):")
    if rep.recipients_error:
        print(f"  encrypts for ? {rep.recipients_error}")
        code = Exit.CANNOT_RUN
    elif not rep.recipients:
        print("  encrypts for nobody (no encryption.recipients: what this host writes goes unencrypted)")
    for r in rep.recipients:
        print(f"  encrypts for {r}")
    if rep.identities_error:
        print(f"  identity     ? {rep.identities_error}")
        code = Exit.CANNOT_RUN
    elif not rep.identities:
        print("  identity     none (no encryption.identity_files: this host writes, it cannot read what is "
              "encrypted)")
    for i in rep.identities:
        print(f"  identity     {i.recipient}  {i.source}")
    mine = {i.recipient for i in rep.identities}
    for se in rep.stores:
        if se.error:
            print(f"  {se.store}: ? {se.error}")
            code = max(code, Exit.WARNING)
            continue
        print(f"  {se.store}: {len(se.epochs)} epoch(s)")
        bad = sorted(se.revoked & set(rep.recipients))
        if bad:
            print(f"    WARNING: encryption.recipients holds {', '.join(bad)}, revoked in this repository's journal: "
                  "a new epoch would be wrapped to it again; drop it from the config")
            code = max(code, Exit.WARNING)
        for info in se.epochs:
            why = se.opens.get(info.epoch)
            status = "opens here" if why is None else "cannot open here"
            print(f"    epoch {info.epoch}  {status}")
            if info.problem:
                print(f"      refused: {info.problem}")
                code = max(code, Exit.WARNING)
                continue
            print(f"      wrapped for {', '.join(info.recipients) or 'nobody'}; created {info.created_at} on "
                  f"{info.host}; {len(info.wraps)} wrap(s)")
            if why is not None and mine:
                print(f"      why: {why}")
    return code


def _stores_and_ring(args: argparse.Namespace) -> tuple[Any, list[Any], Any, Any, list[str]]:
    """The config, its stores, this host's key ring, its signer and its configured recipients, for rotate and
    revoke. A signer is required unless --allow-unsigned: the new wraps' sidecars are checked by every reader."""
    from runbook.errors import UsageError
    from steps.crypto.epochs import recipients_from_config, ring_from_config
    from steps.repository.config import load_repository_config
    from steps.repository.configured import open_stores
    from steps.repository.signing import signer_from_config

    cfg, _ = load_repository_config(args.config)
    ring = ring_from_config(cfg, allow_unsigned=args.allow_unsigned)
    if not ring.identities:
        raise UsageError("this host has no age identity (encryption.identity_files): it cannot open the epochs to "
                         "re-wrap them", hint="run this on a host that restores, or add an identity file that one "
                         "of the current recipients belongs to")
    signer = signer_from_config(cfg, required=not args.allow_unsigned)
    configured = recipients_from_config(cfg) if cfg.encryption and cfg.encryption.recipients else []
    return cfg, open_stores(cfg), ring, signer, configured


def _print_record(store: Any, rec: Any, verb: str) -> int:
    print(f"{store.describe()}: {len(rec.epochs)} epoch(s) {verb}" + (f" ({rec.key})" if rec.epochs else ""))
    for e in rec.epochs:
        print(f"  {e}")
    for e, recipients in rec.dropped.items():
        print(f"  {e}: not carried over (named only by an unsigned sidecar, not in this host's "
              f"encryption.recipients): {', '.join(recipients)}")
    for e, why in rec.skipped.items():
        print(f"  WARNING: {e} not {verb}: {why}")
    return Exit.WARNING if rec.skipped else Exit.OK


def cmd_rotate(args: argparse.Namespace) -> int:
    from steps.crypto.epochs import rotate
    from steps.crypto.errors import EncryptionError
    from steps.repository.store import RepositoryError

    _, stores, ring, signer, configured = _stores_and_ring(args)
    code = 0
    for store in stores:
        try:
            rec = rotate(store, ring, args.add, signer, configured=configured)
        except EncryptionError:
            raise
        except RepositoryError as e:
            print(f"runbook: keys rotate: {store.describe()}: {e}", file=sys.stderr)
            code = max(code, Exit.WARNING)
            continue
        code = max(code, _print_record(store, rec, "re-wrapped"))
    print("new epochs are wrapped to encryption.recipients of each writing host: add the recipient there too, or "
          "data written from now on stays unreadable to it until the next rotation")
    return code


def cmd_revoke(args: argparse.Namespace) -> int:
    from runbook.errors import UsageError
    from steps.crypto.age import parse_recipient
    from steps.crypto.epochs import revoke
    from steps.crypto.errors import EncryptionError
    from steps.repository.store import RepositoryError

    try:
        gone = parse_recipient(args.recipient)
    except ValueError as e:
        raise UsageError(f"keys revoke: {e}") from None
    _, stores, ring, signer, configured = _stores_and_ring(args)
    if not args.yes:
        tail = gone[-8:]
        given = input(f"Revoking {gone} re-wraps every epoch without it and deletes the older wraps. Type its last "
                      f"8 characters ({tail}) to go on: ").strip() if sys.stdin.isatty() else None
        if given != tail:
            raise UsageError("keys revoke needs typed confirmation: type the recipient's last 8 characters at the "
                             "prompt, or pass --yes")
    code = 0
    done = False
    for store in stores:
        try:
            rec = revoke(store, ring, gone, signer, configured=[r for r in configured if r != gone])
        except EncryptionError:
            raise
        except RepositoryError as e:
            print(f"runbook: keys revoke: {store.describe()}: {e}", file=sys.stderr)
            code = max(code, Exit.WARNING)
            continue
        code = max(code, _print_record(store, rec, "re-wrapped without it"))
        done = done or bool(rec.epochs) or not rec.skipped
    if gone in configured:
        print(f"WARNING: this host's encryption.recipients still holds {gone}: drop it")
        code = max(code, Exit.WARNING)
    if not done:
        return code
    print("Every writing host (backup, database) must drop it from encryption.recipients: the next write there then "
          "starts a new epoch without it. Until then their current epoch goes on, no longer wrapped for it.")
    print("The limit: whoever holds the revoked key and already unwrapped an epoch's data key can still read that "
          "epoch's data, as before; only epochs created after the writers dropped the key are out of its reach "
          "(docs/encryption.md, Revocation).")
    return code
