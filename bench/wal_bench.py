"""WAL archiving and replay, ours against `cp`, side by side in one run (by hand, not a test).

    .venv/bin/python bench/wal_bench.py [--segments 24] [--replay-segments 40] [--load-s 30] [--repeat 2]

Run as root (servers and commands run as `postgres`, from a venv that user can run, built like the tests'
server venv), with moto's S3 server on 127.0.0.1 in this process. 16 MB segments throughout.

1. compression of real pgbench segments: zstd -1 (ours), gzip -1, lz4 (if installed): ms a segment, ratio;
2. per-segment `wal-push` latency and sustained throughput, one process per segment as PostgreSQL runs it:
   `cp` + `sync` (the floor), ours to the local repository, to S3, to both; and the asynchronous mode
   (the client's latency while the uploader works ahead of `archive_status/*.ready`); "sealed": the same
   with `signing.wal_private_key`, the sealer signing WAL ledgers beside it (what WAL signing costs);
3. the archive lag under pgbench load (time from a segment's `.ready` to its `.done`), for `cp` + `sync`,
   ours synchronous (local + S3) and ours asynchronous (local + S3);
4. the replay of the same WAL (~40 segments after a pg_basebackup) with `restore_command` = `cp` (as it runs,
   and with every file read into the page cache first), ours from the local repository, ours from S3 (both
   with read-ahead), ours without read-ahead, and ours from S3 encrypted with age (read-ahead; issue 17).
   Before each timed recovery every process an earlier one started is stopped (a read-ahead, pgBackRest's
   asynchronous archive-get) and the page cache is synced: no run pays for the one before it.
The peers run beside ours when installed: pgBackRest (local repository, lz4, sync and async; its S3 client
speaks TLS only, moto serves HTTP) in parts 2 and 4, and barman-cloud (`barman-cloud-wal-archive` with no
compression, `barman-cloud-wal-restore`, S3 over HTTP with --endpoint-url) in parts 2 and 4.
"-enc" push methods: the same to S3 encrypted (age, `encryption.recipients`).
Each figure is min and median of the repeats; ratios are against `cp` in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.pgcluster import PG_BIN, as_server_user, chown_server_user  # noqa: E402
from tests.support.s3server import ACCESS_KEY, SECRET_KEY, start_tls_s3  # noqa: E402,F401 (compare.py uses it)
from tests.support.server_venv import build_server_venv  # noqa: E402

SEG = 16 * 1024 * 1024


def sh(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def as_pg(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(as_server_user(cmd), capture_output=True, text=True, **kw)


class Server:
    def __init__(self, base: Path, name: str) -> None:
        self.dir = base / name
        self.dir.mkdir()
        chown_server_user(self.dir)
        self.data = self.dir / "data"

    def initdb(self) -> None:
        as_pg([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"],
              check=True)

    def conf(self, **settings: str) -> None:
        with open(self.data / "postgresql.auto.conf", "a") as f:
            f.write("".join(f"{k} = '{v}'\n" for k, v in settings.items()))

    def start(self) -> None:
        opts = (f"-c listen_addresses='' -c unix_socket_directories='{self.dir}' -c max_wal_size=4GB "
                "-c synchronous_commit=off")  # pgbench at full speed: WAL as fast as this machine makes it
        as_pg([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-o", opts, "-w",
               "-t", "120", "start"], check=True)

    def stop(self) -> None:
        as_pg([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def psql(self, sql: str) -> str:
        return sh([str(PG_BIN / "psql"), "-h", str(self.dir), "-U", "postgres", "-XAtq", "-c", sql, "postgres"]).stdout.strip()

    def pgbench(self, *args: str) -> str:
        return sh([str(PG_BIN / "pgbench"), "-h", str(self.dir), "-U", "postgres", *args, "postgres"]).stdout


def stats(xs: list[float]) -> tuple[float, float]:
    return (min(xs), statistics.median(xs)) if xs else (float("nan"), float("nan"))


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    sys.stdout.flush()


# --- setup --------------------------------------------------------------------------------------------


def start_s3() -> tuple[Any, str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    import boto3

    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                 aws_secret_access_key=SECRET_KEY).create_bucket(Bucket="bench")
    return server, url


def write_configs(base: Path, url: str, spool: Path, tls_url: str | None = None) -> dict[str, Path]:
    creds = base / "aws-credentials"
    creds.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n")
    os.chmod(creds, 0o600)
    shutil.chown(creds, "postgres", "postgres")
    s3 = {"bucket": "bench", "prefix": "", "endpoint_url": url, "region": "us-east-1", "credentials_file": str(creds)}
    out: dict[str, Path] = {}

    # The database host's WAL key (signing.wal_private_key): the sealer signs WAL ledgers with it.
    from steps.repository.signing import create_key_files

    wal_key = base / "wal-key" / "wal.key"
    create_key_files(wal_key, "bench WAL key")
    chown_server_user(wal_key.parent)
    os.chmod(wal_key.parent, 0o755)
    sealed = {"wal_private_key": str(wal_key), "public_keys": [str(wal_key) + ".pub"]}

    # Encryption (issue 17): an age identity of the server's user (it runs restore_command), its recipient for the
    # writers; the "-enc" configs encrypt what they write to S3 (s3.encrypt: the default once recipients are set).
    keys = base / "age-keys"
    keys.mkdir()
    identity = keys / "restore.agekey"
    sh(["age-keygen", "-o", str(identity)])
    recipient = sh(["age-keygen", "-y", str(identity)]).stdout.strip()
    os.chmod(identity, 0o600)
    chown_server_user(keys)
    os.chmod(keys, 0o755)
    encryption = {"recipients": [recipient], "identity_files": [str(identity)]}

    def cfg(name: str, local: bool, with_s3: bool, wal: dict[str, Any], signing: dict[str, Any] | None = None,
            encrypted: bool = False) -> None:
        repo = base / f"repo-{name}"
        repo.mkdir()
        chown_server_user(repo)
        lines = ["version: 1"]
        if local:
            lines.append("local: " + json.dumps({"path": str(repo)}))
        if with_s3:
            lines.append("s3: " + json.dumps({**s3, "prefix": name}))
        lines.append("wal: " + json.dumps({"spool_dir": str(spool / name), **wal}))
        if signing:
            lines.append("signing: " + json.dumps(signing))
        if encrypted:
            lines.append("encryption: " + json.dumps(encryption))
        p = base / f"{name}.yaml"
        p.write_text("\n".join(lines) + "\n")
        os.chmod(p, 0o644)
        out[name] = p

    cfg("local", True, False, {})
    cfg("s3", False, True, {})
    cfg("both", True, True, {})
    cfg("local-async", True, False, {"async": True, "worker_idle_s": 5})
    for n in (1, 4, 8, 32):  # the uploader's read-ahead measured (wal.push_ahead; 16 by default)
        cfg(f"local-async-p{n}", True, False, {"async": True, "worker_idle_s": 5, "push_ahead": n})
    cfg("s3-async", False, True, {"async": True, "worker_idle_s": 5})
    cfg("both-async", True, True, {"async": True, "worker_idle_s": 5})
    cfg("noprefetch", True, True, {"prefetch": 0})
    if tls_url:  # the same S3 over HTTPS (start_tls_s3; the client needs AWS_CA_BUNDLE for its certificate)
        s3 = {**s3, "endpoint_url": tls_url}
        cfg("s3-async-tls", False, True, {"async": True, "worker_idle_s": 5})
        s3 = {**s3, "endpoint_url": url}
    cfg("local-sealed", True, False, {}, sealed)
    cfg("local-async-sealed", True, False, {"async": True, "worker_idle_s": 5}, sealed)
    cfg("s3-enc", False, True, {}, encrypted=True)
    cfg("s3-async-enc", False, True, {"async": True, "worker_idle_s": 5}, encrypted=True)
    return out


# --- 1. compression -----------------------------------------------------------------------------------


def bench_compression(corpus: list[Path]) -> None:
    import zstandard

    codecs: list[tuple[str, Callable[[bytes], bytes], Callable[[bytes], bytes]]] = [
        ("zstd -1 (ours)", zstandard.ZstdCompressor(level=1).compress, zstandard.ZstdDecompressor().decompress),
        ("zstd -3", zstandard.ZstdCompressor(level=3).compress, zstandard.ZstdDecompressor().decompress),
        ("gzip -1", lambda d: zlib.compress(d, 1), zlib.decompress),
    ]
    try:
        import lz4.frame

        codecs.append(("lz4", lz4.frame.compress, lz4.frame.decompress))
    except ImportError:
        pass
    datas = [p.read_bytes() for p in corpus]
    rows = []
    for name, comp, decomp in codecs:
        ct, dt, sizes = [], [], []
        for d in datas:
            t = time.perf_counter()
            c = comp(d)
            ct.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            decomp(c)
            dt.append((time.perf_counter() - t) * 1000)
            sizes.append(len(c))
        ratio = sum(len(d) for d in datas) / sum(sizes)
        rows.append([name, f"{ratio:.2f}x", f"{sum(sizes) / len(sizes) / 1e6:.2f} MB", "{:.1f} / {:.1f}".format(*stats(ct)),
                     "{:.1f} / {:.1f}".format(*stats(dt))])
    table(f"Compression of {len(datas)} pgbench WAL segments (16 MB)", ["codec", "ratio", "size/segment",
          "compress ms (min / median)", "decompress ms (min / median)"], rows)


# --- 2. per-segment push ------------------------------------------------------------------------------


def fake_datadir(base: Path, name: str, src: Server, corpus: list[Path]) -> Path:
    """A directory that looks like the source's data directory: global/pg_control, pg_wal with .ready files."""
    d = base / name
    (d / "global").mkdir(parents=True)
    shutil.copy2(src.data / "global" / "pg_control", d / "global" / "pg_control")
    (d / "pg_wal" / "archive_status").mkdir(parents=True)
    for p in corpus:
        shutil.copy2(p, d / "pg_wal" / p.name)
        (d / "pg_wal" / "archive_status" / f"{p.name}.ready").touch()
    chown_server_user(d)
    return d


