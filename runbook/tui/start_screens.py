"""Before a run: the fleet's clusters to choose from (a runbook with `fleet:`), the offer to resume an open run of
this runbook, then the parameter form.

The form validates each value live against its type and pattern (the same code the engine uses);
Start stays disabled while anything is wrong. Opening the run (lock, secrets) happens on Start.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from datetime import datetime
from typing import Any

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from runbook.errors import RunbookError
from runbook.model import Runbook
from runbook.params import coerce, to_text
from runbook.session import RunOptions
from runbook.state import RunState


class FleetScreen(Screen[None]):
    """The runbook's `fleet:` lists several clusters (one repository config each): choose the one to recover. The
    chosen config becomes the parameter the runbook's `repository:` names, for the form and the run. Each line
    gets its verdict from `runbook status --all` (a child process, bounded) once it answers; choosing does not
    wait for it."""

    BINDINGS = [Binding("q", "app.quit", "Quit", id="fleet.quit", tooltip="Leave without starting anything")]

    def __init__(self, runbook: Runbook, source: str, configs: list[Any], param: str) -> None:
        super().__init__()
        self.runbook = runbook
        self.source = source
        self.configs = configs  # Path of each repository config, in the order shown
        self.param = param

    def compose(self) -> ComposeResult:
        yield Static(Text.assemble((self.runbook.name, "bold"), " · which cluster?"), id="start-title")
        yield Static(f"The fleet in {escape(self.source)}: choose the cluster this run recovers with ↑↓ and Enter "
                     f"(its config becomes the parameter {escape(self.param)}).", classes="explain")
        yield Static(Text("asking runbook status --all…", style="dim"), id="verdict")
        yield OptionList(*[Option(self._label(c, None), id=str(i)) for i, c in enumerate(self.configs)], id="clusters")
        yield Footer()

    @staticmethod
    def _label(config: Any, line: dict[str, Any] | None) -> Text:
        stem = config.stem if len(config.stem) <= 16 else config.stem[:7] + "…" + config.stem[-8:]
        name = Text(f"{stem:16} ", style="bold")
        if line is None:
            return name + Text(str(config), style="dim")
        style = {"ok": "green", "warning": "bold yellow"}.get(line["verdict"], "bold red")
        shown = {"ok": "ok", "warning": "WARNING", "red": "RED"}.get(line["verdict"], "ERROR")
        why = (line.get("error") or next(iter(line.get("reasons") or []), "")) if line["verdict"] != "ok" else ""
        why = why.split(": ", 1)[1] if why.split(": ", 1)[0] in ("red", "warning") else why
        why = why.replace(f"{config.absolute()}:", "").strip()
        why = why if len(why) <= 50 else why[:49] + "…"  # one line at 80 columns; status -c shows the rest
        return name + Text(f"{shown:8}", style=style) + Text(why or str(config), style="dim")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def set_fleet(self, doc: dict[str, Any] | None, line: str, exit_code: int | None) -> None:
        """`runbook status --all --json`'s document (None: it did not answer): each config's line gets its verdict."""
        style = {0: "green", 1: "bold yellow", 2: "bold red"}.get(exit_code if exit_code is not None else 3, "yellow")
        with contextlib.suppress(Exception):  # the screen may be gone already (a cluster was chosen)
            self.query_one("#verdict", Static).update(Text(line, style=style))
            if doc is None:
                return
            lines = {(c["config"], c["name"]): c for c in doc.get("clusters", [])}
            options = self.query_one(OptionList)
            for i, config in enumerate(self.configs):
                found = lines.get((str(config.absolute()), config.stem))
                if found is not None:
                    options.replace_option_prompt(str(i), self._label(config, found))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        app: Any = self.app
        app.choose_cluster(self.configs[int(str(event.option.id))])


class ResumeOfferScreen(Screen[None]):
    """Open runs of this runbook exist: resume one, or start a new run."""

    BINDINGS = [Binding("q", "app.quit", "Quit", id="start.quit", tooltip="Leave without starting anything")]

    def __init__(self, runbook: Runbook, open_runs: list[RunState]) -> None:
        super().__init__()
        self.runbook = runbook
        self.open_runs = open_runs

    def compose(self) -> ComposeResult:
        yield Static(Text.assemble((self.runbook.name, "bold"), " · unfinished runs"), id="start-title")
        yield Static("These runs of this runbook were not closed. Resume one, or start a new run.",
                     classes="explain")
        options = [Option("Start a new run", id="new")]
        for r in self.open_runs:
            stuck = [s for s in r.order if r.steps[s].status.value in ("running", "interrupted", "failed", "awaiting")]
            where = f" at {stuck[0]} ({r.steps[stuck[0]].status.value})" if stuck else ""
            started = r.started_at.strftime("%Y-%m-%d %H:%M") if r.started_at else "?"
            label = f"Resume {r.run_id} · {r.scenario} · {r.mode} · started {started} by {r.operator.get('user', '?')}{where}"
            options.append(Option(label, id=r.run_id))
        yield OptionList(*options, id="runs")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        app: Any = self.app
        if event.option.id == "new":
            app.show_params()
        else:
            app.resume(str(event.option.id))


class ParamsScreen(Screen[None]):
    """Scenario, parameters and incident start, validated as they are typed."""

    BINDINGS = [
        Binding("ctrl+s", "start", "Start", id="params.start", tooltip="Open the run with these values"),
        Binding("escape", "app.quit", "Quit", id="params.quit", tooltip="Leave without starting anything"),
    ]

    def __init__(self, runbook: Runbook, opts: RunOptions, given: dict[str, Any], now: datetime,
                 drills: dict[str, Any] | None = None, status_pending: bool = False) -> None:
        super().__init__()
        self.runbook = runbook
        self.opts = opts
        self.given = given
        self.now = now
        self.drills = drills or {}
        self.status_pending = status_pending  # a repository is known: `runbook status` is being asked
        self.errors: dict[str, str] = {}

    def set_verdict(self, line: str, exit_code: int | None) -> None:
        """`runbook status --one-line`, coloured by its exit code (0 ok, 1 warning, 2 red, 3 could not run)."""
        style = {0: "green", 1: "bold yellow", 2: "bold red"}.get(exit_code if exit_code is not None else 3, "yellow")
        with contextlib.suppress(Exception):  # the screen may be gone already (the run started)
            self.query_one("#verdict", Static).update(Text(line, style=style))

    def _drill_lines(self) -> Text:
        """The last good live or drill run of each scenario; STALE past 30 days or never."""
        from runbook.durations import format_duration

        out = Text()
        for scenario, d in sorted(self.drills.items()):
            if d.stale:
                when = f"last good run {d.age_text} ago" if d.run_id else "never drilled"
                out.append(f"  STALE {scenario}: {when}\n", style="bold yellow")
            else:
                age = d.age_text if d.age_text == "today" else f"{d.age_text} ago"
                out.append(f"  ok    {scenario}: drilled {age}, RTO {format_duration(d.rto_s)}\n", style="green")
        return out

    def compose(self) -> ComposeResult:
        rb = self.runbook
        mode = (self.opts.mode or "live").upper()
        badge = (f" {mode} ", "bold white on red") if mode == "LIVE" else (mode, "bold")
        yield Static(Text.assemble((rb.name, "bold"), " · new ", badge, " run"), id="start-title")
        if self.status_pending:
            yield Static(Text("would we make it now? asking runbook status…", style="dim"), id="verdict")
        with VerticalScroll(id="form"):
            if self.drills:
                yield Static(self._drill_lines(), id="drills")
            if rb.scenarios:
                options = [(f"{name} — {sc.help}" if sc.help else name, name) for name, sc in rb.scenarios.items()]
                value = self.opts.scenario if self.opts.scenario in rb.scenarios else (
                    next(iter(rb.scenarios)) if len(rb.scenarios) == 1 else Select.NULL)
                yield Label("Scenario", classes="field-label")
                yield Select(options, value=value, id="scenario", allow_blank=len(rb.scenarios) > 1, compact=True)
            yield Label("Incident start (ISO 8601 with zone; the RTO clock starts here)", classes="field-label")
            yield Input(value=self.opts.incident_start or self.now.astimezone().isoformat(timespec="seconds"),
                        id="incident_start", compact=True)
            yield Static("", id="err-incident_start", classes="field-error")
            for name, p in rb.params.items():
                raw = self.given.get(name, p.default)
                text = "" if raw is None else (to_text(raw) if not isinstance(raw, str) else raw)
                needs = " (required)" if p.required else (f" (required for {', '.join(p.scenarios)})" if p.scenarios else "")
                with Vertical(id=f"field-{name}", classes="field"):
                    yield Label(f"{name} · {p.type.value}{needs}", classes="field-label")
                    if p.help:
                        yield Static(escape(p.help), classes="field-help")
                    yield Input(value=text, id=f"p-{name}", password=p.secret, placeholder=p.pattern or "",
                                compact=True)
                    yield Static("", id=f"err-{name}", classes="field-error")
        with Horizontal(id="start-buttons"):
            yield Button("Start the run", id="start", variant="success")
            yield Static("", id="start-error")
        yield Footer()

    def _shown(self) -> set[str]:
        """The params the chosen scenario uses (every param while none is chosen): only those are asked."""
        from runbook.session import params_used

        scenario = self._scenario()
        if self.runbook.scenarios and scenario is None:
            return set(self.runbook.params)
        return params_used(self.runbook, scenario, self.opts.mode or "live") & set(self.runbook.params) | {
            n for n, p in self.runbook.params.items() if p.required or (p.scenarios and scenario in p.scenarios)}

    def _show_fields(self) -> None:
        shown = self._shown()
        for name in self.runbook.params:
            self.query_one(f"#field-{name}", Vertical).display = name in shown

    def on_mount(self) -> None:
        self._show_fields()
        for name in self.runbook.params:
            self._check(name)
        self._check_incident()
        if self.runbook.scenarios and self._scenario() is None:
            self.query_one("#scenario", Select).focus()  # the first choice to make
        else:
            self.query("Input").first().focus()

    def _scenario(self) -> str | None:
        if not self.runbook.scenarios:
            return None
        v = self.query_one("#scenario", Select).value
        return v if isinstance(v, str) else None

    def _check(self, name: str) -> None:
        p = self.runbook.params[name]
        if not self.query_one(f"#field-{name}", Vertical).display:
            self._set_error(name, "")  # not asked in this scenario: nothing to fix
            return
        value = self.query_one(f"#p-{name}", Input).value
        scenario = self._scenario()
        needed = p.required or (scenario is not None and p.scenarios is not None and scenario in p.scenarios)
        msg = ""
        if value == "":  # an empty field gives nothing: the profile's value or the default stands (runbook.params)
            if needed and p.default is None and self.given.get(name) is None:
                msg = "required here"
        else:
            try:
                coerce(name, p, value)
            except ValueError as e:
                msg = str(e)
        self._set_error(name, msg)

    def _check_incident(self) -> None:
        from runbook.session import parse_when

        value = self.query_one("#incident_start", Input).value
        try:
            parse_when(value, "incident start", self.now)
            self._set_error("incident_start", "")
        except RunbookError as e:
            self._set_error("incident_start", e.message)

    def _set_error(self, key: str, msg: str) -> None:
        self.query_one(f"#err-{key}", Static).update(Text(msg, style="bold red") if msg else "")
        if msg:
            self.errors[key] = msg
        else:
            self.errors.pop(key, None)
        self.query_one("#start", Button).disabled = bool(self.errors) or (
            bool(self.runbook.scenarios) and self._scenario() is None)

    def on_input_changed(self, event: Input.Changed) -> None:
        iid = event.input.id or ""
        if iid.startswith("p-"):
            self._check(iid[2:])
        elif iid == "incident_start":
            self._check_incident()

    def on_select_changed(self, event: Select.Changed) -> None:
        self._show_fields()
        for name in self.runbook.params:
            self._check(name)
        self.query_one("#start-error", Static).update("")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self.action_start()

    def action_start(self) -> None:
        if self.runbook.scenarios and self._scenario() is None:
            self.query_one("#start-error", Static).update(Text("Choose a scenario first.", style="bold red"))
            self.query_one("#scenario", Select).focus()
            return
        if self.errors:
            first = next(iter(self.errors))
            names = ", ".join(self.errors)
            self.query_one("#start-error", Static).update(Text(f"Fix first: {names}", style="bold red"))
            target = "#incident_start" if first == "incident_start" else f"#p-{first}"
            self.query_one(target, Input).focus()
            return
        sets = {}
        shown = self._shown()
        for name in self.runbook.params:
            if name not in shown:
                continue  # not asked in this scenario: its default (or the profile's value) stands
            value = self.query_one(f"#p-{name}", Input).value
            if value != "":
                sets[name] = value
        opts = replace(self.opts, scenario=self._scenario(), sets=sets,
                       incident_start=self.query_one("#incident_start", Input).value)
        if (self.opts.mode or "live") != "live":
            self._open(opts)
            return
        # A live run acts on production: the operator types its target before anything opens.
        from runbook.session import render_target
        from runbook.tui.modals import TextModal

        params = {n: p.default for n, p in self.runbook.params.items() if p.default is not None}
        params.update(self.given)
        params.update(sets)
        expected = render_target(self.runbook, params) if self.runbook.target else "live"
        what = f"its target [b]{escape(expected)}[/b]" if self.runbook.target else "[b]live[/b]"
        body = (f"A [b]LIVE[/b] run acts on production. Type {what} to start it.\n"
                "Anything else starts nothing (a drill or a rehearsal: runbook run --mode drill|rehearsal).")

        def typed(value: str | None) -> None:
            if value == expected:
                self._open(opts)
            elif value is not None:
                self.query_one("#start-error", Static).update(
                    Text(f"{value!r} is not {expected!r}: nothing was started", style="bold red"))

        self.app.push_screen(TextModal("Start a LIVE run", body, placeholder="type the value shown above"), typed)

    def _open(self, opts: RunOptions) -> None:
        app: Any = self.app
        error = app.open_new(opts)
        if error:
            self.query_one("#start-error", Static).update(Text(error, style="bold red"))
