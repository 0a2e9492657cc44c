"""The catalogue of built-in actions: name, argument model, declared outputs.

Importing this module must stay cheap (the validator and the engine use it); an action's own heavy
imports (boto3, psycopg) happen inside its `main`, which runs only in the child process.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel


@dataclass(frozen=True)
class ActionSpec:
    name: str
    summary: str
    module: str  # steps.<module> holds `Args` (a pydantic model) and `main(args, events) -> int`
    outputs: dict[str, str] = field(default_factory=dict)  # output name -> what it holds

    def args_model(self) -> type[BaseModel]:
        return importlib.import_module(self.module).Args  # type: ignore[no-any-return]

    def entry(self) -> Callable[..., int]:
        return importlib.import_module(self.module).main  # type: ignore[no-any-return]


ACTIONS: dict[str, ActionSpec] = {
    spec.name: spec
    for spec in [
        ActionSpec(
            name="wait-postgres",
            summary="Wait until a PostgreSQL server accepts connections (pg_isready), with a deadline",
            module="steps.wait_postgres",
            outputs={"waited_s": "seconds until the server answered"},
        ),
    ]
}
