"""The cross-host hand-over's time: request dropped -> the new driver driving (by hand, not a test).

    .venv/bin/python bench/handover_bench.py [--repeat 5] [--where local|s3|both]

Each repeat: host A (`runbook run --headless`, its own HOME, state directory, config and key) drives a run whose
first step waits at its prompt (a step boundary: nothing runs on A). Host B (another process, its own HOME, state
directory, config and key; the same repository) runs `runbook take-over -c CONFIG RUN_ID --yes --headless`.
The clock is read from B's own lines as they arrive:

request   B's start -> "asked ... to hand run ... over" (the mirror read and verified, params checked, the signed
          request written);
handover  that line -> "is driven from this host now": A's mirror thread reads the request (every 1 s), A
          journals handed-over and mirrors it with its last live.json, B sees it (every 0.5 s), claims the run,
          rebuilds the run directory from the verified mirror, takes the local and the recovery lock;
total     B's start -> driving.

The repository is a local directory, or moto's S3 over HTTP on 127.0.0.1 (in this process). Prints min and
median of each.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.signing import make_keys  # noqa: E402

RUNBOOK = """
version: 1
name: Hand-over bench
targets: {rto: 2h, rpo: 5m}
target: "bench-host:5432/app"
repository: "{{ repository }}"
params:
  repository: {type: path}
steps:
  - id: ask
    title: Wait at the prompt
    run: echo asked
  - id: done
    run: echo done
    confirm: none
"""


def host(base: Path, name: str, repo: str, pubs: list[Path], extra_env: dict[str, str]) -> dict[str, object]:
    d = base / name
    (d / "home").mkdir(parents=True)
    key, _ = make_keys(base, name)
    cfg = d / "repository.yaml"
    cfg.write_text("version: 1\n" + repo + f"signing: {{private_key: {key}, public_keys: "
                   f"[{', '.join(str(p) for p in pubs)}]}}\n")
    env = {**os.environ, **extra_env, "HOME": str(d / "home"), "XDG_CONFIG_HOME": str(d / "home" / ".config"),
           "XDG_STATE_HOME": str(d / "home" / ".state"), "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
    return {"cfg": cfg, "state": d / "state", "env": env}


def once(base: Path, repo: str, extra_env: dict[str, str]) -> tuple[float, float, float]:
    pubs = [make_keys(base, n)[1] for n in ("a", "b")]
    a = host(base, "a", repo, pubs, extra_env)
    b = host(base, "b", repo, pubs, extra_env)
    rb = base / "runbook.yaml"
    rb.write_text(textwrap.dedent(RUNBOOK).lstrip())
    drv = subprocess.Popen([sys.executable, "-m", "runbook", "run", str(rb), "--headless", "--mode", "drill",
                            "--set", f"repository={a['cfg']}", "--state-dir", str(a["state"])],
                           stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=a["env"], cwd=ROOT)  # type: ignore[arg-type]
    try:
        runs = Path(str(a["state"])) / "runs"
        deadline = time.monotonic() + 30
        while not (runs.is_dir() and any(runs.iterdir())):
            if time.monotonic() > deadline:
                raise SystemExit("the driver opened no run")
            time.sleep(0.05)
        run_id = next(runs.iterdir()).name
        from runbook.repository_watch import repository_source

        src = repository_source(Path(str(a["cfg"])), run_id)  # the run visible from B: mirrored, a heartbeat
        deadline = time.monotonic() + 30
        while not any(e.get("type") == "step-awaiting" for e in src.poll()) or src.live is None:
            if time.monotonic() > deadline:
                raise SystemExit("the run is not mirrored")
            time.sleep(0.1)
        t0 = time.monotonic()
        b_proc = subprocess.Popen([sys.executable, "-m", "runbook", "take-over", "-c", str(b["cfg"]), run_id,
                                   "--yes", "--headless", "--state-dir", str(b["state"])],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env=b["env"], cwd=ROOT)  # type: ignore[arg-type]
        asked = driving = None
        assert b_proc.stderr is not None
        for line in b_proc.stderr:
            now = time.monotonic()
            if asked is None and line.startswith("asked "):
                asked = now
            if "is driven from this host now" in line:
                driving = now
                break
        rest = b_proc.communicate(timeout=60)[1]
        if asked is None or driving is None:
            raise SystemExit(f"the take-over failed: {rest}")
        return asked - t0, driving - asked, driving - t0
    finally:
        if drv.poll() is None:
            drv.kill()
        drv.communicate(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--where", choices=["local", "s3", "both"], default="both")
    args = ap.parse_args()
    wheres = ["local", "s3"] if args.where == "both" else [args.where]
    for where in wheres:
        server = None
        extra: dict[str, str] = {}
        with tempfile.TemporaryDirectory(prefix="handover-bench-") as tmp:
            if where == "s3":
                import logging

                from moto.server import ThreadedMotoServer

                from tests.support.s3server import credentials_env

                logging.getLogger("werkzeug").setLevel(logging.ERROR)
                server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
                server.start()
                host_, port = server.get_host_and_port()
                url = f"http://{host_}:{port}"
                extra = credentials_env()
                os.environ.update(extra)
                import boto3

                boto3.client("s3", endpoint_url=url).create_bucket(Bucket="bench")
                repo = (f"s3: {{bucket: bench, endpoint_url: '{url}', region: us-east-1, max_attempts: 1, "
                        "connect_timeout_s: 2, read_timeout_s: 5}\n")
            else:
                repo = f"local: {{path: {Path(tmp) / 'repo'}}}\n"
            rows = []
            try:
                for i in range(args.repeat):
                    base = Path(tmp) / f"r{i}"
                    base.mkdir()
                    r = repo.replace(f"{Path(tmp) / 'repo'}", f"{base / 'repo'}")
                    rows.append(once(base, r, extra))
            finally:
                if server is not None:
                    server.stop()
        print(f"{where} ({args.repeat} hand-overs)")
        for n, name in enumerate(("request", "handover", "total")):
            vals = [row[n] for row in rows]
            print(f"  {name:9s} min {min(vals):5.2f} s   median {statistics.median(vals):5.2f} s")


if __name__ == "__main__":
    main()
