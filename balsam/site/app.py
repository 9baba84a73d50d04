"""The newer API's application classes (``balsam.site.ApplicationDefinition``).

A site app is a class in ``<site>/apps/<module>.py``, addressed as ``module.Class``. Its
``command_template`` is rendered with Jinja2 from a job's ``parameters`` when the job is
*created* (every value shell-quoted), and the rendered command is stored with the job: the
launcher runs it like any classic command. The hooks (``preprocess``, ``postprocess``,
``handle_error``, ``handle_timeout``) are methods run by processing in a subprocess with
``self.job`` bound (:mod:`balsam.api.hooks`); assigning ``self.job.state`` or ``self.job.data``
is how a hook moves or annotates the job.

Parameters are the template's variables plus those declared in ``parameters``; a declaration is
the 0.6 form ``{"required": bool, "default": value, "help": text}`` or, shorter, a plain default
value. A template variable that is not declared is required.

A class may define ``run(self, ...)`` instead of a ``command_template`` (a *function app*, as in
0.6): the job's ``parameters`` are ``run()``'s keyword arguments and its ``args`` (an addition
to 0.6/0.7, which pass keywords only) its positional ones, checked against its signature when
the job is created, and the launcher calls ``run()`` on the compute node
(:mod:`balsam.site.pyfunc`). A class needs one of the two, not both.

``transfers`` declares 0.6's transfer slots; :func:`resolve_transfers` checks a job's values
against them (unknown or missing slots, locations) when the job is created.
"""
from __future__ import annotations

import functools
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import jinja2
import jinja2.meta

from balsam.core.states import State
from balsam.errors import BalsamError
from balsam.processing.transfers import slots
from balsam.site import pyfunc

_SLOT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False,
                          keep_trailing_newline=False,
                          finalize=lambda value: shlex.quote(str(value)))


@functools.lru_cache(maxsize=256)
def _compiled(template: str) -> jinja2.Template:
    """A template compiled once (creating many jobs of one app renders it many times)."""
    return _ENV.from_string(template)


@functools.lru_cache(maxsize=256)
def _variables(template: str) -> frozenset[str]:
    return frozenset(jinja2.meta.find_undeclared_variables(_ENV.parse(template)))


class AppDefinitionError(BalsamError):
    """A site app class that cannot be used: bad template, parameters or variables."""


class ParameterError(BalsamError):
    """A job's parameters do not fit its app: missing, unknown, or not renderable."""


@dataclass(frozen=True)
class Parameter:
    """One parameter of an app: required, or else its default."""

    name: str
    required: bool
    default: Any = None
    help: str = ""


