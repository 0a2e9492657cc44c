"""What age encryption costs, measured side by side in one run (run by hand, not a test; under a minute).

    .venv/bin/python bench/encryption_bench.py [--sizes 16,256] [--repeat 5]

For each size (MB of random, incompressible bytes: 16 is a WAL segment), in a temporary directory on the same
disk, the median of `--repeat` runs of:
- `cp` file out: the floor a copy costs (what "1.25x cp" is measured against);
- steps.crypto.age, incremental: `Encryptor` fed 1 MiB reads, `Decryptor` fed the ciphertext in 1 MiB reads
  (what the integration uses: file to file, in this process);
- steps.crypto.age on whole bytes in memory (`encrypt_bytes` / `decrypt_bytes`);
- pyrage.encrypt / pyrage.decrypt on whole bytes in memory (the Rust binding the design first named);
- the `age` command (`age -r R -o out file`, `age -d -i KEY -o out file`), a child process each time;
then the ratios to `cp` and to pyrage. Also the cost of importing what encryption loads, in a fresh interpreter
(the WAL commands start one per segment).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from steps.crypto.age import (  # noqa: E402
    Decryptor,
    Encryptor,
    decrypt_bytes,
    encrypt_bytes,
    generate_identity,
    parse_identity,
)

READ = 1 << 20


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm: page cache, first imports
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def pump(src: Path, dst: Path, make: Callable[[Callable[[bytes], None]], Encryptor | Decryptor]) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        stream = make(fout.write)
        while chunk := fin.read(READ):
            stream.write(chunk)
        stream.close()


def import_ms(codes: list[str], repeat: int, cache: Path) -> list[float]:
    """The least wall time of a fresh interpreter running each code (min of `repeat`, interleaved), with
    byte-code cached as an installed package has it (in `cache`, written by a first run, not in the checkout)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    times: list[list[float]] = [[] for _ in codes]
    for n in range(repeat + 1):
        for i, code in enumerate(codes):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)
            if n:  # the first round writes the byte-code
                times[i].append(time.perf_counter() - t0)
    return [min(t) * 1000 for t in times]


def measure(d: Path, mb: int, rep: int, secret: str, recipient: str) -> dict[str, float]:
    """The rows for one size, in ms (medians)."""
    import pyrage

    age_cmd = shutil.which("age")
    ident = parse_identity(secret, "bench")
    p_ident, p_rec = pyrage.x25519.Identity.from_str(secret), pyrage.x25519.Recipient.from_str(recipient)
    key, plain, ct, out = d / "key", d / "plain", d / "ct.age", d / "out"
    data = os.urandom(mb << 20)
    plain.write_bytes(data)
    encrypted = encrypt_bytes(data, recipient)
    ct.write_bytes(encrypted)
    rows: dict[str, float] = {}
    rows["cp"] = median_ms(lambda: subprocess.run(["cp", str(plain), str(out)], check=True), rep)
    rows["encrypt: Encryptor, file to file"] = median_ms(
        lambda: pump(plain, out, lambda sink: Encryptor(recipient, sink)), rep)
    rows["decrypt: Decryptor, file to file"] = median_ms(
        lambda: pump(ct, out, lambda sink: Decryptor(ident, sink, "bench")), rep)
    assert out.read_bytes() == data
    rows["encrypt: encrypt_bytes, in memory"] = median_ms(lambda: encrypt_bytes(data, recipient), rep)
    rows["decrypt: decrypt_bytes, in memory"] = median_ms(lambda: decrypt_bytes(encrypted, ident, "b"), rep)
    rows["encrypt: pyrage.encrypt, in memory"] = median_ms(lambda: pyrage.encrypt(data, [p_rec]), rep)
    rows["decrypt: pyrage.decrypt, in memory"] = median_ms(lambda: pyrage.decrypt(encrypted, [p_ident]), rep)
    if age_cmd:
        rows["encrypt: age command, file to file"] = median_ms(lambda: subprocess.run(
            [age_cmd, "-r", recipient, "-o", str(out), str(plain)], check=True), rep)
        rows["decrypt: age command, file to file"] = median_ms(lambda: subprocess.run(
            [age_cmd, "-d", "-i", str(key), "-o", str(out), str(ct)], check=True), rep)
        assert out.read_bytes() == data
    else:
        print("(no age command: apt-get install age)")
    for p in (plain, ct, out):
        p.unlink(missing_ok=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="16,256", help="sizes in MB, comma-separated")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    secret, recipient = generate_identity()
    with tempfile.TemporaryDirectory(prefix="encryption-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        d = Path(tmp)
        (d / "key").write_text(secret + "\n")
        (d / "key").chmod(0o600)
        for mb in (int(s) for s in args.sizes.split(",")):
            rep = args.repeat if mb <= 64 else max(1, args.repeat // 2)
            rows = measure(d, mb, rep, secret, recipient)
            print(f"\n{mb} MB, median of {rep} (ms; x cp; x pyrage in memory; throughput):")
            for name, ms in rows.items():
                ref = "pyrage.encrypt" if name.startswith("encrypt") else "pyrage.decrypt"
                base = rows[f"{name.split(':')[0]}: {ref}, in memory"] if name != "cp" else ms
                print(f"  {name:38s} {ms:8.1f}  {ms / rows['cp']:5.2f}x  {ms / base:5.2f}x  "
                      f"{(mb / (ms / 1000)):6.0f} MB/s")
        codes = ["pass", "import pyrage",
                 "import steps.crypto.age as a; a._aead(bytes(32)); a._public_of(bytes(range(32)))",
                 "import steps.wal.archive",
                 "import steps.wal.archive; import steps.crypto.age as a; a._aead(bytes(32)); "
                 "a._public_of(bytes(range(32)))"]
        bare, pyr, ours, wal, wal_ours = import_ms(codes, max(args.repeat, 9), d / "pycache")
    print(f"\nfresh interpreter, byte-code cached, least of {max(args.repeat, 9)}: bare {bare:.1f} ms; "
          f"+ pyrage {pyr - bare:+.1f} ms; + steps.crypto.age with the cryptography primitives it loads "
          f"{ours - bare:+.1f} ms; on top of steps.wal.archive (what a synchronous wal-push loads, {wal - bare:.1f} "
          f"ms) {wal_ours - wal:+.1f} ms")

if __name__ == "__main__":
    main()
