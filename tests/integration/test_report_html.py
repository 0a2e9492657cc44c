"""The HTML report: one self-contained file, well-formed, escaped, and rendered by a real browser.

The end-to-end test runs a small runbook through the real engine and asks the real CLI for the report;
a realistic drill (a folded hand-made journal, see tests/support/journals.py) shows the RPO and a long timeline.
Both are rendered with headless Chromium (Debian's `chromium`) to a PNG. Set RUNBOOK_KEEP_SCREENSHOTS=DIR
to keep the pictures for a look.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from runbook import events as ev
from runbook.engine import Engine
from runbook.events import Wait
from runbook.report_html import render_html, tick_label, tick_step
from tests.conftest import run_cli
from tests.support.engine import drive, open_run, yes
from tests.support.journals import T0, JournalBuilder, logical_drill

HOSTILE = "<script>alert(1)</script>"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
CHROMIUM_INSTALL = "apt-get install -y chromium (as root; scripts/setup.sh installs it)"


class Structure(HTMLParser):
    """Checks that every tag is closed in order and collects what the tests look at."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.bars: list[dict[str, str | None]] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        if tag == "rect" and ("class", "bar") in attrs:
            self.bars.append(dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        if tag == "rect" and ("class", "bar") in attrs:
            self.bars.append(dict(attrs))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
            if tag in self.stack:
                while self.stack.pop() != tag:
                    pass
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(doc: str) -> Structure:
    p = Structure()
    p.feed(doc)
    p.close()
    assert not p.problems, p.problems[:5]
    assert not p.stack, f"unclosed tags: {p.stack}"
    return p


def assert_self_contained(doc: str, p: Structure) -> None:
    assert "script" not in p.tags, "the report needs no JavaScript"
    assert not {"link", "img", "iframe", "object", "embed"} & set(p.tags)
    for name, value in p.attrs:
        assert name not in ("src", "href"), f"external reference: {name}={value}"
    assert not re.search(r"url\((?!#)", doc), "CSS must not load anything"
    assert "@import" not in doc and "http://" not in doc and "https://" not in doc
    assert p.tags.count("style") == 1 and "svg" in p.tags


def find_chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail(f"Chromium is missing, the HTML report cannot be checked in a browser: {CHROMIUM_INSTALL}")
    return exe


def screenshot(html_file: Path, png: Path, tmp: Path) -> Path:
    """Headless Chromium renders the file to a 1200x1600 PNG; no network, no profile left behind."""
    exe = find_chromium()
    profile = tmp / "chromium-profile"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1200,1600",
           html_file.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp)
    assert r.returncode == 0, f"chromium failed ({r.returncode}): {r.stderr[-2000:]}"
    keep = os.environ.get("RUNBOOK_KEEP_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(keep) / png.name)
        shutil.copy(html_file, Path(keep) / html_file.name)
    return png


def assert_real_picture(png: Path) -> None:
    """A PNG of the window's size whose pixels are far from uniform (a blank page compresses to nothing)."""
    assert png.is_file(), "chromium wrote no screenshot"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 1600)
    assert len(data) > 30_000, f"the screenshot is suspiciously small ({len(data)} bytes)"
    idat = b""
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    assert len(set(raw)) > 64, "the screenshot looks blank"


# ---- end to end: a real run, the real CLI, a real browser ----------------------------------------------

E2E_RUNBOOK = """
    version: 1
    name: Drill <of> "AssetFlow" & co
    targets: {rto: 2h, rpo: 5m}
    scenarios:
      restore-latest: {help: the newest backup}
    steps:
      - id: tell
        title: Tell the <stakeholders>
        manual: [Post in the incident channel, Page the service owner]
      - id: prepare
        title: Prepare the target
        run: "sleep 0.3; echo prepared"
        confirm: none
      - id: warm-up
        title: Optional warm-up
        run: "sleep 0.2; echo failing; exit 3"
        on_failure: continue
        confirm: none
      - id: maintenance
        title: Show the maintenance page
        run: "echo never runs"
      - id: restore
        title: Restore the database
        run: "sleep 0.4; echo restored"
        confirm: none
        rto_end: true
      - id: cleanup
        title: Clean up
        run: "sleep 0.2"
        confirm: none
"""