class ApplicationDefinition:
    """Base class of site apps (see the module docstring). Subclasses set class attributes and
    override the hooks they need; the defaults are the 0.6 ones."""

    command_template: ClassVar[str] = ""
    parameters: ClassVar[dict[str, Any]] = {}
    environment_variables: ClassVar[dict[str, str]] = {}
    cleanup_files: ClassVar[list[str]] = []
    transfers: ClassVar[dict[str, Any]] = {}
    description: ClassVar[str] = ""

    def __init__(self, job: Any = None) -> None:
        self.job = job

    # ---- hooks (run by processing; see balsam.api.hooks) --------------------------------------

    def shell_preamble(self) -> Any:
        """Shell lines sourced before the command (str or list of str; evaluated when the app is
        registered, without a job)."""
        return ""

    def preprocess(self) -> None:
        """Runs in STAGED_IN; the default makes the job runnable."""
        self.job.state = State.PREPROCESSED.value

    def postprocess(self) -> None:
        """Runs in RUN_DONE; the default finishes the run."""
        self.job.state = State.POSTPROCESSED.value

    def handle_error(self) -> None:
        """Runs in RUN_ERROR (non-zero exit); the default fails the job."""
        self.job.state = State.FAILED.value

    def handle_timeout(self) -> None:
        """Runs in RUN_TIMEOUT; the default runs the job again."""
        self.job.state = State.RESTART_READY.value

    # ---- class-level checks and rendering ----------------------------------------------------

    @classmethod
    def overrides(cls, method: str) -> bool:
        """True if this class defines ``method`` itself (not the base class default)."""
        return getattr(cls, method) is not getattr(ApplicationDefinition, method)

    @classmethod
    def is_function(cls) -> bool:
        """True for a function app: the class defines ``run()`` (no command template)."""
        return callable(getattr(cls, "run", None))

    @classmethod
    def parameter_spec(cls) -> dict[str, Parameter]:
        """Every parameter: declared ones, then undeclared template variables (required); for
        a function app, ``run()``'s keyword parameters."""
        if cls.is_function():
            return cls._run_spec()
        spec: dict[str, Parameter] = {}
        declared = cls.parameters
        if not isinstance(declared, Mapping):
            raise AppDefinitionError(f"{cls.__name__}.parameters must be a dict, not "
                                     f"{type(declared).__name__}")
        for name, decl in declared.items():
            if isinstance(decl, Mapping):
                unknown = set(decl) - {"required", "default", "help"}
                if unknown:
                    raise AppDefinitionError(
                        f"{cls.__name__}.parameters[{name!r}] has unknown key(s) "
                        f"{', '.join(sorted(unknown))} (use required, default, help)")
                required = bool(decl.get("required", "default" not in decl))
                spec[name] = Parameter(name, required, decl.get("default"),
                                       str(decl.get("help", "")))
            else:
                spec[name] = Parameter(name, False, decl)
        for name in sorted(cls.template_variables() - set(spec)):
            spec[name] = Parameter(name, True)
        return spec

    @classmethod
    def _run_spec(cls) -> dict[str, Parameter]:
        if cls.command_template:
            raise AppDefinitionError(f"{cls.__name__} defines both run() and command_template: "
                                     "a site app is one or the other")
        if cls.parameters:
            raise AppDefinitionError(f"{cls.__name__}.parameters: a function app takes its "
                                     "parameters (and their defaults) from run()'s signature")
        try:
            sig = pyfunc.run_signature(cls)
        except (TypeError, ValueError) as exc:
            raise AppDefinitionError(f"{cls.__name__}.run has no usable signature: {exc}")
        spec: dict[str, Parameter] = {}
        for p in sig.parameters.values():
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                required = p.default is p.empty
                spec[p.name] = Parameter(p.name, required, None if required else p.default)
        return spec

    @classmethod
    def template_variables(cls) -> set[str]:
        """The variables ``command_template`` uses (:class:`AppDefinitionError` if it does not
        parse)."""
        template = cls.command_template
        if cls.is_function():
            return set()
        if not isinstance(template, str) or not template.strip():
            raise AppDefinitionError(f"{cls.__name__} needs a command_template (a non-empty "
                                     "string) or a run() method")
        try:
            return set(_variables(template))
        except jinja2.TemplateSyntaxError as exc:
            raise AppDefinitionError(f"{cls.__name__}.command_template line {exc.lineno}: "
                                     f"{exc.message}")

    @classmethod
    def resolve_parameters(cls, given: Optional[Mapping[str, Any]]) -> dict[str, Any]:
        """``given`` completed with defaults; :class:`ParameterError` naming any unknown or
        missing parameter."""
        given = dict(given or {})
        if cls.is_function():
            return cls.resolve_call(given).named
        spec = cls.parameter_spec()
        unknown = sorted(set(given) - set(spec))
        if unknown:
            raise ParameterError(f"unknown parameter(s) {', '.join(unknown)} for app "
                                 f"{cls.__name__} (its parameters: {', '.join(spec) or 'none'})")
        missing = sorted(p.name for p in spec.values() if p.required and p.name not in given)
        if missing:
            raise ParameterError(f"missing required parameter(s) {', '.join(missing)} for app "
                                 f"{cls.__name__}")
        values = {p.name: p.default for p in spec.values() if not p.required}
        values.update(given)
        return values

    @classmethod
    def resolve_call(cls, given: Optional[Mapping[str, Any]],
                     args: Sequence[Any] = ()) -> pyfunc.BoundCall:
        """A function app's ``run()`` arguments for a job: positional ``args`` and keyword
        ``given``, checked against ``run()``'s signature, defaults applied; one
        :class:`ParameterError` saying what does not fit."""
        cls.parameter_spec()
        if not cls.is_function():
            raise ParameterError(f"app {cls.__name__} has a command_template: positional "
                                 "arguments (args) are for function apps (run()); use "
                                 "parameters")
        try:
            return pyfunc.bind_arguments(cls, dict(given or {}), args)
        except ValueError as exc:
            what = "args and parameters" if args else "parameters"
            raise ParameterError(f"{what} do not fit {cls.__name__}.run(): {exc}")

    @classmethod
    def render_command(cls, parameters: Mapping[str, Any]) -> str:
        """The command line for ``parameters`` (already resolved): every substituted value is
        shell-quoted, so it stays one word. A function app's is the task runner's command."""
        if cls.is_function():
            return pyfunc.runner_command()
        try:
            command = _compiled(cls.command_template).render(**parameters).strip()
        except jinja2.TemplateError as exc:
            raise ParameterError(f"cannot render the command of app {cls.__name__}: {exc}")
        try:
            words = shlex.split(command)
        except ValueError as exc:
            raise ParameterError(f"the rendered command of app {cls.__name__} cannot be split "
                                 f"into words ({exc}): {command}")
        if not words:
            raise ParameterError(f"the rendered command of app {cls.__name__} is empty")
        return command

    @classmethod
    def environ_string(cls) -> str:
        """``environment_variables`` in the classic ``VAR=value:VAR2=value2`` form."""
        env = cls.environment_variables
        if not isinstance(env, Mapping):
            raise AppDefinitionError(f"{cls.__name__}.environment_variables must be a dict")
        parts = []
        for key, value in env.items():
            text = str(value)
            if not _ENV_NAME.match(str(key)):
                raise AppDefinitionError(f"{cls.__name__}.environment_variables: {key!r} is not "
                                         "a variable name")
            if ":" in text or "\x00" in text:
                raise AppDefinitionError(
                    f"{cls.__name__}.environment_variables[{key!r}]: a value may not contain "
                    "':' (classic environ_vars separate entries with it); set it in "
                    "shell_preamble instead")
            parts.append(f"{key}={text}")
        return ":".join(parts)

    @classmethod
    def check(cls) -> None:
        """Check everything about the class that does not depend on a job (raises
        :class:`AppDefinitionError`)."""
        cls.parameter_spec()
        cls.environ_string()
        if not all(isinstance(p, str) for p in cls.cleanup_files):
            raise AppDefinitionError(f"{cls.__name__}.cleanup_files must be a list of glob "
                                     "patterns (strings)")
        check_transfer_slots(cls.__name__, cls.transfers)