def push_series(cmd: Callable[[str, Path], list[str]], datadir: Path,
                corpus: list[Path]) -> tuple[list[float], float]:
    """PostgreSQL's archiver: one command per segment (its name, the data directory), oldest first,
    .ready -> .done after exit 0."""
    times = []
    t0 = time.perf_counter()
    for p in corpus:
        t = time.perf_counter()
        r = as_pg(cmd(p.name, datadir), cwd=datadir)
        times.append((time.perf_counter() - t) * 1000)
        if r.returncode != 0:
            raise SystemExit(f"push failed: {r.stderr}")
        st = datadir / "pg_wal" / "archive_status"
        os.replace(st / f"{p.name}.ready", st / f"{p.name}.done")
    return times, time.perf_counter() - t0


def measure_push(base: Path, src: Server, corpus: list[Path], runbook: str, cfgs: dict[str, Path], repeat: int,
                 only: list[str] | None = None, baseline: str | None = None,
                 url: str | None = None, tls: tuple[str, Path] | None = None,
                 ) -> tuple[dict[str, tuple[list[float], list[float]]], dict[str, list[float]]]:
    """Each method pushes the corpus, one process per segment, `repeat` times in a rotated order. Returns, by
    method, (ms of every call, segments a second of each series) and the ms of each series' first call.
    Methods: `cp` + `sync`, ours per config name (only: those named), pgBackRest local sync and async when
    installed, `barman-cloud-wal-archive` to S3 when installed and url (the S3 endpoint) is given; with tls
    (start_tls_s3's URL and certificate) pgBackRest async to S3 and ours asynchronous to S3, both over HTTPS."""
    cp_dir = base / "cp-archive"
    methods: dict[str, Callable[[str, Path], list[str]]] = {
        "cp + sync (floor)": lambda n, _d: ["sh", "-c", f"cp pg_wal/{n} {cp_dir}/{n}.tmp && sync {cp_dir}/{n}.tmp && "
                                        f"mv {cp_dir}/{n}.tmp {cp_dir}/{n}"],
    }
    for name in ("local", "local-sealed", "s3", "both", "local-async", "local-async-p1", "local-async-p4",
                 "local-async-p8", "local-async-p32",
                 "local-async-sealed", "s3-async",
                 "both-async", "s3-enc", "s3-async-enc"):
        methods[f"ours: {name}"] = lambda n, _d, c=cfgs[name]: [runbook, "wal-push", "-c", str(c), f"pg_wal/{n}"]
    pgbr_confs: dict[str, Path] = {}
    if PGBACKREST:  # lz4, local repository, synchronous and asynchronous
        for label, asynchronous in (("pgbackrest local", False), ("pgbackrest local-async", True)):
            conf = pgbr_config(base, label.replace(" ", "-"), src.data, src.dir, asynchronous)
            pgbr_confs[label] = conf
            methods[label] = lambda n, d, c=conf: pgbr(c, "archive-push", f"pg_wal/{n}", pg_data=d)
    if PGBACKREST and tls is not None:  # S3 over HTTPS: its only transport (ours too, in "ours: s3-async-tls")
        conf = pgbr_s3_config(base, "pgbackrest-s3-async", src.data, src.dir, True, tls[0], tls[1])
        pgbr_confs[PGBR_S3_ASYNC] = conf
        methods[PGBR_S3_ASYNC] = lambda n, d, c=conf: pgbr(c, "archive-push", f"pg_wal/{n}", pg_data=d)
    if tls is not None:
        methods["ours: s3-async-tls"] = lambda n, _d, c=cfgs["s3-async-tls"]: [
            "env", f"AWS_CA_BUNDLE={tls[1]}", runbook, "wal-push", "-c", str(c), f"pg_wal/{n}"]
    if BARMAN_PUSH and url:  # one Python process per segment, no compression, to S3 over HTTP
        methods[BARMAN_PUSH_LABEL] = lambda n, _d: barman(base, url, BARMAN_PUSH, f"pg_wal/{n}")
    if only:  # the floor and the peers always, and the methods named (e.g. local-async local-async-sealed)
        methods = {m: c for m, c in methods.items()
                   if m.startswith(("cp", "pgbackrest", "barman")) or m.split(": ", 1)[-1] in only
                   or (tls is not None and m == "ours: s3-async-tls")}
    if baseline:  # the same methods with another build of ours (--baseline-venv: before/after in one run)
        for m in [m for m in methods if m.startswith("ours: ")]:
            methods[m.replace("ours: ", "baseline: ")] = (
                lambda n, d, f=methods[m]: [baseline if a == runbook else a for a in f(n, d)])
    results: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in methods}
    firsts: dict[str, list[float]] = {m: [] for m in methods}
    for rep in range(repeat):
        order = list(methods.items())
        order = order[rep % len(order):] + order[:rep % len(order)]  # rotated: no method always runs first
        for m, cmd in order:
            d = fake_datadir(base, f"push-{rep}-{list(methods).index(m)}", src, corpus)
            if m.startswith("cp"):
                shutil.rmtree(cp_dir, ignore_errors=True)
                cp_dir.mkdir()
                chown_server_user(cp_dir)
            if m in pgbr_confs:
                pgbr_reset(pgbr_confs[m])
                made = as_pg(pgbr(pgbr_confs[m], "stanza-create"))
                if made.returncode != 0:
                    raise SystemExit(f"{m}: pgbackrest stanza-create failed: {made.stdout[-2000:]}{made.stderr[-2000:]}")
            times, total = push_series(cmd, d, corpus)
            firsts[m].append(times[0])
            results[m][0].extend(times)
            results[m][1].append(len(corpus) / total)
            _reset_repos(base)
    return results, firsts


