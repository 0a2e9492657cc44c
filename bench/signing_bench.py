"""What signing costs `runbook backup`, and what its primitives cost (run by hand, not a test).

    .venv/bin/python bench/signing_bench.py [--scales 1,50] [--repeat 9] [--base-ref REF] [--no-s3]

Builds one database per size (pgbench at each scale) in a throwaway PostgreSQL 15 cluster, starts moto's S3
server on 127.0.0.1, and times `runbook backup` (local + S3) of each, alternating, with this checkout (every
manifest and record signed; the size check and retention verify the signatures of the backups already there)
and with REF, the commit before signing (default: the parent of the commit that added
steps/repository/signing.py), checked out apart with `git worktree add --detach` and run by this venv's
interpreter from there. Each side has its own repositories, with retention's default keep_last 7, so the
catalogue holds earlier backups to read, as in production; one backup each first, not counted. Prints min and
median per side and the overhead of the median. Then the primitives: importing `cryptography`'s Ed25519 in a
fresh interpreter (against a bare one), one signature, one verification, loading a private key.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from backup_bench import ROLE, source_cluster  # noqa: E402

from tests.support.pgcluster import PG_BIN  # noqa: E402
from tests.support.signing import make_keys, signing_yaml  # noqa: E402

PY = sys.executable


def base_ref() -> str:
    added = subprocess.run(["git", "log", "--format=%H", "--diff-filter=A", "-1", "--", "steps/repository/signing.py"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    if not added:
        raise SystemExit("steps/repository/signing.py is not committed yet: pass --base-ref")
    return f"{added}^"


def timed_backup(cfg: Path, src: Path, env: dict[str, str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run([PY, "-m", "runbook", "backup", "-c", str(cfg)], cwd=src, env=env, capture_output=True,
                          text=True)
    secs = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"backup with {src} failed ({proc.returncode}):\n{proc.stderr}")
    return secs


def primitives(work: Path) -> None:
    def fresh(code: str, n: int = 7) -> float:
        runs = []
        for _ in range(n):
            t0 = time.perf_counter()
            subprocess.run([PY, "-S", "-c", code] if code == "pass" else [PY, "-c", code], check=True)
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs)

    bare = fresh("pass")
    site = fresh("import sys")
    imp = fresh("from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey")
    both = fresh("from steps.repository.signing import load_private_key, Trust; "
                 "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey")
    from steps.repository.signing import Trust, load_private_key, load_public_keys

    key, pub = make_keys(work, "primitives")
    n = 2000
    t0 = time.perf_counter()
    for _ in range(50):
        signer = load_private_key(key)
    load = (time.perf_counter() - t0) / 50
    data = os.urandom(4096)
    t0 = time.perf_counter()
    for i in range(n):
        sig = signer.signature(f"k/{i}", data)
    sign = (time.perf_counter() - t0) / n
    trust = Trust.of(load_public_keys([pub]))
    t0 = time.perf_counter()
    for _ in range(n):
        assert trust.verify(f"k/{n - 1}", data, sig).genuine
    verify = (time.perf_counter() - t0) / n
    print(f"interpreter start: bare (-S) {bare * 1e3:.1f} ms, with site {site * 1e3:.1f} ms; importing "
          f"cryptography's Ed25519: +{(imp - site) * 1e3:.1f} ms (steps.repository.signing with it: "
          f"+{(both - site) * 1e3:.1f} ms)")
    print(f"load a private key {load * 1e6:.0f} us; sign a 4 KiB object (sha256 + Ed25519 + JSON) {sign * 1e6:.0f} us;"
          f" verify {verify * 1e6:.0f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="1,50", help="pgbench scales, one database each (1 is ~22 MB, 50 ~750 MB)")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--base-ref", help="the commit to compare with (default: the one before signing)")
    ap.add_argument("--no-s3", action="store_true", help="local repository only")
    args = ap.parse_args()
    ref = args.base_ref or base_ref()

    tmp = Path(tempfile.mkdtemp(prefix="runbook-signing-bench-src-"))
    before = tmp / "src"
    subprocess.run(["git", "worktree", "add", "--detach", str(before), ref], cwd=ROOT, check=True, capture_output=True)
    base, work, _tpl, c = source_cluster("runbook-signing-bench-")
    server = None
    try:
        primitives(work)
        env = {**os.environ, **c.env}
        s3_url = None
        if not args.no_s3:
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            s3_url = f"http://{host}:{port}"
            env.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                        "AWS_DEFAULT_REGION": "us-east-1"})
            import boto3

            boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="bench",
                         aws_secret_access_key="bench").create_bucket(Bucket="bench")
        c.psql(f"create role {ROLE} login in role pg_read_all_data")
        rows = []
        for scale in [int(s) for s in args.scales.split(",")]:
            db = f"bench_s{scale}"
            c.psql(f"create database {db}")
            subprocess.run([str(PG_BIN / "pgbench"), "-i", "-q", "-s", str(scale), db], env=env, check=True,
                           capture_output=True)
            size = c.psql(f"select pg_size_pretty(pg_database_size('{db}'))")
            cfgs = {}
            for side, src in (("before", before), ("signed", ROOT)):
                d = work / f"{db}-{side}"
                d.mkdir()
                s3 = f"s3: {{bucket: bench, prefix: {db}-{side}, endpoint_url: '{s3_url}'}}\n" if s3_url else ""
                cfgs[side] = (d / "repo.yaml", src)
                (d / "repo.yaml").write_text(
                    f"version: 1\ncluster: {{host: {c.socket_dir}, port: {c.port}, user: {ROLE}, databases: [{db}]}}\n"
                    f"local: {{path: {d / 'repo'}}}\n{s3}backup: {{state_dir: {d / 'state'}}}\n"
                    + (signing_yaml(work) if side == "signed" else ""))
                timed_backup(cfgs[side][0], src, env)  # the repository starts with a backup to read
            times: dict[str, list[float]] = {"before": [], "signed": []}
            for r in range(args.repeat):
                order = ("before", "signed") if r % 2 == 0 else ("signed", "before")
                for side in order:
                    times[side].append(timed_backup(*cfgs[side], env))
                print(f"{db} ({size}) repeat {r + 1}: " + ", ".join(f"{s} {times[s][-1]:.2f} s" for s in order),
                      flush=True)
            b, s = statistics.median(times["before"]), statistics.median(times["signed"])
            rows.append((db, size, min(times["before"]), b, min(times["signed"]), s, 100 * (s / b - 1)))
        print(f"\n`runbook backup` (local{' + S3' if s3_url else ''}), {args.repeat} runs each, alternating; "
              f"before = {ref}")
        print(f"{'database':12} {'size':>8} {'before min/med':>16} {'signed min/med':>16} {'median overhead':>22}")
        for db, size, bmin, bmed, smin, smed, pct in rows:
            print(f"{db:12} {size:>8} {bmin:7.2f} /{bmed:6.2f} s {smin:7.2f} /{smed:6.2f} s "
                  f"{pct:+8.1f} % ({(smed - bmed) * 1e3:+4.0f} ms)")
    finally:
        if server is not None:
            server.stop()
        c.stop()
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