SLOT_KEYS = ("direction", "local_path", "required", "description", "recursive")
"""The keys of a ``transfers`` slot (0.6): direction ``in``/``out``, local_path (relative to the
job's workdir), required (default False), description, recursive (a directory; default False)."""


def check_transfer_slots(owner: str, slots: Any) -> None:
    """Check ``transfers`` slots: ``{name: {"direction": "in"|"out", "local_path": str,
    "required": bool, "description": str, "recursive": bool}}``; local_path a relative path
    inside the job's workdir."""
    if not isinstance(slots, Mapping):
        raise AppDefinitionError(f"{owner}.transfers must be a dict of slots")
    for name, slot in slots.items():
        where = f"{owner}.transfers[{name!r}]"
        if not isinstance(name, str) or not _SLOT_NAME.match(name):
            raise AppDefinitionError(f"{where}: a slot name is letters, digits, _ . -")
        if not isinstance(slot, Mapping) or slot.get("direction") not in ("in", "out") \
                or not isinstance(slot.get("local_path", ""), str):
            raise AppDefinitionError(f"{where} must be a dict with direction 'in' or 'out' and "
                                     "a local_path")
        unknown = set(slot) - set(SLOT_KEYS)
        if unknown:
            raise AppDefinitionError(f"{where} has unknown key(s) {', '.join(sorted(unknown))} "
                                     f"(use {', '.join(SLOT_KEYS)})")
        path = slot.get("local_path", "")
        parts = path.replace("\\", "/").split("/")
        if not path.strip() or path.startswith(("/", "~")) or ".." in parts:
            raise AppDefinitionError(f"{where}: local_path {path!r} must be a relative path "
                                     "inside the job's workdir (no '..')")
        for flag in ("required", "recursive"):
            if not isinstance(slot.get(flag, False), bool):
                raise AppDefinitionError(f"{where}: {flag} must be True or False")


def resolve_transfers(cls: type[ApplicationDefinition], given: Optional[Mapping[str, Any]],
                      locations: Mapping[str, str]) -> list[slots.SlotValue]:
    """A job's ``transfers`` values checked against the app's slots and resolved to URLs
    (``locations``: the site's aliases); :class:`ParameterError` naming an unknown slot, a
    missing required one or a value that names no location."""
    declared = cls.transfers
    check_transfer_slots(cls.__name__, declared)
    given = dict(given or {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ParameterError(f"unknown transfer slot(s) {', '.join(map(str, unknown))} for app "
                             f"{cls.__name__} (its slots: {', '.join(declared) or 'none'})")
    missing = sorted(n for n, s in declared.items() if s.get("required") and n not in given)
    if missing:
        raise ParameterError(f"missing required transfer slot(s) {', '.join(missing)} for app "
                             f"{cls.__name__}")
    values = []
    for name, value in given.items():
        slot = declared[name]
        try:
            url = slots.resolve_url(value, locations)
        except BalsamError as exc:
            raise ParameterError(f"transfer slot {name!r} of app {cls.__name__}: {exc}")
        values.append(slots.SlotValue(name, slot["direction"], value.strip(), url,
                                      os.path.normpath(slot["local_path"]),
                                      bool(slot.get("recursive", False))))
    return values
