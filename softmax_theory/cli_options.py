"""What both command lines share: options generated from the config dataclasses, one-line
user errors, and checks of output paths made before any work starts.

A command declares which config classes it builds; every scalar field becomes a ``--flag`` with
the field's help string, its domain and its default (an absent flag leaves the dataclass default
in force), so each default, domain and help text has exactly one home: the dataclass. The
dataclass checks its settings (``softmax_theory.inputs.check_domains`` and its cross-field
rules) as it is built, before any work starts; ``build_config`` names a refused one by its flag.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import json
import os
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from softmax_theory.inputs import MissingExtra, SettingError, domain_text, numeric_fields

# Exceptions that mean a user's mistake (each names the argument): one line and exit code 2.
# Anything else is our bug and keeps its traceback. ENTROPY_MECHANISM_DEBUG=1 shows tracebacks
# for these too.
USER_ERRORS = (
    MissingExtra,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    json.JSONDecodeError,
)
USAGE_EXIT = 2
INTERRUPT_EXIT = 130


def run_cli(app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run a command line: a user's mistake ends with ``error: <argument>: <problem>`` on one
    line and exit code 2; an interrupt with its message and exit code 130."""
    debug = os.environ.get("ENTROPY_MECHANISM_DEBUG") == "1"
    try:
        # outside standalone mode a command's typer.Exit(code) comes back as the return value
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except (KeyboardInterrupt, typer.Abort) as err:
        print(str(err) or "interrupted", file=sys.stderr)
        sys.exit(INTERRUPT_EXIT)
    except typer.TyperException as err:  # typer's own parsing: unknown option, bad number, …
        if debug:
            raise
        flag = _flag(err)
        message = err.message if isinstance(err, typer.BadParameter) else err.format_message()
        print(f"error: {flag}: {message}" if flag else f"error: {message}", file=sys.stderr)
        sys.exit(USAGE_EXIT)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(USAGE_EXIT)


def _flag(err: typer.TyperException) -> str | None:
    """The option a parsing error is about, as the user typed it."""
    hint = getattr(err, "param_hint", None)
    if hint:
        return "/".join(hint) if isinstance(hint, list | tuple) else str(hint)
    param = getattr(err, "param", None)
    return None if param is None else "/".join(param.opts) or param.name


def check_out_dir(path: Path, flag: str) -> Path:
    """A directory the command will write into: created if missing; refused when it is a file
    or cannot be written. Checked before any work starts."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{flag}: {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"{flag}: cannot create {path} ({err.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag}: {path} is not writable")
    return path


def check_out_file(path: Path, flag: str) -> Path:
    """A file the command will write: not a directory, in a writable (created) directory."""
    if path.is_dir():
        raise IsADirectoryError(f"{flag}: {path} is a directory; give a file name")
    check_out_dir(path.parent if str(path.parent) else Path("."), flag)
    return path


# A flag given this word sets an optional field whose default is not None to None (e.g.
# ``--clip-ratio-c none`` switches dual-clip off).
NONE_WORDS = ("none", "off")


def _optional_with_default(tp: Any, default: Any) -> bool:
    """A field typed ``X | None`` whose default is a value: its flag must be able to say none."""
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in (
        typing.get_args(tp)
    )
    return optional and default not in (None, dataclasses.MISSING)


def _base_type(tp: Any, default: Any = None) -> Any:
    """float | None → float; tuple[int, ...] → str (parsed later); enums stay enums; an optional
    field with a non-None default → str (a number or 'none')."""
    if _optional_with_default(tp, default):
        return str
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    if typing.get_origin(tp) is tuple:
        return str
    return tp


def parse_list(text: str, item: type, flag: str) -> tuple:
    """'0.1,1,10' → (0.1, 1.0, 10.0) for ``item=float``; a bad item names the flag."""
    try:
        return tuple(item(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(
            f"{flag}: expected comma-separated {item.__name__} values, got {text!r}"
        ) from None


def _parse(value: Any, tp: Any, flag: str) -> Any:
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
    if optional:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is tuple and isinstance(value, str):
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        return parse_list(value, item, flag)
    if optional and isinstance(value, str) and tp is not str:
        if value.strip().lower() in NONE_WORDS:
            return None
        try:
            return tp(value)
        except ValueError:
            raise ValueError(f"{flag}: expected a {tp.__name__} or 'none', got {value!r}") from None
    return value


def scalar_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """The fields of ``cls`` a flag can set (nested configs excluded), with resolved types."""
    hints = typing.get_type_hints(cls)
    return [
        (f, hints[f.name])
        for f in dataclasses.fields(cls)
        if f.init and not dataclasses.is_dataclass(hints[f.name])
    ]


def _field_help(cls: type, f: dataclasses.Field, default: Any) -> str:
    """The field's help text, its domain ('an integer ≥ 1') and its default."""
    help_text = f.metadata.get("help", "")
    integer = {g.name: i for g, _, i, _ in numeric_fields(cls)}
    if f.name in integer:
        domain = domain_text(f, integer[f.name])
        if domain:
            help_text = f"{help_text}; {domain}" if help_text else domain
    return _with_default(help_text, default)