async def test_html_report_of_a_real_run_renders_in_chromium(write_runbook, state_dir: Path, tmp_path: Path) -> None:
    path = write_runbook(E2E_RUNBOOK)
    incident = (datetime.now(UTC) - timedelta(seconds=2)).isoformat()
    engine = open_run(path, state_dir, mode="drill", incident_start=incident)
    noted: list[str] = []

    async def script(e: Engine, w: ev.Waiting) -> None:
        if not noted:
            await e.note(f"{HOSTILE} & the pager was silent")
            noted.append("x")
        if w.step_id == "maintenance" and w.wait == Wait.confirm:
            await e.skip(w.step_id, "no load balancer in the <sandbox>")
            return
        await yes(e, w)

    finished, _ = await drive(engine, script)
    assert finished.status == "completed", finished.detail
    run_id = engine.state.run_id
    out = tmp_path / "report-e2e.html"
    r = run_cli("report", run_id, "--format", "html", "-o", str(out), "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stderr
    doc = out.read_text(encoding="utf-8")
    p = parse(doc)
    assert_self_contained(doc, p)
    # one bar per step, each with its outcome
    bars = {b["data-step"]: b["data-status"] for b in p.bars}
    assert list(bars) == ["tell", "prepare", "warm-up", "maintenance", "restore", "cleanup"]
    assert bars["warm-up"] == "failed" and bars["maintenance"] == "skipped" and bars["restore"] == "succeeded"
    # user data is escaped everywhere
    assert HOSTILE not in doc and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; the pager was silent" in doc
    assert "<stakeholders>" not in doc and "Tell the &lt;stakeholders&gt;" in doc
    assert "no load balancer in the &lt;sandbox&gt;" in doc
    text = " ".join(p.text)
    # header facts
    assert "DRILL" in text and run_id in text and "restore-latest" in text and "completed" in text
    user = engine.state.operator["user"]
    assert f"{user}@{engine.state.operator['host']}" in text
    assert 'Drill <of> "AssetFlow" & co' in text  # the parser unescapes: the name survived intact
    # RTO: achieved vs target, service restored at the rto_end step vs run closed, the verdict
    assert "service restored" in text and "Restore the database" in text and "Run closed" in text
    assert re.search(r"0:0\d:\d\d \(service restored\)", text) and "met" in text
    assert "RTO target 2:00:00 is off this scale" in text  # a 3-minute run against 2 hours
    assert "From the incident start to the start of the run" in text  # the band before the run
    # steps table, skips with reasons, notes, the full timeline
    assert "exit 3" in text and "Skipped steps" in text and "Notes" in text and "Timeline" in text
    assert 'id="rpo"' not in doc  # shell steps report no recovery point
    png = screenshot(out, tmp_path / "report-e2e.png", tmp_path)
    assert_real_picture(png)


# ---- a realistic drill (folded journal): RPO, checks, a long timeline ---------------------------------


def test_html_report_of_a_realistic_drill(tmp_path: Path) -> None:
    st = logical_drill(note=f"{HOSTILE} restore slower than usual").state()
    titles = {"communicate": "Tell the stakeholders", "isolate": "Show the maintenance page",
              "provision": "Check the target server", "fetch": "Fetch the newest backup",
              "create-db": "Create the empty database", "restore": "Restore into the new database",
              "verify": "Check the recovered database",
              "switch-over": "Point the application at the recovered database",
              "maintenance-off": "Hide the maintenance page", "reprotect": "Protect the recovered server again",
              "all-clear": "All clear"}
    doc = render_html(st, titles, T0 + timedelta(hours=3))
    p = parse(doc)
    assert_self_contained(doc, p)
    assert len(p.bars) == len(st.order) == 11
    text = " ".join(p.text)
    assert HOSTILE not in doc and "&lt;script&gt;" in doc
    # the RPO section: window against the target, plain words about the logical backup, rows lost
    assert "Data-loss window" in text and "9:00:00" in text and "missed" in text
    assert "a logical backup alone cannot meet a 5-minute RPO" in text and "pitr" in text
    assert "Rows lost" in text and "42 (counted by step verify)" in text
    # the chart: the target is in range here, both lines drawn, minute ticks
    assert "RTO target 2:00:00" in text and "service restored 1:06:00" in text and "run closed 1:30:00" in text
    assert "minutes since the incident start" in text
    # verification checks
    assert "row counts match the manifest" in text and "slow: 4.2 s" in text
    out = tmp_path / "report-drill.html"
    out.write_text(doc, encoding="utf-8")
    assert_real_picture(screenshot(out, tmp_path / "report-drill.png", tmp_path))


def test_every_user_string_is_escaped() -> None:
    b = JournalBuilder(["x"])
    b.shown(0, "x", kind="action", command=f"fetch-latest-backup {HOSTILE}")
    b.ran(0, 1, "x", detail=HOSTILE, rto_end=True)
    b.output(1, "x", "snapshot_time", HOSTILE)
    b.output(1, "x", "rows_lost", HOSTILE)
    b.add(1, "step-check", step="x", name=HOSTILE, status=HOSTILE, hint=HOSTILE)
    b.add(1, "note", step=None, text=HOSTILE)
    b.add(1, "warning", text=HOSTILE)
    st = b.finish(2, detail=HOSTILE).state()
    st.warnings.append(HOSTILE)
    doc = render_html(st, {"x": HOSTILE}, T0 + timedelta(hours=1))
    assert HOSTILE not in doc and "<script" not in doc
    parse(doc)


def test_a_run_still_open_shows_its_clock_so_far() -> None:
    b = JournalBuilder(["a", "b", "c"])
    b.shown(0, "a").ran(0, 4, "a").shown(4, "b").add(4, "step-started", step="b", attempt=1, command="x")
    doc = render_html(b.state(), {}, T0 + timedelta(minutes=10))
    p = parse(doc)
    text = " ".join(p.text)
    assert "so far" in text and "still open" in text and "not reached" in text
    assert [bar["data-step"] for bar in p.bars] == ["a", "b"]


def test_ticks_are_round_and_labelled_in_minutes() -> None:
    assert tick_step(90 * 60) == 600 and tick_label(1800, 600) == "30"
    assert tick_step(7500) == 900 and tick_label(7200, 900) == "120"
    assert tick_step(200) == 30 and tick_label(90, 30) == "1:30"
    assert tick_step(3) == 0.5 and tick_label(1.5, 0.5) == "0:01.5" and tick_label(2.0, 0.5) == "0:02"


def test_missing_chromium_fails_and_names_the_install_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=re.escape("apt-get install -y chromium")):
        find_chromium()
