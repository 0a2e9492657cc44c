"""The checks that need the whole runbook, added to the problems its schema finds.

They run on the raw data, so a file with schema problems still gets them: exactly one of run, argv,
action or manual per step; unique step ids; declared scenario names; known actions and their `with:`
arguments; template references (params, `run.*`, outputs of earlier action steps that share a scenario
with the step); templates inside shell quotes or here-documents; one `rto_end` step per scenario; param
defaults of the param's own type.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from runbook.errors import Problem
from runbook.loader.schema_errors import Scope, did_you_mean, has_item, translate
from runbook.loader.yaml_source import Loc, SourceMap
from runbook.model import Param
from runbook.params import coerce
from runbook.templating import (
    RUN_NAMES,
    Ref,
    has_template,
    heredoc_template_spans,
    quoted_template_spans,
    scan_refs,
)
from steps.registry import ACTIONS

_STEP_TEXT_FIELDS = ("title", "cwd")
_KINDS = ("run", "argv", "action", "manual")
_ONE_KIND = "a step needs exactly one of run, argv, action, manual"


@dataclass
class _Site:
    """One string that may hold templates: where it is, and what it may refer to."""

    loc: Loc
    text: str
    step_index: int | None  # None: the runbook's `target` (no step outputs there)
    shell: bool = False


class _RunbookChecks:
    """Checks that need the whole runbook, run on the raw data so they add to schema problems."""

    def __init__(self, data: dict[str, Any], smap: SourceMap) -> None:
        self.data = data
        self.smap = smap
        self.problems: list[Problem] = []
        params = data.get("params")
        self.params: dict[str, Any] = params if isinstance(params, dict) else {}
        scenarios = data.get("scenarios")
        self.scenarios: list[str] = list(scenarios) if isinstance(scenarios, dict) else []
        steps = data.get("steps")
        self.steps: list[tuple[int, dict[str, Any]]] = (
            [(i, s) for i, s in enumerate(steps) if isinstance(s, dict)] if isinstance(steps, list) else []
        )
        self.first_index: dict[str, int] = {}
        for i, s in self.steps:
            sid = s.get("id")
            if isinstance(sid, str):
                self.first_index.setdefault(sid, i)

    def run(self) -> list[Problem]:
        self._kinds()
        self._duplicate_ids()
        self._reminder_ids()
        self._scenario_names()
        self._actions()
        for site in self._sites():
            self._template(site)
        self._rto_end()
        self._param_defaults()
        return self.problems

    def _add(self, loc: Loc, message: str) -> None:
        self.problems.append(self.smap.problem(loc, message))

    def _step_name(self, i: int) -> str:
        sid = self.data["steps"][i].get("id")
        return f'step "{sid}"' if isinstance(sid, str) else f"step #{i + 1}"

    # kinds, ids and scenarios

    def _kinds(self) -> None:
        """Exactly one of run/argv/action/manual, checked even when other keys of the step are wrong."""
        for i, s in self.steps:
            kinds = [k for k in _KINDS if s.get(k) is not None]
            if not kinds:
                self._add(("steps", i), f"{self._step_name(i)} needs one of run, argv, action or manual")
            elif len(kinds) > 1:
                both = " and ".join(kinds)
                message = f"{self._step_name(i)} has {both}: {_ONE_KIND}"
                self.problems.append(self.smap.problem(("steps", i, kinds[1]), message, at_key=True))

    def _duplicate_ids(self) -> None:
        for i, s in self.steps:
            sid = s.get("id")
            if isinstance(sid, str) and self.first_index[sid] != i:
                first = self.smap.line_of(("steps", self.first_index[sid], "id"))
                self._add(("steps", i, "id"), f'duplicate step id "{sid}" (first at line {first})')

    def _reminder_ids(self) -> None:
        """A reminder's id names its acknowledgements in the journal: one id, one duty."""
        reminders = self.data.get("reminders")
        if not isinstance(reminders, list):
            return
        seen: dict[str, int] = {}
        for i, r in enumerate(reminders):
            rid = r.get("id") if isinstance(r, dict) else None
            if not isinstance(rid, str):
                continue
            if rid in seen:
                first = self.smap.line_of(("reminders", seen[rid], "id"))
                self._add(("reminders", i, "id"), f'duplicate reminder id "{rid}" (first at line {first})')
            seen.setdefault(rid, i)

    def _scenario_names(self) -> None:
        if not self.scenarios:
            return
        for i, s in self.steps:
            self._scenario_list(("steps", i, "scenarios"), s.get("scenarios"), self._step_name(i))
        for name, p in self.params.items():
            if isinstance(p, dict):
                self._scenario_list(("params", name, "scenarios"), p.get("scenarios"), f'param "{name}"')

    def _scenario_list(self, loc: Loc, names: Any, owner: str) -> None:
        if not isinstance(names, list):
            return
        declared = ", ".join(self.scenarios)
        for j, name in enumerate(names):
            if isinstance(name, str) and name not in self.scenarios:
                hint = did_you_mean(name, self.scenarios) or f" (declared: {declared})"
                self._add((*loc, j), f'unknown scenario "{name}" in {owner}{hint}')

    # actions

    def _actions(self) -> None:
        for i, s in self.steps:
            action = s.get("action")
            if not isinstance(action, str):
                continue
            if action not in ACTIONS:
                hint = did_you_mean(action, list(ACTIONS)) or f" (built-in actions: {', '.join(sorted(ACTIONS))})"
                self._add(("steps", i, "action"), f'unknown action "{action}"{hint}')
                continue
            args = s.get("with", {})
            if args is None or isinstance(args, dict):
                self._action_args(i, action, args or {})

    def _action_args(self, i: int, action: str, args: dict[str, Any]) -> None:
        try:
            model = ACTIONS[action].args_model()
        except (ImportError, AttributeError) as e:
            self._add(("steps", i, "action"), f'action "{action}" cannot be loaded: {e}')
            return
        try:
            model.model_validate(args)
        except ValidationError as e:
            errors = [err for err in e.errors(include_url=False) if not _templated(args, tuple(err["loc"]))]
            scope = Scope(model, args, base=("steps", i, "with"), owner=self._step_name(i), rel=("with",))
            self.problems.extend(translate(errors, scope, self.smap))  # type: ignore[arg-type]

    # templates

    def _sites(self) -> Iterator[_Site]:
        for key in ("target", "repository"):
            value = self.data.get(key)
            if isinstance(value, str):
                yield _Site((key,), value, None)
        for i, s in self.steps:
            yield from self._step_sites(i, s)

    def _step_sites(self, i: int, s: dict[str, Any]) -> Iterator[_Site]:
        base: Loc = ("steps", i)
        for key in _STEP_TEXT_FIELDS:
            if isinstance(s.get(key), str):
                yield _Site((*base, key), s[key], i)
        if isinstance(s.get("run"), str):
            yield _Site((*base, "run"), s["run"], i, shell=True)
        for key in ("argv", "env", "with"):
            for loc, text in _strings(s.get(key), (*base, key)):
                yield _Site(loc, text, i)
        confirm = s.get("confirm")
        if isinstance(confirm, dict) and isinstance(confirm.get("typed"), str):
            yield _Site((*base, "confirm", "typed"), confirm["typed"], i)

    def _template(self, site: _Site) -> None:
        if not has_template(site.text):
            return
        refs, errors = scan_refs(site.text)
        for err in errors:
            self._at(site, err.offset, err.offset + 2, err.message)
        quoted = quoted_template_spans(site.text) if site.shell else []
        heredoc = heredoc_template_spans(site.text) if site.shell else []
        for ref in refs:
            message = self._ref_problem(ref, site.step_index, str(site.loc[0]))
            if message:
                self._at(site, ref.start, ref.end, message)
        for ref in quoted:
            self._at(
                site,
                ref.start,
                ref.end,
                f"template {{{{ {ref.key} }}}} inside quotes would be quoted twice; "
                f"write it unquoted, e.g. --dbname={{{{ db_name }}}}",
            )
        for ref in heredoc:
            name = ref.name.upper() if ref.kind == "param" else "VALUE"
            self._at(
                site,
                ref.start,
                ref.end,
                f"template {{{{ {ref.key} }}}} inside a here-document would keep its shell quotes in the text; "
                f'pass it through env (env: {{{name}: "{{{{ {ref.key} }}}}"}}) and write ${name}',
            )

    def _at(self, site: _Site, start: int, end: int, message: str) -> None:
        self.problems.append(self.smap.text_problem(site.loc, site.text, start, end, message))

    def _ref_problem(self, ref: Ref, step_index: int | None, where: str = "target") -> str | None:
        if ref.kind == "param":
            if ref.name in self.params:
                return None
            return f'unknown param "{ref.name}" in template{did_you_mean(ref.name, list(self.params))}'
        if ref.kind == "run":
            if ref.name in RUN_NAMES:
                return None
            names = ", ".join(f"run.{n}" for n in sorted(RUN_NAMES))
            hint = did_you_mean(f"run.{ref.name}", [f"run.{n}" for n in RUN_NAMES]) or f" (there are: {names})"
            return f'unknown run built-in "run.{ref.name}"{hint}'
        if step_index is None:
            return f"{{{{ {ref.key} }}}}: the {where} can use params and run.* only, not step outputs"
        return self._step_ref_problem(ref, step_index)

    def _step_ref_problem(self, ref: Ref, here: int) -> str | None:
        sid = ref.step or ""
        shown = f"{{{{ {ref.key} }}}}"
        if sid not in self.first_index:
            return f'{shown}: no step "{sid}"{did_you_mean(sid, list(self.first_index))}'
        there = self.first_index[sid]
        if there >= here:
            which = "this step" if there == here else "a later step"
            return f'{shown}: step "{sid}" is {which}; a template can only use outputs of earlier steps'
        step = self.data["steps"][there]
        action = step.get("action")
        if not isinstance(action, str):
            return f'{shown}: step "{sid}" is not an action step; only built-in actions have outputs'
        if action not in ACTIONS:
            return None  # reported as an unknown action
        outputs = ACTIONS[action].outputs
        if ref.name not in outputs:
            listed = ", ".join(outputs) or "none"
            hint = did_you_mean(ref.name, list(outputs)) or f" (it has: {listed})"
            return f'{shown}: action "{action}" of step "{sid}" has no output "{ref.name}"{hint}'
        return self._scenario_overlap(shown, sid, step, here)

    def _scenario_overlap(self, shown: str, sid: str, producer: dict[str, Any], here: int) -> str | None:
        theirs, mine = producer.get("scenarios"), self.data["steps"][here].get("scenarios")
        if isinstance(theirs, list) and isinstance(mine, list) and not set(map(str, theirs)) & set(map(str, mine)):
            return f'{shown}: step "{sid}" never runs in the same scenario as this step'
        return None

    # rto_end and defaults

    def _rto_end(self) -> None:
        marked = [(i, s) for i, s in self.steps if s.get("rto_end") is True]
        for n, (i, s) in enumerate(marked):
            for j, earlier in marked[:n]:
                shared = _shared_scenarios(earlier.get("scenarios"), s.get("scenarios"), self.scenarios)
                if shared is None:
                    continue
                plural = "s" if "," in (shared or "") else ""
                scope = f" in scenario{plural} {shared}" if shared else ""
                line = self.smap.line_of(("steps", j, "rto_end"))
                self._add(
                    ("steps", i, "rto_end"),
                    f"more than one rto_end step{scope}: {self._step_name(j)} (line {line}) already ends the RTO",
                )
                break

    def _param_defaults(self) -> None:
        for name, pdata in self.params.items():
            if not isinstance(pdata, dict) or pdata.get("default") is None:
                continue
            try:
                param = Param.model_validate(pdata)
            except ValidationError:
                continue  # reported by the schema
            try:
                coerce(str(name), param, pdata["default"])
            except ValueError as e:
                self._add(("params", name, "default"), f"bad default: {e}")