def _with_default(help_text: str, default: Any) -> str:
    """The help text with its default, unless the text already says it."""
    if "default" in help_text:
        return help_text
    if isinstance(default, enum.Enum):
        default = default.value
    if isinstance(default, bool):
        shown = "on" if default else "off"
    elif isinstance(default, tuple):
        shown = ",".join(map(str, default)) if default else "none"
    elif default in (None, ""):
        return help_text
    else:
        shown = default
    return f"{help_text} (default: {shown})"


# The longest choice list shown as an option's metavar; a longer one goes into its help text.
MAX_METAVAR = 30


def config_options(
    *classes: type,
    rename: dict[str, str] | None = None,
    exclude: frozenset[str] = frozenset(),
) -> Callable:
    """Add one option per scalar field of ``classes`` to a typer command.

    ``rename`` maps ``Class.field`` (or ``field``) to the parameter name used on the command
    line, for fields whose names collide or read badly (``EnvConfig.name`` → ``env``);
    ``exclude`` names parameters the command declares itself or does not offer; a field whose
    metadata has ``flags`` (``("--lr", "--lrs")``) is offered under those names. The command
    receives them in ``**options`` and builds its configs with ``build_config``.
    """
    rename = rename or {}

    def decorator(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        # resolve the command's own (string) annotations in its module, where typer cannot
        hints = typing.get_type_hints(fn, include_extras=True)
        params = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in sig.parameters.values()
            if p.kind is not p.VAR_KEYWORD
        ]
        taken = {p.name for p in params}
        for cls in classes:
            for f, tp in scalar_fields(cls):
                name = rename.get(f"{cls.__name__}.{f.name}", rename.get(f.name, f.name))
                if name in exclude:
                    continue
                if name in taken:
                    raise TypeError(f"config_options: option {name!r} defined twice; rename it")
                taken.add(name)
                default = f.default if f.default is not dataclasses.MISSING else None
                base = _base_type(tp, default)
                help_text = _field_help(cls, f, default)
                extra = {}
                if isinstance(base, type) and issubclass(base, enum.Enum):
                    choices = [str(c.value) for c in base]
                    if len("|".join(choices)) > MAX_METAVAR:
                        # a long choice list goes into the help text, which wraps, so that
                        # --help fits 80 columns
                        extra["metavar"] = "<choice>"
                        help_text += " (one of: " + ", ".join(choices) + ")"
                params.append(
                    inspect.Parameter(
                        name,
                        inspect.Parameter.KEYWORD_ONLY,
                        default=None,
                        annotation=Annotated[
                            base | None,
                            typer.Option(
                                *f.metadata.get("flags", ()),
                                help=help_text,
                                show_default=False,
                                **extra,
                            ),
                        ],
                    )
                )

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            return fn(**kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorator


def option_flag(cls: type, field_name: str, rename: dict[str, str] | None = None) -> str:
    """The ``--flag`` that sets ``cls.field_name`` on a command built with ``rename`` (the
    first of the field's ``flags`` metadata where it names its own)."""
    flags = next(f for f in dataclasses.fields(cls) if f.name == field_name).metadata.get("flags")
    if flags:
        return flags[0]
    rename = rename or {}
    name = rename.get(f"{cls.__name__}.{field_name}", rename.get(field_name, field_name))
    return "--" + name.replace("_", "-")


def build_config(
    cls: type,
    options: dict[str, Any],
    rename: dict[str, str] | None = None,
    base: dict[str, Any] | None = None,
    **nested: Any,
) -> Any:
    """Build ``cls`` from the options the user gave (``None`` = not given) and nested configs;
    ``base`` (field values, e.g. a preset's) fills the fields the user left out.

    The config checks its own domains and cross-field rules (``__post_init__``); a setting it
    refuses is named here by its flag (``--val-prompts: must be an integer ≥ 1, got 0``).
    """
    rename = rename or {}
    given = {}
    flags = {}
    for f, tp in scalar_fields(cls):
        name = rename.get(f"{cls.__name__}.{f.name}", rename.get(f.name, f.name))
        flags[f.name] = option_flag(cls, f.name, rename)
        value = options.get(name)
        if value is not None:
            given[f.name] = _parse(value, tp, flags[f.name])
    try:
        return cls(**{**(base or {}), **given}, **nested)
    except SettingError as err:
        if err.name not in flags:
            raise
        raise SettingError(flags[err.name], err.problem) from None
