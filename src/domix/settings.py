"""Run settings: dataclass defaults, then a YAML file, then the command line."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from domix.errors import DomixError

T = TypeVar("T")


_UNSET = dataclasses.MISSING


def setting(default: Any = _UNSET, help: str = "", flag_type: Any = None, *, factory: Any = _UNSET, flag: str | None = None,
            aliases: tuple[str, ...] = (), metavar: str | None = None, repeat: bool = False, collect: Any = None) -> Any:
    """A setting (a field of a settings dataclass) with what its flag needs: the one place its default and help are
    written. ``flag_type`` converts the flag's text (default: the field's int or float type, else text, which the
    settings' checks then read); ``flag`` names the flag where it is not --NAME-WITH-DASHES, ``aliases`` are older
    spellings still taken; ``repeat``: the flag may be given again, each value added to a list, which ``collect``
    turns into the setting's value (NAME=PATH pairs into a mapping, say)."""
    meta = {"help": help, "flag_type": flag_type, "flag": flag, "aliases": tuple(aliases), "metavar": metavar, "repeat": repeat,
            "collect": collect}
    if factory is not _UNSET:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _shown(value: Any) -> str | None:
    """A default as the help text shows it (None: nothing to show)."""
    if value is None or value == [] or value == {} or value == "":
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def flag_names(f: dataclasses.Field) -> list[str]:
    """The flags of setting ``f``: its own, then its older spellings."""
    return [f.metadata.get("flag") or "--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]


def add_setting_flags(parser, cls: type, extra: dict[str, dict] | None = None) -> None:
    """A flag per field of the settings dataclass ``cls`` (its methods' settings included), made from the field: its
    name, type, help and default (added to the help as "(default X)"); unset by default so that a YAML file's or
    recipe's value stands. ``extra``: argparse arguments that come from elsewhere than the field (the registry's
    method names as ``choices``, a help text listing its recipes)."""
    import argparse

    hints = {k: v for c in setting_classes(cls) for k, v in typing.get_type_hints(c).items()}
    for f in setting_fields(cls):
        meta, kwargs = f.metadata, dict((extra or {}).get(f.name, {}))
        help = kwargs.pop("help", meta.get("help", ""))
        shown = _shown(field_default(f))
        if shown is not None and "(default" not in help:
            help += f" (default {shown})"
        kwargs["help"] = help.replace("%", "%%")
        if meta.get("metavar"):
            kwargs.setdefault("metavar", meta["metavar"])
        if isinstance(field_default(f), bool):
            parser.add_argument(*flag_names(f), dest=f.name, action=argparse.BooleanOptionalAction, default=None, **kwargs)
            continue
        options = _options(hints[f.name])  # a number, unless the setting also takes text ("10x", "matched")
        kind = meta.get("flag_type") or (None if str in options else next((t for t in (int, float) if t in options), None))
        if meta.get("repeat"):
            kwargs["action"] = "append"
        parser.add_argument(*flag_names(f), dest=f.name, type=kind, **kwargs)


def setting_classes(cls: type) -> list[type]:
    """``cls`` and, for run settings, each method's own settings class."""
    return [cls, *dict.fromkeys(getattr(cls, "OWN_SETTINGS", {}).values())]


def setting_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of every setting ``cls`` takes, flat, each name once (a method's own object, method_options, is
    given by its fields)."""
    found: dict[str, dataclasses.Field] = {}
    for c in setting_classes(cls):
        for f in dataclasses.fields(c):
            if f.name != "method_options":
                found.setdefault(f.name, f)
    return list(found.values())


def flag_values(args: Any, cls: type) -> dict[str, Any]:
    """The settings of ``cls`` given as flags in the parsed ``args`` (unset flags are None, left to the YAML file)."""
    values = {}
    for f in setting_fields(cls):
        value = getattr(args, f.name, None)
        if value is not None and f.metadata.get("collect"):
            value = f.metadata["collect"](value)
        values[f.name] = value
    return values


def from_flags(args: Any, cls: type[T]) -> T:
    """The settings ``cls`` (a command's options that have no YAML file) with the flags given, the others at their
    defaults."""
    return cls(**{k: v for k, v in flag_values(args, cls).items() if v is not None})


def _options(hint: Any) -> tuple:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def renamed(cls: type, values: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``values`` with the settings ``cls`` renamed (its ``RENAMED``: old name -> name) under their names of today, so
    that old YAML files and run records still read; both names at once is refused."""
    names = getattr(cls, "RENAMED", {})
    for old, new in names.items():
        if old in values:
            if new in values:
                raise DomixError(f"settings{where} give both {old!r} and {new!r}, two names of one setting; keep {new!r}")
            values = {(new if k == old else k): v for k, v in values.items()}
    return values


class RunSettings:
    """What the settings of a run (domix pretrain, finetune, instruct) share: built from defaults, a recipe, a YAML
    file and flags (:func:`build_config`), checked field by field when made, recorded with portable paths. A
    subclass, a dataclass made with :func:`run_settings`, names its command (``COMMAND``), the settings a resumed run
    may change (``RESUME_FREE``), each method's own settings class (``OWN_SETTINGS``, from the registry) and the
    registry's recipes (``recipe_values``).

    A method's own settings (the bridge's p_lr, MoDE's mode_*) are an object of its class in ``method_options``,
    None for a method without any: a run holds its method's settings, not every method's. They are given flat, as
    the other settings are (``FinetuneConfig(method="domix", p_lr="10x")``, YAML keys, flags), and recorded flat."""

    COMMAND = ""
    RESUME_FREE: tuple[str, ...] = ()  # the settings a run may be resumed or reused under other values of
    OWN_SETTINGS: dict[str, type] = {}  # method -> the settings class only that method reads
    RANGES: dict[str, tuple] = {}
    TEXT_FORMS: dict[str, Any] = {}
    RENAMED: dict[str, str] = {}  # an older name of a setting -> its name: old YAML files and records still read
    PATHS: tuple[str, ...] = ()  # the settings that are paths (a path, a list of paths, a mapping of name -> path)

    def __post_init__(self) -> None:
        check_fields(self)
        check_ranges(self)
        if self.method_options is not None:
            check_fields(self.method_options)

    @staticmethod
    def recipe_values(method: str, name: str) -> dict[str, Any]:
        """The values recipe ``name`` sets for ``method`` (the subclass asks the registry)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The settings as the run's records keep them: flat (the method's own among the others), paths portable
        (:func:`recorded_settings`)."""
        return recorded_settings(self)

    def inputs(self) -> list[str]:
        """The paths this run reads (every path but ``out``): its output may never be, hold or lie inside one of them."""
        found: list[str] = []
        for key in self.PATHS:
            if key != "out":
                value = getattr(self, key)
                found += value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value]
        return [p for p in found if p]

    def check_method_options(self) -> None:
        """The method's own settings checked against the run's (called by ``validate``)."""
        if self.method_options is not None:
            self.method_options.check_settings(self)


def method_option_names(cls: type) -> dict[str, list[str]]:
    """Each method's own setting of the run settings ``cls`` -> the methods that read it."""
    names: dict[str, list[str]] = {}
    for method, options in cls.OWN_SETTINGS.items():
        for f in dataclasses.fields(options):
            names.setdefault(f.name, []).append(method)
    return names


def own_option_names(cls: type, method: Any) -> tuple[type | None, set[str]]:
    """The settings class of ``method`` among the run settings ``cls``'s (None: it has none, or ``method`` is not a
    name, which check_fields then names) and its fields."""
    own = cls.OWN_SETTINGS.get(method) if isinstance(method, str) else None
    return own, {f.name for f in dataclasses.fields(own)} if own else set()


def setting_names(cls: type) -> set[str]:
    """Every setting ``cls`` takes, flat: its own fields and every method's own (the YAML keys, the flags)."""
    return {f.name for f in setting_fields(cls)}


def run_settings(cls: type[T]) -> type[T]:
    """Make the dataclass ``cls`` (a RunSettings) take its method's own settings flat: they become its
    ``method_options``, an object of the method's class. Another method's settings are left out (a YAML file or a
    comparison's shared settings may hold several methods'; :func:`build_config` refuses one given as a flag).
    Settings under an older name (``RENAMED``) are read too."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, **values: Any) -> None:
        init(self, **_with_method_options(cls, renamed(cls, values)))

    cls.__init__ = __init__
    return cls


def _with_method_options(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    own, own_names = own_option_names(cls, values.get("method", cls.method))
    readers = method_option_names(cls)
    mine = {k: values.pop(k) for k in list(values) if k in readers and k in own_names}
    for other in [k for k in values if k in readers]:
        del values[other]
    options = values.get("method_options")
    if own is None:
        values["method_options"] = None
    elif not isinstance(options, own):  # not given, or another method's (a copy of a run with another method)
        values["method_options"] = own(**mine)
    elif mine:
        values["method_options"] = dataclasses.replace(options, **mine)
    return values


def refuse_other_methods_flags(cls: type, flags: dict[str, Any], method: str) -> None:
    """A flag given on the command line that only other methods read, refused in one line: the user meant it."""
    if not isinstance(method, str):  # check_fields names a method that is not a name
        return
    readers, (_, own_names) = method_option_names(cls), own_option_names(cls, method)
    for key, value in flags.items():
        if value is not None and key in readers and key not in own_names:
            raise DomixError(f"--{key.replace('_', '-')} is a setting of method {', '.join(readers[key])}; --method {method} does not "
                             "read it: drop it, or choose one of those methods")


def check(rules: list[tuple[bool, str]]) -> None:
    """Raise the message of the first rule that does not hold."""
    for ok, message in rules:
        if not ok:
            raise DomixError(message)


def comma_list(text: str) -> list[str]:
    """A flag's comma-separated names as a list."""
    return [t.strip() for t in text.split(",") if t.strip()]


def named_path(text: str) -> tuple[str, str]:
    """A NAME=PATH flag's value as (name, path)."""
    import argparse

    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def unique_names(pairs: list[tuple[str, str]], flag: str) -> dict[str, str]:
    """NAME=PATH flags as a mapping, refusing a name given twice (a dict would keep the last silently)."""
    named: dict[str, str] = {}
    for name, path in pairs:
        if name in named:
            raise DomixError(f"two {flag} flags are named {name!r} ({named[name]} and {path}); give each its own name")
        named[name] = path
    return named


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML loading keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict, set)):
                raise DomixError(f"a key on line {key_node.start_mark.line + 1} is a list or mapping; keys are names")
            if str(key) in seen:  # names: 1 and "1" are the same domain
                raise DomixError(f"the key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1}); "
                                 "keep one of them")
            seen.add(str(key))
        return super().construct_mapping(node, deep)