def _shared_scenarios(a: Any, b: Any, declared: list[str]) -> str | None:
    """`""` when two steps run together in every scenario, `'"x", "y"'` for some, None for none."""
    if a is None and b is None:
        return ""
    universe = set(declared) | {x for x in (a or []) + (b or []) if isinstance(x, str)}
    sa = universe if a is None else {x for x in a if isinstance(x, str)}
    sb = universe if b is None else {x for x in b if isinstance(x, str)}
    shared = [x for x in (declared or sorted(universe)) if x in sa & sb]
    return ", ".join(f'"{x}"' for x in shared) if shared else None


def _strings(obj: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    """Every string inside nested dicts and lists, with its location."""
    if isinstance(obj, str):
        yield loc, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, (*loc, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _strings(v, (*loc, i))


def _templated(data: Any, loc: Loc) -> bool:
    """True when the value at `loc` (or a value on the way there) is a string with a template."""
    cur = data
    for seg in loc:
        if isinstance(cur, str):
            break
        if not has_item(cur, seg):
            return False
        cur = cur[seg]
    return isinstance(cur, str) and has_template(cur)


def runbook_checks(data: dict[str, Any], smap: SourceMap, schema: list[Problem]) -> list[Problem]:
    """The schema's problems (less those a whole-file check says better) and the whole-file checks'."""
    kept = [p for p in schema if _ONE_KIND not in p.message]
    return kept + _RunbookChecks(data, smap).run()
