"""The per-segment start of `wal-push`/`wal-fetch`: the quick answers against the bare interpreter (by hand, not a test).

    .venv/bin/python bench/hotpath_bench.py [--runs 30] [--venv DIR] [--baseline-venv DIR]

Run as root; the commands run as `postgres` (as PostgreSQL runs them), from a server venv built like the tests'
(a non-editable install of this tree, or `--venv`); `--baseline-venv` another build (e.g. of main) measured in
the same run, its runs interleaved with ours. For each build, in a data directory of its own (global/pg_control,
1 MB segments), with a real uploader and a real read-ahead started by the build itself:
- `wal-push` of a segment the running uploader has confirmed (`.ok`), the quick answer of the asynchronous mode;
- `wal-fetch` of a segment the read-ahead holds (each run waits, untimed, until the prefetcher has written it);
each as the installed console script `runbook` (what archive_command runs) and as
`python -c "from runbook.launch import main; ..."` (the same without the console script's own imports);
and `python -c pass` of the same interpreter, the floor. Wall time of each process, milliseconds, median and
min over `--runs`; `-X importtime`: the sum of every module's own import time in one run of the quick answer
(on top of what `python -c pass` imports) and how many modules it loaded beyond that.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.pgcluster import as_server_user, chown_server_user  # noqa: E402
from tests.support.server_venv import build_server_venv  # noqa: E402

# Runs as the server's user, in the server venv's interpreter: plan (JSON) in argv[1], results (JSON) on stdout.
DRIVER = r'''
import atexit, json, os, signal, struct, subprocess, sys, time

plan = json.loads(sys.argv[1])
R, MB, SYSID = plan["runs"], 1024 * 1024, 7000000000000000001
LAUNCH = ("import sys; sys.argv = ['runbook'] + sys.argv[1:]; from runbook.launch import main; "
          "raise SystemExit(main())")
LIST = "import sys; print(' '.join(sorted(sys.modules)))"
LAUNCH_LIST = ("import sys; sys.argv = ['runbook'] + sys.argv[1:]; from runbook.launch import main; rc = main(); "
               "print(' '.join(sys.modules)); raise SystemExit(rc)")


def name(segno):
    return f"{1:08X}{segno // 4096:08X}{segno % 4096:08X}"


def segment(segno):
    head = struct.pack("<HHIQI4xQII", 0xD110, 0x0002, 1, segno * MB, 0, SYSID, MB, 8192)
    return head + os.urandom(4096) + bytes(MB - len(head) - 4096)


def run(cmd, env, cwd):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    ms = (time.perf_counter() - t0) * 1000
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr}")
    return ms, r


def wait_for(path_of, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        p = path_of()
        if p:
            return p
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the workers")
        time.sleep(0.005)


def find(root, suffix):
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(suffix):
                return os.path.join(d, f)
    return None


builds = {}
n_seg = 2 * R + 3


@atexit.register
def stop_workers():
    """End the uploaders and prefetchers started here, by the pids in their locks (also when a step failed)."""
    for b in builds.values():
        for d, _, files in os.walk(b["spool"]):
            for f in files:
                if f in ("push-worker.lock", ".lock"):
                    try:
                        os.kill(int(open(os.path.join(d, f)).read().split()[0]), signal.SIGTERM)
                    except (OSError, ValueError, IndexError):
                        pass


for b in plan["builds"]:
    d = b["dir"]
    data, repo, spool = f"{d}/data", f"{d}/repo", f"{d}/spool"
    os.makedirs(f"{data}/global"); os.makedirs(f"{data}/pg_wal/archive_status"); os.makedirs(repo); os.makedirs(spool)
    os.makedirs(f"{d}/restore")
    with open(f"{data}/global/pg_control", "wb") as f:
        f.write(SYSID.to_bytes(8, "little") + bytes(8184))
    cfg = f"{d}/repository.yaml"
    with open(cfg, "w") as f:
        f.write(f"version: 1\nlocal: {{path: {repo}}}\ncluster: {{data_directory: {data}}}\n"
                f"wal: {{async: true, spool_dir: {spool}, worker_idle_s: 120, push_timeout_s: 60}}\n")
    for i in range(1, n_seg + 1):
        with open(f"{data}/pg_wal/{name(i)}", "wb") as f:
            f.write(segment(i))
    env = {"PATH": "/usr/bin:/bin", "HOME": d, "XDG_CACHE_HOME": f"{d}/cache", "LANG": "C.UTF-8"}
    builds[b["label"]] = dict(b, data=data, cfg=cfg, env=env, spool=spool)
time.sleep(0.05)  # the segments' ctime older than a tick of the file clock: the uploader records their identity

for label, b in builds.items():  # the first push of a burst starts the uploader; then it archives them all
    seg = f"{b['data']}/pg_wal/{name(1)}"
    open(f"{b['data']}/pg_wal/archive_status/{name(1)}.ready", "w").close()
    run([b["runbook"], "wal-push", "-c", b["cfg"], seg], b["env"], b["data"])
    for i in range(2, n_seg + 1):
        open(f"{b['data']}/pg_wal/archive_status/{name(i)}.ready", "w").close()
for label, b in builds.items():
    for i in range(2, n_seg + 1):
        wait_for(lambda: find(b["spool"], f"{name(i)}.ok"))
    if "identity=" not in open(find(b["spool"], f"{name(2)}.ok")).read() and '"identity"' not in open(
            find(b["spool"], f"{name(2)}.ok")).read():
        raise SystemExit(f"{label}: the uploader's record has no identity: every wal-push would hash the file")

res = {"pass": [], "pass_modules": None}
for label in builds:
    for k in ("push script", "push module", "fetch script", "fetch module"):
        res[f"{label}: {k}"] = []
python = plan["builds"][0]["python"]
res["pass_modules"] = run([python, "-c", LIST], {}, "/")[1].stdout.split()
base_mods = set(res["pass_modules"])

# wal-push of a confirmed segment: interleaved, build after build, run after run
for _ in range(R):
    res["pass"].append(run([python, "-c", "pass"], {}, "/")[0])
    for label, b in builds.items():
        seg = f"{b['data']}/pg_wal/{name(2)}"
        res[f"{label}: push script"].append(run([b["runbook"], "wal-push", "-c", b["cfg"], seg], b["env"], b["data"])[0])
        res[f"{label}: push module"].append(
            run([b["python"], "-c", LAUNCH, "wal-push", "-c", b["cfg"], seg], b["env"], b["data"])[0])

# wal-fetch: the first reads the repository and starts the read-ahead; then each takes its segment from it
for label, b in builds.items():
    run([b["runbook"], "wal-fetch", "-c", b["cfg"], name(1), f"{b['data']}/../restore/first"], b["env"], b["data"])
for i in range(R):
    for label, b in builds.items():
        for k, seg in (("fetch script", 2 + 2 * i), ("fetch module", 3 + 2 * i)):
            wait_for(lambda: find(b["spool"], f"{name(seg)}.json"))  # read ahead (untimed)
            dest = f"{b['data']}/../restore/{name(seg)}"
            cmd = ([b["runbook"]] if k == "fetch script" else [b["python"], "-c", LAUNCH]) + [
                "wal-fetch", "-c", b["cfg"], name(seg), dest]
            res[f"{label}: {k}"].append(run(cmd, b["env"], b["data"])[0])
            if os.path.getsize(dest) != MB:
                raise SystemExit(f"{dest} is not the segment")

# -X importtime of one quick answer each (the push: confirmed again; the fetch: the last segment, read ahead)
imports = {}
for label, b in builds.items():
    seg = f"{b['data']}/pg_wal/{name(2)}"
    for k, args in (("push", ["wal-push", "-c", b["cfg"], seg]),
                    ("fetch", ["wal-fetch", "-c", b["cfg"], name(n_seg), f"{b['data']}/../restore/last"])):
        if k == "fetch":
            wait_for(lambda: find(b["spool"], f"{name(n_seg)}.json"))
        _, r = run([b["python"], "-X", "importtime", "-c", LAUNCH_LIST, *args], b["env"], b["data"])
        mods = set(r.stdout.split()) - base_mods
        own = 0
        for line in r.stderr.splitlines():
            parts = line.split("|")
            if line.startswith("import time:") and len(parts) == 3 and parts[2].strip() in mods:
                own += int(parts[0].split(":")[1])
        imports[f"{label}: {k}"] = {"ms": own / 1000, "modules": len(mods),
                                    "heavy": sorted(mods & {"json", "re", "enum", "pathlib", "hashlib", "_hashlib",
                                                            "typing", "subprocess", "urllib.parse"})}

print(json.dumps({"times": res, "imports": imports}))
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--venv", help="the server venv to measure (default: one built from this tree)")
    ap.add_argument("--baseline-venv", help="another build's server venv (e.g. of main), measured in the same run")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root: the commands run as the server's user (postgres), as PostgreSQL runs them",
              file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="hotpath-bench-"))
    try:
        os.chmod(base, 0o755)
        if args.venv:
            venv = Path(args.venv)
        else:
            (base / "build").mkdir()
            venv = build_server_venv(ROOT, base / "build").root
        venvs = {"ours": venv}
        if args.baseline_venv:
            venvs["baseline"] = Path(args.baseline_venv)
        builds = []
        for label, v in venvs.items():
            d = base / label
            d.mkdir()
            builds.append({"label": label, "dir": str(d), "python": str(v / "bin" / "python"),
                           "runbook": str(v / "bin" / "runbook")})
        chown_server_user(base / "ours")
        if "baseline" in venvs:
            chown_server_user(base / "baseline")
        driver = base / "driver.py"
        driver.write_text(DRIVER)
        os.chmod(driver, 0o644)
        plan = json.dumps({"runs": args.runs, "builds": builds})
        r = subprocess.run(as_server_user([builds[0]["python"], str(driver), plan]), capture_output=True, text=True,
                           cwd="/")
        if r.returncode != 0:
            print(r.stdout[-2000:], r.stderr[-4000:], file=sys.stderr)
            return 1
        out = json.loads(r.stdout.splitlines()[-1])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    import statistics

    times, imports = out["times"], out["imports"]
    floor = statistics.median(times["pass"])
    print(f"{args.runs} runs each, as postgres, wall time of the process (ms)")
    print(f"{'':34} {'median':>8} {'min':>8} {'- pass':>8}")
    print(f"{'python -c pass':34} {floor:8.1f} {min(times['pass']):8.1f} {0:8.1f}")
    for k, xs in times.items():
        if k in ("pass", "pass_modules"):
            continue
        med = statistics.median(xs)
        print(f"{k:34} {med:8.1f} {min(xs):8.1f} {med - floor:+8.1f}")
    print("\n-X importtime, one quick answer: own import time of the modules beyond `python -c pass`")
    for k, v in imports.items():
        print(f"{k:34} {v['ms']:6.1f} ms  {v['modules']:3d} modules  heavy: {', '.join(v['heavy']) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