def bench_push(base: Path, src: Server, corpus: list[Path], runbook: str, cfgs: dict[str, Path], repeat: int,
               only: list[str] | None = None, baseline: str | None = None, url: str | None = None) -> None:
    results, firsts = measure_push(base, src, corpus, runbook, cfgs, repeat, only, baseline, url)
    floor = stats(results["cp + sync (floor)"][0])[1]
    rows = []
    for m, (times, rates) in results.items():
        lo, med = stats(times)
        rest = sorted(t for i, t in enumerate(times) if i % len(corpus))  # all but the first of each series
        late = [t for i, t in enumerate(times) if i % len(corpus) >= len(corpus) // 2]  # the second half: warm
        rows.append([m, f"{lo:.0f}", f"{med:.0f}", f"{med / floor:.2f}x", f"{stats(rest)[1]:.0f}",
                     f"{stats(late)[1]:.0f}",
                     f"{min(firsts[m]):.0f} / {max(firsts[m]):.0f}",
                     f"{max(rates):.1f} seg/s ({max(rates) * 16:.0f} MB/s)"])
    table(f"wal-push, one process per 16 MB segment ({len(corpus)} segments x {repeat}, order rotated)",
          ["method", "min ms", "median ms", "median vs cp", "median ms after the first",
           "median ms, second half of a series",
           "first call of a series ms (min / max)", "sustained (best run)"], rows)


def _reset_repos(base: Path) -> None:
    for d in base.glob("repo-*"):
        for child in d.iterdir():
            shutil.rmtree(child, ignore_errors=True)
    _S3_RESET()


def _s3_reset_factory(url: str) -> Callable[[], None]:
    import boto3

    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY)

    def reset() -> None:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench"):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket="bench", Key=obj["Key"])

    return reset


