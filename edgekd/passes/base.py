"""The pass interface: a small class, arguments in ``__init__``, ``run(state)`` → ``PassResult``, whose
``output`` is the pass's typed record (a ``PassOutput``) of what it produced."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

from edgekd.config import CompileConfig
from edgekd.errors import PreconditionError
from edgekd.specs import TargetSpec
from edgekd.state import TORCH_MODEL, CompileState, Metrics, PassOutput


@dataclass
class PassResult:
    state: CompileState
    changed: bool
    output: PassOutput | dict[str, Any] | None = None  # a dict: free-form figures of a user's own pass

    def __post_init__(self) -> None:
        if isinstance(self.output, dict):
            self.output = Metrics(self.output)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.output.summary() if self.output is not None else {}


class Pass(abc.ABC):
    name: ClassVar[str]
    requires: ClassVar[frozenset[str]] = frozenset()  # facts that must hold before
    provides: ClassVar[frozenset[str]] = frozenset()  # facts that hold after
    removes: ClassVar[frozenset[str]] = frozenset()  # facts that no longer hold after

    @classmethod
    def from_config(cls, config: CompileConfig, spec: TargetSpec) -> "Pass":
        """The pass as this compile wants it; passes with arguments override this."""
        return cls()

    @classmethod
    def wanted(cls, config: CompileConfig, spec: TargetSpec, facts: set[str]) -> bool:
        """Whether the target's default pipeline keeps this pass for this compile, given the facts the
        passes kept before it provide."""
        return cls.requires <= facts or not (cls.requires & {TORCH_MODEL})

    def check_requires(self, state: CompileState) -> None:
        missing = sorted(self.requires - state.facts)
        if missing:
            raise PreconditionError(
                f"pass {self.name!r} requires {', '.join(missing)}, which no earlier pass provided "
                f"(facts so far: {', '.join(sorted(state.facts)) or 'none'})"
            )

    @abc.abstractmethod
    def run(self, state: CompileState) -> PassResult: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
