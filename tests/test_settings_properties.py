"""Property-based checks of every public settings class (hypothesis): for every field, a value of the wrong type, a
non-finite number, a number out of its range or an empty list is refused with a DomixError naming the field, built
from Python as from flags or YAML; a value of the right type is accepted. The same for comparison configs, which are
refused whole before any job starts."""

import math
import tempfile
import types
import typing
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domix.comparison.config import CompareConfig
from domix.comparison.run import compare
from domix.errors import DomixError
from domix.finetuning.config import FinetuneConfig
from domix.llm.config import InstructConfig
from domix.pretraining.config import PretrainConfig
from domix.settings import method_option_names, setting_classes, setting_fields

CLASSES = [FinetuneConfig, PretrainConfig, InstructConfig]
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def options(cls, name: str) -> tuple[set, bool, type | None]:
    """The kinds a field takes (float, int, str, bool, list, dict), whether None, and its list items' or dict values' type."""
    hint = next(h[name] for c in setting_classes(cls) if name in (h := typing.get_type_hints(c)))
    parts = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    kinds, item = set(), None
    for part in parts:
        if part is type(None):
            continue
        kinds.add(typing.get_origin(part) or part)
        if typing.get_origin(part) in (list, dict) and isinstance(typing.get_args(part)[-1], type):
            item = typing.get_args(part)[-1]
    return kinds, type(None) in parts, item


def text_forms(cls) -> set[str]:
    """Fields whose flag gives a list or mapping as text (read by the class's own parser)."""
    return {name for s in setting_classes(cls) for c in s.__mro__ for name in vars(c).get("TEXT_FORMS", {})}


NOT_A_NUMBER = st.text(alphabet="abcdeghkmopqrstuvwxyz ", min_size=1, max_size=8)  # no nan/inf spelling, no digits
LISTS = st.lists(st.integers(), min_size=1, max_size=3)
DICTS = st.dictionaries(st.text(alphabet="abc", min_size=1, max_size=3), st.integers(), min_size=1, max_size=2)
FRACTIONS = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6).filter(lambda x: x != int(x))


def wrong_values(cls, name: str):
    kinds, _, item = options(cls, name)
    pool = []
    if not kinds & {list, dict}:
        pool += [LISTS, DICTS]
    if kinds & {list, dict} and name not in text_forms(cls):
        pool += [st.integers() if int not in kinds else NOT_A_NUMBER, NOT_A_NUMBER if str not in kinds else st.integers()]
        if list in kinds and item is str:
            pool.append(LISTS)  # a list of numbers where names are due
    if kinds & {list, dict} and name in text_forms(cls):  # text is its flag's form: a number with a fraction or a boolean is wrong
        pool += [FRACTIONS, st.booleans()]
    if kinds == {str}:
        pool += [st.integers(), st.floats(allow_nan=False), st.booleans()]
    if float in kinds and str not in kinds:
        pool += [NOT_A_NUMBER, st.booleans()]
    if int in kinds and float not in kinds:
        pool += [FRACTIONS, st.booleans()] + ([NOT_A_NUMBER] if str not in kinds else [])
    if kinds == {bool}:
        pool += [st.integers(), NOT_A_NUMBER, st.floats(allow_nan=False)]
    return st.one_of(pool)


def right_values(cls, name: str):
    kinds, optional, item = options(cls, name)
    pool = [st.none()] if optional else []
    if float in kinds:
        pool.append(st.floats(allow_nan=False, allow_infinity=False))
    if int in kinds:
        pool.append(st.integers(min_value=-10**6, max_value=10**6))
    if bool in kinds:
        pool.append(st.booleans())
    if str in kinds and name not in text_forms(cls):
        pool.append(st.text(max_size=10))
    if list in kinds:
        pool.append(st.lists(st.integers(0, 99) if item is int else st.text(min_size=1, max_size=5), max_size=3))
    if dict in kinds:
        pool.append(st.dictionaries(st.text(min_size=1, max_size=3), st.text(min_size=1, max_size=5), max_size=2))
    return st.one_of(pool)


def every_field():
    """Each setting of each class, flat: a method's own given by its fields (the object, method_options, is not one)."""
    return [(cls, f.name) for cls in CLASSES for f in setting_fields(cls)]


def make(cls, name: str, value):
    """``cls`` with setting ``name`` at ``value``, for a method that reads it (a method's own setting: the first such)."""
    readers = method_option_names(cls).get(name)
    return cls(**{name: value}, **({"method": readers[0]} if readers else {}))


def read(config, name: str):
    """Setting ``name`` of ``config``, where it is kept (a method's own, in its method_options)."""
    return getattr(config.method_options if name in method_option_names(type(config)) else config, name)