def read_yaml_mapping(path: str | Path, fields: set[str], what: str = "config file") -> dict[str, Any]:
    """A YAML file's mapping (keys with - read as _), refusing a missing file, bad YAML and unknown keys."""
    path = Path(path)
    if not path.is_file():
        raise DomixError(f"{what} {path} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as err:
        raise DomixError(f"{what} {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except DomixError as err:
        raise DomixError(f"{what} {path}: {err}") from None
    if not isinstance(data, dict):
        raise DomixError(f"{what} {path} must hold a mapping of setting: value")
    spelled = [str(k).replace("-", "_") for k in data]
    twice = sorted({k for k in spelled if spelled.count(k) > 1})
    if twice:
        raise DomixError(f"{what} {path} gives {twice[0]!r} twice (with - and _ in its name); keep one of them")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise DomixError(f"{what} {path} has unknown settings {unknown}; known: {sorted(fields)}")
    return data


def load_yaml(path: str | Path, fields: set[str]) -> dict[str, Any]:
    data = read_yaml_mapping(path, fields)
    if "domains" in data and isinstance(data["domains"], dict):
        data["domains"] = {str(k): str(v) for k, v in data["domains"].items()}
    return data


_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false", list: "a list", dict: "a mapping"}


def coerce(key: str, value: Any, hint: Any, where: str = "") -> Any:
    """``value`` as the type ``hint`` of setting ``key`` asks for, or an error naming the key, the value
    and the type. YAML reads ``1e-3`` as a string (it wants ``1.0e-3``): such numbers are converted."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return value
    kinds = [typing.get_origin(o) or o for o in options if o is not type(None)]
    for kind in kinds:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if isinstance(value, int) and int not in kinds else value
        if kind in (str, list, dict) and isinstance(value, kind):
            return value
        if kind is Any or isinstance(kind, type) and kind not in (int, float) and isinstance(value, kind):  # a settings object (a search)
            return value
    if isinstance(value, str):
        for kind in (int, float):
            if kind in kinds:
                try:
                    return kind(value)
                except ValueError:
                    pass
    wanted = " or ".join(_NAMES.get(k, getattr(k, "__name__", str(k))) for k in kinds)
    raise DomixError(f"setting {key!r}{where} is {value!r}, which is not {wanted}")


def check_fields(obj: Any) -> None:
    """Every field of the settings dataclass ``obj`` as its type hint asks, every number finite, or one DomixError
    naming the field, its value and what it takes: the one check of every surface (flags, YAML, Python). Values
    are converted where :func:`coerce` converts (an int for a float, a number written as text), a path object
    becomes its text, and a list or mapping given in its flag's text form is read by the parser its class names in
    ``TEXT_FORMS`` (field -> function of the text); the fields are set to the converted values."""
    hints = typing.get_type_hints(type(obj))
    forms = {name: form for cls in reversed(type(obj).__mro__) for name, form in vars(cls).get("TEXT_FORMS", {}).items()}
    for f in dataclasses.fields(obj):
        hint, value = hints[f.name], getattr(obj, f.name)
        if f.name in forms and isinstance(value, (str, int)) and not isinstance(value, bool):
            value = forms[f.name](value)  # the flag's text form of a list or mapping ("7,11", "dev=validation")
        value = coerce(f.name, os.fspath(value) if isinstance(value, os.PathLike) else value, hint)
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        wanted = _item_type(hint)
        for key, item in list(items):
            if wanted is str and isinstance(item, os.PathLike):
                value[key] = item = os.fspath(item)
            if wanted is not None and not (isinstance(item, wanted) and not isinstance(item, bool)):
                raise DomixError(f"setting {f.name!r} holds {item!r}, which is not {_NAMES.get(wanted, wanted.__name__)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise DomixError(f"setting {f.name!r} is {value!r}; give a finite number")
        setattr(obj, f.name, value)


POSITIVE = (lambda v: v > 0, "must be positive")
NON_NEGATIVE = (lambda v: v >= 0, "must be zero or positive")
FRACTION = (lambda v: 0 <= v < 1, "must be in [0, 1)")
OPEN_FRACTION = (lambda v: 0 < v < 1, "must be in (0, 1)")


def at_least(n: int) -> tuple:
    return (lambda v: v >= n, f"must be at least {n}")


def one_of(*choices: str) -> tuple:
    return (lambda v: v in choices, "must be " + ", ".join(choices[:-1]) + f" or {choices[-1]}")


@dataclass(kw_only=True)
class MethodChoice:
    """The method a run uses, its recipe, and the method's own settings (every run has them alike; the registry's
    method names are the flag's choices)."""

    method: str = setting("domix", "the method")
    recipe: str | None = setting(None, "a named preset of the method's settings, under the YAML file and the flags")
    method_options: Any = setting(None, "the method's own settings, an object of its class in the registry, given flat by its "
                                        "fields (--p-lr, --mode-gate-lr, ...); None for a method without any")


@dataclass(kw_only=True)
class TrainingSettings:
    """The settings every training run has alike (domix pretrain, finetune, instruct): their flags and defaults."""

    weight_decay: float = setting(0.0, "AdamW weight decay")
    max_grad_norm: float = setting(1.0, "gradient clipping")
    gradient_checkpointing: bool = setting(False, "recompute activations in backward instead of keeping them: far less memory, "
                                                  "about a third more compute, the same weights")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")

    RANGES = {"weight_decay": NON_NEGATIVE, "max_grad_norm": POSITIVE}


AUTOCAST = ("bfloat16", "float16")  # --autocast's choices


@dataclass(kw_only=True)
class SpeedOptions:
    """How a fine-tuning run (domix finetune, domix instruct) computes its passes and draws its batches: settings that buy
    time at the price of rounding (autocast) or of another batch order (grouping), not of another recipe."""

    autocast: str | None = setting(None, "mixed precision of the forward passes: bfloat16 or float16 (matrix products in that "
                                         "dtype, weights and optimizer in --dtype; default: none)")
    group_by_length: bool = setting(False, "batches of examples of similar length (shuffled, a fresh draw every epoch): far fewer "
                                           "padding tokens computed (no: batches drawn at random)")

    RANGES = {"autocast": one_of(*AUTOCAST)}


def check_ranges(obj: Any) -> None:
    """Each field named in the ``RANGES`` of the class and its bases (field -> (test, what it must be)) passes its test,
    or one DomixError naming the flag, what it must be and the value given; an unset (None) field passes."""
    ranges = {name: rule for cls in reversed(type(obj).__mro__) for name, rule in vars(cls).get("RANGES", {}).items()}
    for name, (ok, expected) in ranges.items():
        value = getattr(obj, name)
        if value is not None and not ok(value):
            raise DomixError(f"--{name.replace('_', '-')} {expected} (got {value!r})")


def _item_type(hint: Any) -> type | None:
    """The type of the items of a ``list[X]`` or the values of a ``dict[K, X]`` in ``hint`` (None: not such a hint)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if typing.get_origin(option) in (list, dict) and typing.get_args(option):
            item = typing.get_args(option)[-1]
            return item if isinstance(item, type) and item is not Any else None
    return None


def portable_path(name: str) -> str:
    """A path as records keep it: as given, except that an absolute path below the working folder becomes relative to
    it, so a record names no path of one machine (every command of a project runs from its folder). A hub name,
    or an absolute path outside the working folder (the user's own choice), is kept as given."""
    path = Path(name)
    if not path.is_absolute():
        return name
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return name


def recorded_settings(config: Any) -> dict[str, Any]:
    """A run config's settings as its run records them (run.json): every path (the class's ``PATHS``) made portable
    (:func:`portable_path`), in lists and in a mapping of domain corpora too."""
    values = dataclasses.asdict(config)
    values.update(values.pop("method_options", None) or {})  # a method's own settings, flat as they are given
    for key in type(config).PATHS:
        value = values.get(key)
        if isinstance(value, str) and value:
            values[key] = portable_path(value)
        elif isinstance(value, list):
            values[key] = [portable_path(v) if isinstance(v, str) else v for v in value]
        elif isinstance(value, dict):
            values[key] = {k: portable_path(v) if isinstance(v, str) else v for k, v in value.items()}
    return values


def with_recipe(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` over the settings of the recipe they name (``recipe``), for their method (else the default)."""
    if not values.get("recipe"):
        return values
    method = values.get("method") or cls.method  # the dataclass's default
    return {**cls.recipe_values(method, values["recipe"]), **values}


def build_config(cls: type[T], yaml_path: str | None, overrides: dict[str, Any]) -> T:
    """Defaults, then the recipe (``--recipe``), then the YAML file, then the command-line values that were given."""
    fields = setting_names(cls) | set(getattr(cls, "RENAMED", {}))
    values: dict[str, Any] = renamed(cls, load_yaml(yaml_path, fields), f" in {yaml_path}") if yaml_path else {}
    hints = {k: v for c in setting_classes(cls) for k, v in typing.get_type_hints(c).items()}
    values = {k: coerce(k, v, hints[k], f" in {yaml_path}") for k, v in values.items()}
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "domains" and isinstance(value, dict):
            value = {**values.get("domains", {}), **value}
        values[key] = value
    if hasattr(cls, "OWN_SETTINGS"):
        refuse_other_methods_flags(cls, overrides, values.get("method") or cls.method)
    try:
        return cls(**with_recipe(cls, values)).validate()
    except TypeError as err:
        raise DomixError(f"bad setting: {err}") from None
