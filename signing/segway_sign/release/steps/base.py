"""The step type base class, the contexts a step runs and is checked with, and the registry."""

from __future__ import annotations

import inspect
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

from cryptography import x509

from ...errors import InputError, SegwayError, UsageError, VerificationError
from ..plan import Step

T = TypeVar("T")


@dataclass
class StepContext:
    """What a running step may use; paths are resolved by the runner."""

    step: Step
    out_dir: Path  # this step's directory inside the release (exists, empty)
    inputs: dict[str, Path]  # role -> file (deploy dir or an earlier step's output)
    input_sha256: dict[str, str]  # role -> hex digest
    key: Any  # cryptography private key, or None for key-less steps
    cert: x509.Certificate | None
    progress: Callable[[str, int, int], None] | None = None  # (label, done, total)
    named_key: Callable[[str], tuple[Any, x509.Certificate]] | None = None  # another plan key by name
    certs_dir: Path | None = None
    # A step that took the sha256 of an output from the written bytes (file name inside out_dir ->
    # hex) puts it here; the runner hashes the other outputs for the manifest.
    output_sha256: dict[str, str] = field(default_factory=dict)

    def option(self, name: str, default=None):
        return self.step.options.get(name, default)

    def input(self, role: str) -> Path:
        try:
            return self.inputs[role]
        except KeyError:
            raise InputError(f"step '{self.step.id}' needs input '{role}'") from None


@dataclass
class VerifyContext:
    step_id: str
    out_dir: Path
    record: dict  # the step's manifest entry
    certs: list[x509.Certificate]

    def first_trusted(self, check: Callable[[x509.Certificate], T], failure: str, *,
                      catch: tuple[type[Exception], ...] = (SegwayError,),
                      certs: list[x509.Certificate] | None = None, none_tried: str = "") -> T:
        """``check(cert)`` for each trusted certificate in turn (or each of ``certs``, a selection of
        them), until one does not raise ``catch``: its result. When none passes, VerificationError
        "<failure> (<the last error, or none_tried if there was none to try>)"."""
        errors = []
        for cert in self.certs if certs is None else certs:
            try:
                return check(cert)
            except catch as err:
                errors.append(str(err))
        raise VerificationError(f"{failure} ({errors[-1] if errors else none_tried})")


class StepType(ABC):
    """A step type; subclasses are registered with :func:`register` and documented in their docstring."""

    name: ClassVar[str] = ""
    needs_key: ClassVar[bool] = True  # False: the step signs nothing and names no key
    options: ClassVar[frozenset[str]] = frozenset()  # from the docstring's Options: section

    @abstractmethod
    def run(self, ctx: StepContext) -> dict:
        """Write the step's outputs into ``ctx.out_dir``; return the details the manifest records."""

    def check_options(self, step: Step) -> None:
        """Refuse, before any work, option values the step could not use (InputError)."""

    @abstractmethod
    def verify(self, ctx: VerifyContext) -> None:
        """Check the step's directory of a release whose manifest (and so every file's sha256) is
        already checked; raise a SegwayError if it is not what the step makes."""


def srk_index(options: dict) -> int:
    """The plan's ``srk_index`` option (SRKs count from 1, as in ``--srk-index`` and the fuse
    documentation; default 1), as the 0-based position in the SRK table."""
    value = options.get("srk_index", 1)
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        number = int(value) if isinstance(value, str) and value.strip().isdigit() else None
    if number == 0:
        raise InputError("option srk_index counts SRKs from 1 (1-4, the first SRK is 1), not 0")
    if number is None or not 1 <= number <= 4:
        raise InputError(f"option srk_index must be an SRK number from 1 to 4, not {value!r}")
    return number - 1


def check_srk_index(step: Step) -> None:
    """srk_index before any work: a plan counting SRKs from 0 is refused at once."""
    try:
        srk_index(step.options)
    except InputError as e:
        raise InputError(f"step '{step.id}': {e}") from None


_OPTION = re.compile(r"^(\s+)([a-z][a-z0-9_]*): \S")


def documented_options(cls: type) -> frozenset[str]:
    """The option names the ``Options:`` section of a class's docstring lists (one ``name: text``
    per option, continuation lines indented further). A class without the section is an error."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    if "Options: none" in lines:
        return frozenset()
    try:
        start = lines.index("Options:") + 1
    except ValueError:
        raise TypeError(f"{cls.__name__}: its docstring has no 'Options:' section") from None
    names, indent = [], None
    for line in lines[start:]:
        if line.strip() and not line[:1].isspace():
            break  # the next section
        m = _OPTION.match(line)
        if m and (indent is None or len(m.group(1)) == len(indent)):
            indent = m.group(1)
            names.append(m.group(2))
    if not names:
        raise TypeError(f"{cls.__name__}: its docstring's 'Options:' section lists no option")
    return frozenset(names)


REGISTRY: dict[str, StepType] = {}


def register(name: str):
    """Class decorator: make the class the step type ``name`` a plan names, with the options its
    docstring documents."""
    def add(cls: type[StepType]) -> type[StepType]:
        if name in REGISTRY:
            raise TypeError(f"step type '{name}' is registered twice")
        cls.name = name
        cls.options = documented_options(cls)
        REGISTRY[name] = cls()  # an abstract method left unwritten fails here, at import
        return cls
    return add


def get(name: str) -> StepType:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown step type '{name}'") from None


def describe() -> str:
    """Every step type's documentation (its docstring), in name order, as Markdown sections."""
    parts = []
    for name, stype in sorted(REGISTRY.items()):
        doc = inspect.cleandoc(type(stype).__doc__ or "")
        parts.append(f"### `{name}`\n\n```text\n{doc}\n```\n")
    return "\n".join(parts)