@pytest.mark.parametrize("cls, name", every_field(), ids=lambda v: getattr(v, "__name__", v))
@SETTINGS
@given(data=st.data())
def test_a_value_of_the_wrong_type_is_refused_naming_the_field(cls, name, data):
    value = data.draw(wrong_values(cls, name))
    with pytest.raises(DomixError, match=f"'{name}'"):
        make(cls, name, value)


# the settings that take one of a few names
CHOICES = {"select_metric": ["accuracy", "macro_f1", "micro_f1"], "autocast": [None, "bfloat16", "float16"],
           "objective": ["auto", "mlm", "clm"], "template": ["alpaca", "chat", "plain"]}
DTYPES = {FinetuneConfig: ["float32", "bfloat16", "float16", "float64"], PretrainConfig: ["float32", "bfloat16", "float16", "float64"],
          InstructConfig: ["auto", "float32", "bfloat16", "float16", "float64"]}


def in_range(cls, name: str, value) -> bool:
    """Whether ``value`` lies in the field's range as RANGES below declares it (values of other fields always do)."""
    if name not in RANGES[cls] or value is None:
        return True
    low, inclusive, high = RANGES[cls][name]
    return (value > low or inclusive and value == low) and (high is None or value < high)


@pytest.mark.parametrize("cls, name", every_field(), ids=lambda v: getattr(v, "__name__", v))
@SETTINGS
@given(data=st.data())
def test_a_value_of_the_right_type_is_taken(cls, name, data):
    choices = DTYPES[cls] if name == "dtype" else CHOICES.get(name)
    value = data.draw(st.sampled_from(choices) if choices else right_values(cls, name).filter(lambda v: in_range(cls, name, v)))
    config = make(cls, name, value)
    assert read(config, name) == value or (isinstance(value, int) and read(config, name) == float(value))


FLOAT_FIELDS = [(cls, name) for cls, name in every_field() if float in options(cls, name)[0]]


