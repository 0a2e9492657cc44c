"""Watching through the repository: the latency and the cost of the journal's mirror (run by hand, not a test).

    .venv/bin/python bench/mirror_bench.py [--steps 12] [--pause 0.5] [--seconds 20] [--rate 20] [--no-s3]

latency  a real driver (`runbook run --headless`, a drill of --steps steps of `sleep --pause`, its repository a
         local directory, then moto's S3 on 127.0.0.1) while this process follows it with RepositoryEventSource,
         polling every 0.2 s: for every event, the time from the driver's journal write (the event's `ts`) to
         the poll that returned it. Min, median, p95, max.
cost     the mirror thread alone (steps.mirror.writing.JournalMirror) on a journal this process appends to at
         --rate events/s for --seconds (the busiest a run gets: action outputs and checks), into each store
         (and a local one with encrypt: true: every chunk age-encrypted):
         the thread's CPU time (thread_time) per second of run, chunks and heartbeats written, events/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}


def config(d: Path, kind: str, s3_url: str | None, bucket: str) -> Path:
    from steps.crypto.age import new_identity
    from steps.repository.signing import create_key_files

    key = d / "keys" / "bench.key"
    if not key.exists():
        create_key_files(key, "bench")
    cfg = d / f"repo-{kind}.yaml"
    text = "version: 1\n"
    text += f"local: {{path: {d / 'repo'}}}\n" if kind == "local" else \
        f"local: {{path: {d / 'repo-enc'}, encrypt: true}}\nbackup: {{state_dir: {d / 'enc-state'}}}\n" \
        f"encryption: {{recipients: [{new_identity('bench').recipient}]}}\n" if kind == "local-encrypted" else \
        f"s3: {{bucket: {bucket}, endpoint_url: '{s3_url}', region: us-east-1}}\n"
    cfg.write_text(text + f"signing: {{private_key: {key}, public_keys: [{key}.pub]}}\n")
    return cfg


def runbook(d: Path, steps: int, pause: float) -> Path:
    body = "".join(f"  - id: s{i}\n    run: \"sleep {pause}; echo {i}\"\n    confirm: none\n" for i in range(steps))
    rb = d / "rb.yaml"
    rb.write_text(textwrap.dedent("""\
        version: 1
        name: Mirror bench
        targets: {rto: 2h, rpo: 5m}
        target: "bench:5432/app"
        repository: "{{ repository }}"
        params:
          repository: {type: path}
        steps:
        """) + body)
    return rb


def latency(d: Path, cfg: Path, rb: Path) -> list[float]:
    from runbook.repository_watch import repository_source

    state = d / f"state-{cfg.stem}"
    driver = subprocess.Popen([sys.executable, "-m", "runbook", "run", str(rb), "--headless", "--yes", "--mode",
                               "drill", "--set", f"repository={cfg}", "--state-dir", str(state)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **ENV}, cwd=ROOT)
    try:
        while not (state / "runs").exists() or not any((state / "runs").iterdir()):
            time.sleep(0.05)
        run_id = next((state / "runs").iterdir()).name
        src = repository_source(cfg, run_id)
        out: list[float] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for ev in src.poll():
                out.append(time.time() - datetime.fromisoformat(ev["ts"]).timestamp())
            if src.status().ended:
                break
            time.sleep(0.2)
        driver.wait(60)
        return out
    finally:
        if driver.poll() is None:
            driver.kill()


def cost(d: Path, cfg: Path, seconds: float, rate: float) -> dict[str, Any]:
    from runbook.clock import Clock
    from runbook.journal import Journal
    from steps.mirror.writing import JournalMirror, plan
    from steps.repository.config import load_repository_config
    from steps.repository.signing import signer_from_config

    rcfg, _ = load_repository_config(cfg)
    path = d / f"cost-{cfg.stem}" / "journal.jsonl"
    journal = Journal(path, Clock())
    journal.append("run-started", run_id=f"bench-{cfg.stem}", steps=["a"], runbook={"name": "bench"})
    signer = signer_from_config(rcfg)
    where = plan(rcfg, signer)
    mirror = JournalMirror(f"bench-{cfg.stem}", path, where.stores, signer, driver={}, sealers=where.sealers).start()
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < seconds:
        journal.append("step-output", step="a", name=f"o{n}", value="x" * 80)
        n += 1
        time.sleep(max(0.0, t0 + n / rate - time.monotonic()))
    problems = mirror.stop("ended")
    wall = time.monotonic() - t0
    s = mirror.stats
    return {"events": s.events, "wall_s": wall, "events_per_s": s.events / wall, "chunks": s.chunks,
            "heartbeats": s.heartbeats, "cpu_s": s.cpu_s, "cpu_pct": 100 * s.cpu_s / wall, "problems": problems}


def show(name: str, xs: list[float]) -> None:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(0.95 * len(xs)))]
    print(f"{name:>15}: {len(xs)} events, latency min {xs[0]:.2f} s, median {statistics.median(xs):.2f} s, "
          f"p95 {p95:.2f} s, max {xs[-1]:.2f} s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--pause", type=float, default=0.5)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rate", type=float, default=20)
    ap.add_argument("--no-s3", action="store_true")
    a = ap.parse_args()
    os.environ.update(ENV)
    kinds = ["local"] if a.no_s3 else ["local", "s3"]
    server = None
    url = None
    with tempfile.TemporaryDirectory(prefix="mirror-bench-") as tmp:
        d = Path(tmp)
        try:
            if not a.no_s3:
                import logging

                import boto3
                from moto.server import ThreadedMotoServer

                logging.getLogger("werkzeug").setLevel(logging.ERROR)

                server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
                server.start()
                host, port = server.get_host_and_port()
                url = f"http://{host}:{port}"
                boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="bench")
            rb = runbook(d, a.steps, a.pause)
            print(f"load average {os.getloadavg()[0]:.1f}; {a.steps} steps of sleep {a.pause}; watcher polls every 0.2 s")
            for kind in kinds:
                show(kind, latency(d, config(d, kind, url, "bench"), rb))
            for kind in [*kinds, "local-encrypted"]:
                c = cost(d, config(d, kind, url, "bench"), a.seconds, a.rate)
                print(f"{kind:>15}: mirror thread {c['cpu_s']:.2f} s CPU in {c['wall_s']:.1f} s ({c['cpu_pct']:.1f} %), "
                      f"{c['events']} events ({c['events_per_s']:.1f}/s) in {c['chunks']} chunks, "
                      f"{c['heartbeats']} live.json writes{'; ' + '; '.join(c['problems']) if c['problems'] else ''}")
        finally:
            if server is not None:
                server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