_S3_RESET: Callable[[], None] = lambda: None  # noqa: E731


# --- pgBackRest beside ours (Debian's package; a local repository: its S3 client speaks TLS only) ---------

PGBACKREST = shutil.which("pgbackrest")


def pgbr_config(base: Path, name: str, pg_data: Path, socket_dir: Path, asynchronous: bool) -> Path:
    """A pgBackRest config of its own (repository, spool, logs, locks under base/pgbr-NAME), lz4 as in
    BENCHMARKS.md, its asynchronous archive-push/-get when `asynchronous` (4 processes, as our max_parallel)."""
    d = base / f"pgbr-{name}"
    for sub in ("repo", "spool", "log", "lock"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    conf = d / "pgbackrest.conf"
    conf.write_text("[global]\n"
                    f"repo1-path={d / 'repo'}\nspool-path={d / 'spool'}\nlog-path={d / 'log'}\n"
                    f"lock-path={d / 'lock'}\nlog-level-console=warn\nlog-level-file=info\n"
                    f"compress-type=lz4\nprocess-max=4\narchive-async={'y' if asynchronous else 'n'}\n"
                    f"[bench]\npg1-path={pg_data}\npg1-socket-path={socket_dir}\n")
    chown_server_user(d)
    return conf


def pgbr_s3_config(base: Path, name: str, pg_data: Path, socket_dir: Path, asynchronous: bool, tls_url: str,
                   cert: Path) -> Path:
    """pgbr_config with an S3 repository instead: the bench's bucket (folder pgbr-NAME) through the HTTPS
    listener (start_tls_s3), its certificate verified against cert (for the name localhost: pgBackRest checks
    DNS names only), path-style URIs as moto serves them."""
    conf = pgbr_config(base, name, pg_data, socket_dir, asynchronous)
    port = tls_url.rsplit(":", 1)[1]  # the listener is on 127.0.0.1: the name localhost (/etc/hosts)
    text = conf.read_text().replace(f"repo1-path={conf.parent / 'repo'}\n", (
        f"repo1-type=s3\nrepo1-path=/pgbr-{name}\nrepo1-s3-bucket=bench\nrepo1-s3-endpoint=localhost\n"
        f"repo1-storage-port={port}\nrepo1-s3-region=us-east-1\nrepo1-s3-uri-style=path\n"
        f"repo1-storage-ca-file={cert}\nrepo1-s3-key={ACCESS_KEY}\nrepo1-s3-key-secret={SECRET_KEY}\n"))
    conf.write_text(text)
    os.chmod(conf, 0o600)  # it holds the (bench's) key
    chown_server_user(conf.parent)
    return conf


def pgbr(conf: Path, *args: str, pg_data: Path | None = None) -> list[str]:
    extra = [f"--pg1-path={pg_data}"] if pg_data else []
    return [str(PGBACKREST), f"--config={conf}", "--stanza=bench", *extra, *args]


def pgbr_reset(conf: Path) -> None:
    """An empty repository and spool for the next series (the stanza is made again by the caller)."""
    for sub in ("repo", "spool"):
        shutil.rmtree(conf.parent / sub, ignore_errors=True)
        (conf.parent / sub).mkdir()
    chown_server_user(conf.parent)


# --- barman-cloud beside ours (Debian's barman-cli-cloud: boto3 in one Python process per call, S3 over HTTP) ---

PGBR_S3_ASYNC = "pgbackrest s3-async (TLS)"
BARMAN_PUSH = shutil.which("barman-cloud-wal-archive")
BARMAN_GET = shutil.which("barman-cloud-wal-restore")
BARMAN_PUSH_LABEL = "barman-cloud-wal-archive s3"
BARMAN_GET_LABEL = "barman-cloud-wal-restore, S3"


def barman(base: Path, url: str, tool: str, *args: str) -> list[str]:
    """A barman-cloud WAL command against the bench's S3 (bucket bench, folder barman, server name bench), with
    the credentials file write_configs made (no key on the command line)."""
    return ["env", f"AWS_SHARED_CREDENTIALS_FILE={base / 'aws-credentials'}", "AWS_DEFAULT_REGION=us-east-1",
            tool, "--endpoint-url", url, "s3://bench/barman", "bench", *args]


# --- 3. archive lag under load ------------------------------------------------------------------------


def watch_lag(pg_wal: Path, stop: threading.Event, out: dict[str, list[float]]) -> None:
    status = pg_wal / "archive_status"
    ready_at: dict[str, float] = {}
    done: dict[str, float] = {}
    while not stop.is_set():
        now = time.monotonic()
        try:
            names = os.listdir(status)
        except FileNotFoundError:
            names = []
        for n in names:
            base, _, kind = n.rpartition(".")
            if kind == "ready" and base not in ready_at:
                ready_at[base] = now
            elif kind == "done" and base in ready_at and base not in done:
                done[base] = now
        time.sleep(0.02)
    out["lags"] = [done[n] - ready_at[n] for n in done]
    out["pending"] = [time.monotonic() - ready_at[n] for n in ready_at if n not in done]


def bench_lag(base: Path, runbook: str, cfgs: dict[str, Path], load_s: int) -> None:
    cp_dir = base / "lag-cp"
    cp_dir.mkdir()
    chown_server_user(cp_dir)
    commands = {
        "cp + sync": f"cp %p {cp_dir}/%f.tmp && sync {cp_dir}/%f.tmp && mv {cp_dir}/%f.tmp {cp_dir}/%f",
        "ours sync, local + S3": f"{runbook} wal-push -c {cfgs['both']} %p",
        "ours async, local + S3": f"{runbook} wal-push -c {cfgs['both-async']} %p",
    }
    rows = []
    for label, command in commands.items():
        s = Server(base, f"lag-{len(rows)}")
        s.initdb()
        s.conf(archive_mode="on", archive_command=command, synchronous_commit="off", wal_compression="off")
        s.start()
        try:
            s.pgbench("-i", "-s", "10", "-q")
            s.psql("create table bulk (id int, payload text)")
            script = base / "bulk.sql"
            script.write_text("insert into bulk select g, repeat(md5(g::text), 4) from generate_series(1, 500) g;\n")
            lsn0 = s.psql("select pg_current_wal_lsn()")
            out: dict[str, list[float]] = {}
            stop = threading.Event()
            t = threading.Thread(target=watch_lag, args=(s.data / "pg_wal", stop, out))
            t.start()
            t0 = time.monotonic()
            report = s.pgbench("-c", "8", "-j", "2", "-T", str(load_s), "-n", "-b", "tpcb-like@1",
                               "-f", f"{script}@1")
            tps = report.split("tps = ", 1)[1].split()[0]
            elapsed = time.monotonic() - t0
            wal_mb = int(s.psql(f"select pg_current_wal_lsn() - '{lsn0}'::pg_lsn")) / 1e6
            time.sleep(1)
            stop.set()
            t.join()
            lags = out["lags"]
            pending = out["pending"]
            lo, med = stats(lags)
            worst = max(lags + pending) if lags or pending else float("nan")
            rows.append([label, f"{float(tps):.0f}", f"{wal_mb / elapsed:.1f} MB/s ({wal_mb / 16 / elapsed:.1f} seg/s)",
                         str(len(lags)), f"{med:.2f}", f"{worst:.2f}", str(len(pending))])
        finally:
            s.stop()
        _reset_repos(base)
    table(f"Archive lag under pgbench load (-c 8 -j 2, tpcb-like + 500-row inserts, synchronous_commit=off, "
          f"{load_s} s)",
          ["archive_command", "tps", "WAL rate", "segments", "median lag s (.ready to .done)", "max lag s",
           "still .ready 1 s after"], rows)


# --- 4. replay -----------------------------------------------------------------------------------------


@dataclass
class ReplaySource:
    """The WAL the replays read: a pg_basebackup, then the same segments archived by `cp` (cp_dir), by ours to
    the local repository and S3 (config `both`), by pgBackRest (pgbr_conf) and barman-cloud (barman_url);
    segments: how many a replay reads (from the backup's start on)."""
    backup: Path
    cp_dir: Path
    segments: int
    pgbr_conf: Path | None
    barman_url: str | None
    pgbr_s3_conf: Path | None = None


def prepare_replay(base: Path, runbook: str, cfgs: dict[str, Path], n_segments: int, url: str | None = None,
                   init_scale: int = 10, tls: tuple[str, Path] | None = None) -> ReplaySource:
    """A source server (pgbench -i at init_scale), a pg_basebackup of it, then n_segments full segments of
    pgbench WAL archived by every method (with tls, start_tls_s3's URL and certificate, also by pgBackRest to
    S3 over HTTPS); the source is stopped."""
    src = Server(base, "replay-src")
    src.initdb()
    cp_dir = base / "replay-cp"
    cp_dir.mkdir()
    chown_server_user(cp_dir)
    archive = (f"cp %p {cp_dir}/%f && {runbook} wal-push -c {cfgs['both']} %p && "
               f"{runbook} wal-push -c {cfgs['s3-enc']} %p")
    pgbr_conf = pgbr_config(base, "replay", src.data, src.dir, True) if PGBACKREST else None
    if pgbr_conf:
        archive += " && " + " ".join(pgbr(pgbr_conf, "--archive-async=n", "archive-push", "%p"))
    pgbr_s3_conf = pgbr_s3_config(base, "replay-s3", src.data, src.dir, True, *tls) if PGBACKREST and tls else None
    if pgbr_s3_conf:
        archive += " && " + " ".join(pgbr(pgbr_s3_conf, "--archive-async=n", "archive-push", "%p"))
    barman_url = url if BARMAN_PUSH and BARMAN_GET and url else None
    if barman_url:
        archive += " && " + " ".join(barman(base, barman_url, str(BARMAN_PUSH), "%p"))
    # Every method's command in one script: PostgreSQL 15 cuts an archive_command longer than 1024 bytes once %p
    # is expanded (pgarch.c's MAXPGPATH buffer), and then pg_basebackup -X none waits for archiving for ever.
    script = base / "replay-archive.sh"
    script.write_text("#!/bin/sh\nset -e\n" + archive.replace("%p", '"$1"').replace("%f", '"$(basename "$1")"')
                      + "\n")
    script.chmod(0o755)
    src.conf(archive_mode="on", archive_command=f"{script} %p", wal_compression="off")
    src.start()
    for conf in (pgbr_conf, pgbr_s3_conf):
        if conf:
            as_pg(pgbr(conf, "stanza-create"), check=True)
    src.pgbench("-i", "-s", str(init_scale), "-q")
    backup = base / "replay-base"
    backup.mkdir(mode=0o700)
    chown_server_user(backup)
    try:
        as_pg([str(PG_BIN / "pg_basebackup"), "-h", str(src.dir), "-U", "postgres", "-D", str(backup), "-X", "none",
               "-c", "fast"], check=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"pg_basebackup waited 10 min for its WAL to be archived: see {src.dir / 'log'}") from None
    lsn0 = src.psql("select pg_current_wal_lsn()")
    while int(src.psql(f"select pg_current_wal_lsn() - '{lsn0}'::pg_lsn")) < n_segments * SEG:
        src.pgbench("-c", "4", "-j", "2", "-T", "3", "-n")  # full segments: no forced switch
    last = src.psql("select pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + 300
    while not (src.data / "pg_wal" / "archive_status" / f"{last}.done").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"the replay WAL was not archived in time: see {src.dir / 'log'}")
        time.sleep(0.2)
    src.stop()
    # The segments a replay reads: from the base backup's start (its backup_label) to the last one archived.
    first = (backup / "backup_label").read_text().split("(file ", 1)[1].split(")", 1)[0]
    segs = len([n for n in os.listdir(cp_dir) if len(n) == 24 and n >= first])
    # noprefetch has its own (empty) repositories: point it at the 'both' local repository instead
    noprefetch = cfgs["noprefetch"]
    noprefetch.write_text(noprefetch.read_text().replace(str(base / "repo-noprefetch"), str(base / "repo-both")))
    return ReplaySource(backup, cp_dir, segs, pgbr_conf, barman_url, pgbr_s3_conf)


REPLAY_CP = "cp (floor)"
REPLAY_CP_WARM = "cp, every file read into the page cache first"
REPLAY_LOCAL = "ours, local (read-ahead)"
REPLAY_S3 = "ours, S3 (read-ahead)"
REPLAY_PGBR = "pgbackrest local async"
REPLAY_PGBR_S3 = "pgbackrest S3 async (TLS)"


def measure_replay(base: Path, runbook: str, cfgs: dict[str, Path], source: ReplaySource, repeat: int,
                   baseline: str | None = None, wanted: list[str] | None = None,
                   only_methods: list[str] | None = None) -> tuple[dict[str, list[float]], dict[str, list[str]]]:
    """Replays of source's WAL into copies of its base backup, each method `repeat` times in a rotated order
    (wanted: only those methods, `cp` always). Returns seconds per method and the read-ahead depth each run of
    ours reached."""
    cp_dir = source.cp_dir
    methods = {
        REPLAY_CP: f"cp {cp_dir}/%f %p",
        # The archive as a DBA's cp reads it is cold (archived long before, or, on a VM, its page cache
        # reclaimed): this row shows how much of cp's time is reading from the disk.
        REPLAY_CP_WARM: f"cp {cp_dir}/%f %p",
        REPLAY_LOCAL: f"{runbook} wal-fetch -c {cfgs['both']} --from local %f %p",
        REPLAY_S3: f"{runbook} wal-fetch -c {cfgs['both']} --from s3 %f %p",
        "ours, local, no read-ahead": f"{runbook} wal-fetch -c {cfgs['noprefetch']} --from local %f %p",
        "ours, S3 encrypted (read-ahead)": f"{runbook} wal-fetch -c {cfgs['s3-enc']} %f %p",
    }
    if only_methods:  # the floor always, and the methods named (by a word of their label: S3, encrypted, ...)
        methods = {m: c for m, c in methods.items() if m.startswith("cp") or any(w in m for w in only_methods)}
    if baseline:  # the read-ahead of another build of ours (--baseline-venv: before/after in one run)
        for m in (REPLAY_LOCAL, REPLAY_S3):
            methods[m.replace("ours", "baseline")] = methods[m].replace(runbook, baseline, 1)
    pgbr_conf = source.pgbr_conf
    if pgbr_conf:  # its asynchronous archive-get (read-ahead of archive-get-queue-max, 128 MB), local, lz4
        methods[REPLAY_PGBR] = " ".join(pgbr(pgbr_conf, "archive-get", "%f", '"%p"')) + " --pg1-path={data}"
    if source.pgbr_s3_conf:  # the same from S3 over HTTPS
        methods[REPLAY_PGBR_S3] = (" ".join(pgbr(source.pgbr_s3_conf, "archive-get", "%f", '"%p"'))
                                   + " --pg1-path={data}")
    if source.barman_url and BARMAN_GET:  # one Python process per segment, S3 over HTTP
        methods[BARMAN_GET_LABEL] = " ".join(barman(base, source.barman_url, BARMAN_GET, "%f", "%p"))
    if wanted:
        methods = {m: c for m, c in methods.items() if m == REPLAY_CP or m in wanted}
    results: dict[str, list[float]] = {m: [] for m in methods}
    depths: dict[str, list[str]] = {}
    redo_end: dict[str, str] = {}
    for rep in range(repeat):
        order = list(methods.items())
        order = order[rep % len(order):] + order[:rep % len(order)]  # rotated: no method always runs first
        for m, command in order:
            for conf in (pgbr_conf, source.pgbr_s3_conf):
                if conf and m.startswith("pgbackrest"):  # no segments left in its spool by an earlier run
                    shutil.rmtree(conf.parent / "spool", ignore_errors=True)
                    (conf.parent / "spool").mkdir()
                    chown_server_user(conf.parent / "spool")
            r = Server(base, f"replay-{rep}-{list(methods).index(m)}")
            as_pg(["cp", "-a", str(source.backup), str(r.data)], check=True)
            r.conf(restore_command=command.replace("{data}", str(r.data)), archive_mode="off",
                   recovery_target_timeline="current")
            (r.data / "recovery.signal").touch()
            chown_server_user(r.data)
            quiesce(base)
            if m == REPLAY_CP_WARM:
                for f in cp_dir.iterdir():
                    f.read_bytes()
            t0 = time.monotonic()
            r.start()
            while True:
                try:
                    if r.psql("select pg_is_in_recovery()") == "f":
                        break
                except subprocess.CalledProcessError:
                    pass
                if time.monotonic() - t0 > 600:
                    raise SystemExit(f"replay with {m} did not finish: see {r.dir / 'log'}")
                time.sleep(0.05)
            results[m].append(time.monotonic() - t0)
            for depth_file in (base / "spool").glob(f"*/*/in-{_tag(r.data)}/.depth"):  # how deep it read ahead
                depths.setdefault(m, []).append(depth_file.read_text().strip())
            log = (r.dir / "log").read_text()
            if "FATAL" in log:
                raise SystemExit(f"replay with {m} failed: see {r.dir / 'log'}")
            # Every method replays the same WAL to its end: a restore_command that failed early would end
            # recovery sooner and look fast.
            redo = log.split("redo done at ", 1)[1].split()[0] if "redo done at " in log else "none"
            if redo_end.setdefault("first", redo) != redo:
                raise SystemExit(f"replay with {m} ended at {redo}, another at {redo_end['first']}: see {r.dir / 'log'}")
            r.stop()
            shutil.rmtree(r.dir, ignore_errors=True)
    return results, depths


def bench_replay(base: Path, runbook: str, cfgs: dict[str, Path], n_segments: int, repeat: int,
                 baseline: str | None = None, url: str | None = None,
                 only_methods: list[str] | None = None) -> None:
    source = prepare_replay(base, runbook, cfgs, n_segments, url)
    results, depths = measure_replay(base, runbook, cfgs, source, repeat, baseline, only_methods=only_methods)
    floor = stats(results[REPLAY_CP])[1]
    rows = [[m, f"{stats(t)[0]:.2f}", f"{stats(t)[1]:.2f}", f"{stats(t)[1] / floor:.2f}x",
             " ".join(depths.get(m, [])) or "-"] for m, t in results.items()]
    table(f"PITR replay of {source.segments} 16 MB segments into a pg_basebackup (x {repeat}, order rotated)",
          ["restore_command", "min s", "median s", "median vs cp", "read-ahead depth at the end (each run)"], rows)


def _tag(datadir: Path) -> str:
    """The read-ahead spool's name for a data directory (steps.wal.fast.fetch_spool)."""
    import hashlib

    return hashlib.sha256(os.path.abspath(datadir).encode()).hexdigest()[:12]


def make_corpus(base: Path, n: int, init_scale: int = 10) -> tuple[Server, list[Path]]:
    """A started server archiving with `cp`, and n full segments of its pgbench WAL (after `pgbench -i`)."""
    src = Server(base, "corpus")
    src.initdb()
    corpus_dir = base / "corpus-wal"
    corpus_dir.mkdir()
    chown_server_user(corpus_dir)
    src.conf(archive_mode="on", archive_command=f"cp %p {corpus_dir}/%f", wal_compression="off")
    src.start()
    src.pgbench("-i", "-s", str(init_scale), "-q")
    init_end = src.psql("select pg_walfile_name(pg_switch_wal())")
    while not (src.data / "pg_wal" / "archive_status" / f"{init_end}.done").exists():
        time.sleep(0.1)
    before = set(os.listdir(corpus_dir))
    while len(set(os.listdir(corpus_dir)) - before) < n + 1:
        src.pgbench("-c", "4", "-j", "2", "-T", "3", "-n")  # full segments: no forced switch
        time.sleep(0.5)
    corpus = sorted(corpus_dir / name for name in set(os.listdir(corpus_dir)) - before if len(name) == 24)[:n]
    print(f"corpus: {len(corpus)} pgbench segments of 16 MB in {corpus_dir}", flush=True)
    return src, corpus


def quiesce(base: Path) -> None:
    """Before a timed run: no process an earlier run started is left (a read-ahead still polling the archive's
    end, pgBackRest's asynchronous archive-get: every one names a file under `base`), and nothing is left to
    write back (the copied data directory, the last run's files): each run starts on a quiet machine."""
    deadline = time.monotonic() + 30
    while subprocess.run(["pkill", "-TERM", "-f", str(base) + "/"], capture_output=True).returncode == 0:
        if time.monotonic() > deadline:
            subprocess.run(["pkill", "-KILL", "-f", str(base) + "/"], capture_output=True)
            break
        time.sleep(0.2)
    subprocess.run(["sync"], check=True)
    time.sleep(0.5)


def stop_workers(spool: Path) -> None:
    """End the uploaders and prefetchers this run started, by the pid in their lock files."""
    import signal

    from steps.wal.fast import worker_alive

    for lock in [*spool.rglob("push-worker.lock"), *spool.rglob(".lock")]:
        try:
            pid = int(lock.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if worker_alive(lock):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=24, help="segments pushed one by one (part 2)")
    ap.add_argument("--replay-segments", type=int, default=40)
    ap.add_argument("--load-s", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--venv", help="an existing server venv (else one is built, and removed at the end)")
    ap.add_argument("--baseline-venv", help="another build's server venv (e.g. of main), run beside ours as "
                    "'baseline: ...' rows: before and after in one run")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (clusters, logs, repositories)")
    ap.add_argument("--only", choices=["compression", "push", "lag", "replay"], action="append")
    ap.add_argument("--push-methods", nargs="+", metavar="NAME",
                    help="part 2 only for these (local, local-sealed, s3, both, local-async, local-async-pN (N = 1, 4, 8, "
                         "32: wal.push_ahead), local-async-sealed, "
                         "s3-async, both-async, s3-enc, s3-async-enc); cp + sync always")
    ap.add_argument("--replay-methods", nargs="+", metavar="WORD",
                    help="part 4 only for the restore_commands whose label holds one of these words (e.g. "
                         "'S3 (read-ahead)' encrypted); cp always")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the servers and the commands run as postgres")
    base = Path(tempfile.mkdtemp(prefix="wal-bench-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    server, url = start_s3()
    cleanup: list[Path] = []
    global _S3_RESET
    _S3_RESET = _s3_reset_factory(url)
    try:
        if args.venv:
            runbook = str(Path(args.venv) / "bin" / "runbook")
        else:
            venv_dir = Path(tempfile.mkdtemp(prefix="wal-bench-venv-", dir="/var/tmp"))
            cleanup.append(venv_dir)
            runbook = str(build_server_venv(ROOT, venv_dir).runbook)
        baseline = str(Path(args.baseline_venv) / "bin" / "runbook") if args.baseline_venv else None
        spool = base / "spool"
        spool.mkdir()
        chown_server_user(spool)
        cfgs = write_configs(base, url, spool)
        only = set(args.only or ["compression", "push", "lag", "replay"])
        if only & {"compression", "push"}:
            src, corpus = make_corpus(base, args.segments)
            if "compression" in only:
                bench_compression(corpus)
            if "push" in only:
                bench_push(base, src, corpus, runbook, cfgs, args.repeat, args.push_methods, baseline, url)
            src.stop()
        if "lag" in only:
            bench_lag(base, runbook, cfgs, args.load_s)
        if "replay" in only:
            bench_replay(base, runbook, cfgs, args.replay_segments, args.repeat, baseline, url,
                         args.replay_methods)
    finally:
        for pid_file in base.glob("*/data/postmaster.pid"):  # servers an error left running
            as_pg([str(PG_BIN / "pg_ctl"), "-D", str(pid_file.parent), "-m", "immediate", "-w", "stop"])
        stop_workers(base / "spool")
        server.stop()
        for d in cleanup:
            shutil.rmtree(d, ignore_errors=True)
        if args.keep:
            print(f"\n(work directory: {base})")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