@pytest.mark.parametrize("cls, name", FLOAT_FIELDS, ids=lambda v: getattr(v, "__name__", v))
@SETTINGS
@given(value=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_a_number_that_is_not_finite_is_refused_naming_the_field(cls, name, value):
    with pytest.raises(DomixError, match=f"setting '{name}' is .*; give a finite number"):
        make(cls, name, value)


# Each run config's ranges: field -> (lowest allowed, whether the lowest itself is allowed, highest (exclusive) or None)
RANGES = {
    FinetuneConfig: {"lr": (0, False, None), "weight_decay": (0, True, None), "warmup_ratio": (0, True, 1), "max_grad_norm": (0, False, None),
                     "epochs": (1, True, None), "batch_size": (1, True, None), "max_length": (2, True, None), "lora_rank": (1, True, None),
                     "checkpoint_every": (1, True, None), "train_limit": (2, True, None), "eval_limit": (1, True, None),
                     "general_blocks": (1, True, None)},
    PretrainConfig: {"lora_rank": (1, True, None), "alpha": (0, False, None), "dropout": (0, True, 1), "lr": (0, False, None),
                     "weight_decay": (0, True, None), "max_grad_norm": (0, False, None), "warmup_ratio": (0, True, 1), "epochs": (0, False, None),
                     "steps": (1, True, None), "batch_size": (1, True, None), "seq_len": (2, True, None), "mlm_probability": (0, False, 1),
                     "heldout_fraction": (0, True, 1), "heldout_max_blocks": (1, True, None), "checkpoint_every": (1, True, None)},
    InstructConfig: {"lr": (0, False, None), "weight_decay": (0, True, None), "warmup_ratio": (0, True, 1), "max_grad_norm": (0, False, None),
                     "epochs": (1, True, None), "batch_size": (1, True, None), "max_length": (2, True, None), "dev_fraction": (0, False, 1),
                     "lora_rank": (1, True, None), "warmup_steps": (0, True, None), "train_limit": (2, True, None), "eval_limit": (1, True, None),
                     "pad_multiple": (1, True, None), "train_skip": (0, True, None),
                     "choice_beams": (1, True, None),
                     "checkpoint_every": (1, True, None), "general_blocks": (1, True, None)},
}
VALID = {FinetuneConfig: {"task": "t", "model": "m", "out": "o", "method": "lora"},
         PretrainConfig: {"model": "m", "domains": {"a": "x"}, "out": "o"},
         InstructConfig: {"task": "t", "model": "m", "out": "o", "method": "lora"}}  # a labelled task: every field applies
RANGED = [(cls, name, *bounds) for cls, table in RANGES.items() for name, bounds in table.items()]


def _number(cls, name, low, high):
    if int in options(cls, name)[0] and float not in options(cls, name)[0]:
        return st.integers(min_value=int(low) if low is not None else -10**6, max_value=int(high) if high is not None else 10**6)
    return st.floats(min_value=low if low is not None else -1e6, max_value=high if high is not None else 1e6, allow_nan=False)


@pytest.mark.parametrize("cls, name, low, inclusive, high", RANGED, ids=lambda v: getattr(v, "__name__", str(v)))
@SETTINGS
@given(data=st.data())
def test_a_number_out_of_its_range_is_refused_naming_the_flag_and_one_inside_is_taken(cls, name, low, inclusive, high, data):
    below = _number(cls, name, None, low - 1 if inclusive else low).filter(lambda x: x < low or (x == low and not inclusive))
    above = _number(cls, name, high, None) if high is not None else st.nothing()
    bad = data.draw(st.one_of(below, above))
    with pytest.raises(DomixError, match="--" + name.replace("_", "-")):
        cls(**VALID[cls], **{name: bad}).validate()
    top = high if high is not None else low + 100
    good = data.draw(_number(cls, name, low, top).filter(lambda x: (x > low or inclusive and x == low) and (high is None or x < high)))
    cls(**VALID[cls], **{name: good}).validate()


# comparison configs: the top-level keys and wrong values of each, refused by from_yaml before anything is written
def _comparison(root: Path, tiny_llama, corpora, task) -> dict:
    return {"model": str(tiny_llama), "out": str(root / "out"), "domains": {n: str(p) for n, p in corpora.items()},
            "tasks": {"topics": {"path": str(task), "domain": "food"}}, "methods": ["head", "lora"], "seeds": [1]}


WRONG_COMPARISON = {
    "model": st.one_of(LISTS, DICTS, st.integers()),
    "out": st.one_of(LISTS, st.integers()),
    "methods": st.one_of(NOT_A_NUMBER, st.integers(), LISTS, st.just([])),
    "seeds": st.one_of(NOT_A_NUMBER, st.just([]), st.lists(NOT_A_NUMBER, min_size=1, max_size=2), st.lists(FRACTIONS, min_size=1, max_size=2)),
    "jobs": st.one_of(NOT_A_NUMBER, FRACTIONS, LISTS, st.integers(max_value=0)),
    "domains": st.one_of(LISTS, NOT_A_NUMBER, st.just({})),
    "tasks": st.one_of(LISTS, NOT_A_NUMBER, st.just({})),
    "finetune": st.one_of(LISTS, NOT_A_NUMBER),
    "method_seeds": st.one_of(LISTS, NOT_A_NUMBER, st.fixed_dictionaries({"head": NOT_A_NUMBER})),
    "general": st.one_of(LISTS, st.integers()),
    "reference": st.one_of(LISTS, st.integers(), st.just("dora")),
    "stores": st.one_of(LISTS, NOT_A_NUMBER),
    "search": st.one_of(LISTS, NOT_A_NUMBER, st.fixed_dictionaries({"seeds": NOT_A_NUMBER})),
}


@pytest.mark.parametrize("key", list(WRONG_COMPARISON))
@SETTINGS
@given(data=st.data())
def test_a_comparison_field_of_the_wrong_type_or_empty_is_refused_naming_it(key, data, tiny_llama, corpora, task):
    _refused_before_anything({key: data.draw(WRONG_COMPARISON[key])}, key, CompareConfig.from_yaml, tiny_llama, corpora, task)


def _refused_before_anything(change: dict, match: str, run, tiny_llama, corpora, task, yaml_non_finite: bool = False) -> None:
    """A comparison config with ``change`` is refused by ``run(config file)`` with an error matching ``match``, and
    nothing is made (``yaml_non_finite``: '.nan' and '.inf' written as YAML's own non-finite numbers)."""
    with tempfile.TemporaryDirectory() as tmp:
        text = yaml.safe_dump({**_comparison(Path(tmp), tiny_llama, corpora, task), **change})
        if yaml_non_finite:
            text = text.replace("'.nan'", ".nan").replace("'.inf'", ".inf")
        Path(tmp, "c.yaml").write_text(text)
        with pytest.raises(DomixError, match=match):
            run(Path(tmp, "c.yaml"))
        assert not Path(tmp, "out").exists()  # no folder, log or record: no job started


JOB_SETTINGS = {"lr": st.one_of(st.floats(max_value=0), NOT_A_NUMBER, st.just(".nan")), "epochs": st.integers(max_value=0),
                "batch_size": st.one_of(FRACTIONS, st.integers(max_value=0)), "max_grad_norm": st.just(".inf")}


@pytest.mark.parametrize("key", list(JOB_SETTINGS))
@SETTINGS
@given(data=st.data())
def test_a_bad_job_setting_stops_the_comparison_before_its_first_job(key, data, tiny_llama, corpora, task):
    _refused_before_anything({"finetune": {key: data.draw(JOB_SETTINGS[key])}}, key.replace("_", "-") + "|" + key,
                             lambda path: compare(CompareConfig.from_yaml(path), in_process=True), tiny_llama, corpora, task,
                             yaml_non_finite=True)
