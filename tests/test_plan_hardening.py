"""Plans tried as an attacker would: every malformed file or value is a `BlockSkipPlanError` naming
the place, the natural Python spellings of values are accepted, and random mutations of valid
plans either are refused that way or give a plan that keeps its documented rules and is exact."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from blockskip import BlockSkipPlan, apply_block_skip, remove_block_skip
from blockskip.skipping.plan_sections import (
    MAX_BLOCKS,
    MAX_CROP_SIZE,
    OFFLOAD_TARGETS,
    PATCH_SCHEDULES,
    RESIDUAL_MODES,
    STORAGE_DTYPES,
    BlockSkipPlanError,
)
from tiny_models import build_tiny

VALID = {
    "format": "blockskip.plan",
    "version": 1,
    "model": {"class": "FluxTransformer2DModel", "num_blocks": 8},
    "skip": {"leading": 2, "trailing": 1},
    "residuals": {"mode": "online", "bank": None},
    "offload": "cpu",
    "patches": {"min_size": 256, "max_size": 512, "multiple_of": 16, "schedule": "low_to_high"},
    "kept_blocks": {"gradient_checkpointing": True, "storage_dtype": None, "group_offload": False},
}


def _load_bytes(tmp_path, raw: bytes) -> BlockSkipPlan:
    path = tmp_path / "plan.json"
    path.write_bytes(raw)
    return BlockSkipPlan.load(path)


# ----------------------------------------------------------------------------- the file


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_a_plan_saved_with_a_byte_order_mark_loads(tmp_path, encoding):
    assert _load_bytes(tmp_path, json.dumps(VALID).encode(encoding)) == BlockSkipPlan.from_dict(VALID)


BAD_FILES = {
    "a stray byte": (b'{"skip": {"leading": 2\xff}}', "is not UTF-8 text (byte 22"),
    "latin-1 text": ('{"model": {"class": "Flüx"}}'.encode("latin-1"), "is not UTF-8 text"),
    "utf-16 without a byte-order mark": (json.dumps(VALID).encode("utf-16-le"), "is not valid JSON"),
    "nested too deeply": (b'{"skip": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    "a 5000-digit integer": (b'{"skip": {"leading": ' + b"7" * 5000 + b"}}", "an integer of 5000 digits"),
    "NaN": (b'{"skip": {"ratio": NaN}}', "NaN is not a JSON number"),
    "Infinity": (b'{"patches": {"max_size": -Infinity}}', "-Infinity is not a JSON number"),
    "a repeated top-level key": (b'{"skip": {"leading": 1},\n "skip": {"leading": 9}}', 'duplicate key "skip" (line 2, column 2)'),
    "a repeated nested key": (b'{"skip": {"leading": 1, "leading": 9}}', 'duplicate key "leading"'),
    "two documents": (b"{} {}", "Extra data"),
    "empty": (b"", "is not valid JSON"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_malformed_file_is_a_plan_error_naming_the_file(tmp_path, case):
    raw, message = BAD_FILES[case]
    with pytest.raises(BlockSkipPlanError) as error:
        _load_bytes(tmp_path, raw)
    assert error.value.path == str(tmp_path / "plan.json")
    assert message in str(error.value)


def test_a_missing_file_and_a_folder_without_a_plan_are_plan_errors(tmp_path):
    with pytest.raises(BlockSkipPlanError, match="missing.json: cannot read the plan: No such file"):
        BlockSkipPlan.load(tmp_path / "missing.json")
    with pytest.raises(BlockSkipPlanError, match="blockskip_plan.json: cannot read the plan"):
        BlockSkipPlan.load(tmp_path)


# ----------------------------------------------------------------------------- Python values


def test_natural_python_values_are_taken_as_their_json(tmp_path):
    plan = BlockSkipPlan.from_dict({
        "model": {"num_blocks": np.int64(8)},
        "skip": {"leading": np.int32(2), "trailing": torch.tensor(1)},
        "residuals": {"mode": "cached", "bank": tmp_path / "bank"},
        "patches": {"min_size": np.uint16(256), "max_size": torch.tensor(512, dtype=torch.int16)},
        "kept_blocks": {"gradient_checkpointing": np.bool_(True)},
    })
    assert (plan.model.num_blocks, plan.skip.leading, plan.skip.trailing) == (8, 2, 1)
    assert plan.residuals.bank == str(tmp_path / "bank")
    assert plan.kept_blocks.gradient_checkpointing is True
    assert all(type(value) is int for value in (plan.skip.leading, plan.skip.trailing, plan.patches.max_size))
    ratio = BlockSkipPlan.from_dict({"skip": {"ratio": torch.tensor(0.25, dtype=torch.float64)}}).skip.ratio
    assert ratio == 0.25 and type(ratio) is float
    assert BlockSkipPlan.from_dict({"skip": {"ratio": np.float32(0.5)}}).skip.ratio == 0.5
    assert BlockSkipPlan.load(plan.save(tmp_path / "plan.json")) == plan  # and they are written as JSON


BAD_VALUES = [
    ({"skip": {"leading": b"7"}}, "skip.leading", "bytes b'7' is not an integer"),
    ({"skip": {"leading": 2.0}}, "skip.leading", "2.0 is not an integer"),
    ({"skip": {"leading": True}}, "skip.leading", "true is not an integer"),
    ({"skip": {"leading": torch.ones(2)}}, "skip.leading", "Tensor tensor([1., 1.]) is not an integer"),
    ({"skip": {"leading": torch.tensor(2.5)}}, "skip.leading", "2.5 is not an integer"),
    ({"skip": {"ratio": {1, 2}}}, "skip.ratio", "set {1, 2} is not a number"),
    ({"skip": {"ratio": float("nan")}}, "skip.ratio", "nan is not a finite number"),
    ({"skip": {"ratio": np.float64("inf")}}, "skip.ratio", "inf is not a finite number"),
    ({"skip": {"ratio": "0.3"}}, "skip.ratio", '"0.3" is not a number'),
    ({"residuals": {"bank": b"bank"}}, "residuals.bank", "bytes b'bank' is not a string (a path)"),
    ({"residuals": {"mode": Path("cached")}}, "residuals.mode", "is not a string"),
    ({"model": {"class": object}}, "model.class", "type <class 'object'> is not a string"),
    ({"offload": ["cpu"]}, "offload", '["cpu"] is not a string'),
    ({"version": np.float64(1.5)}, "version", "1.5 is not an integer"),
    ({"skip": {"leading": 10**5000}}, "skip.leading", "an integer of about 5001 digits is more blocks than any model has"),
    ({3: {}}, "3", "unknown key"),
    ({"skip": {("a",): 1}}, 'skip.["a"]', "unknown key"),
]


@pytest.mark.parametrize("data, path, message", BAD_VALUES, ids=[f"{p}={m[:20]}" for _, p, m in BAD_VALUES])
def test_a_value_of_the_wrong_kind_is_refused_naming_the_field(data, path, message):
    with pytest.raises(BlockSkipPlanError) as error:
        BlockSkipPlan.from_dict(data)
    assert error.value.path == path
    assert message in str(error.value)


@pytest.mark.parametrize("plan", [7, None, "", b"plan.json", [VALID], 2.5])
def test_what_is_not_a_plan_is_refused_saying_what_a_plan_may_be(plan):
    model = build_tiny("FluxTransformer2DModel").model
    with pytest.raises(BlockSkipPlanError, match=r"^\(plan\): a plan is a BlockSkipPlan, a dict or the path of a plan file, not "):
        apply_block_skip(model, plan)
    assert not hasattr(model, "_blockskip_handle") or model._blockskip_handle is None


MEANINGLESS = [
    ({"residuals": {"mode": "cached", "bank": ""}}, "residuals.bank", "is empty"),
    ({"residuals": {"mode": "cached", "bank": "  "}}, "residuals.bank", "is empty"),
    ({"model": {"class": ""}}, "model.class", "is empty"),
    ({"model": {"num_blocks": 10**6}}, "model.num_blocks", "must be in 1..1000"),
    ({"skip": {"trailing": 5000}}, "skip.trailing", "more blocks than any model has"),
    ({"patches": {"max_size": 10**30}}, "patches.max_size", "past any training crop size"),
    ({"patches": {"min_size": 2**20, "max_size": 2**20, "multiple_of": 16}}, "patches.min_size", "past any training crop size"),
    ({"patches": {"multiple_of": 10**9}}, "patches.multiple_of", "past any training crop size"),
]


@pytest.mark.parametrize("data, path, message", MEANINGLESS, ids=[p for _, p, _ in MEANINGLESS])
def test_accepted_but_meaningless_values_are_refused_with_a_reason(data, path, message):
    with pytest.raises(BlockSkipPlanError) as error:
        BlockSkipPlan.from_dict(data)
    assert error.value.path == path and message in str(error.value)


@pytest.mark.parametrize("data", [{}, {"skip": {}}, {"skip": {"leading": 3}}, {"skip": {"ratio": 0.3}}, VALID])
def test_every_plan_round_trips_through_its_file(tmp_path, data):
    plan = BlockSkipPlan.from_dict(data)
    assert BlockSkipPlan.load(plan.save(tmp_path / "plan.json")) == plan
    assert BlockSkipPlan.from_dict(plan.to_dict()) == plan


# ----------------------------------------------------------------------------- fuzzing

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)
_PYTHON = st.one_of(
    st.binary(max_size=4),
    st.builds(Path, st.text(max_size=6)),
    st.integers(-5, 600).map(np.int64),
    st.floats(width=32).map(np.float32),
    st.floats(allow_nan=False, allow_infinity=False).map(torch.tensor),
    st.sets(st.integers(), max_size=2),
    st.just(object()),
)
# Values a plan could plausibly hold, so that mutations often give a valid plan and reach the checks.
_PLAUSIBLE = st.one_of(
    st.integers(0, 12), st.sampled_from([0.0, 0.25, 0.5, 0.99, 1.0, -0.1, 16, 64, 128, 256, 512, 1024, 2**15]),
    st.sampled_from([*RESIDUAL_MODES, *OFFLOAD_TARGETS, *PATCH_SCHEDULES, *STORAGE_DTYPES, "FluxTransformer2DModel", ""]),
)


def _places(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _places(child, (*prefix, key))


def _mutate(plan: dict, data) -> None:
    place = data.draw(st.sampled_from(list(_places(plan))[1:]), label="place")
    parent = plan
    for key in place[:-1]:
        parent = parent[key]
    operation = data.draw(st.sampled_from(["replace", "delete", "add"]), label="operation")
    value = data.draw(st.one_of(_PLAUSIBLE, _JSON, _PYTHON), label="value")
    if operation == "replace":
        parent[place[-1]] = value
    elif operation == "delete":
        del parent[place[-1]]
    else:
        parent[data.draw(st.one_of(st.text(max_size=8), st.sampled_from(list(parent))), label="key")] = value


def _check_documented_rules(plan: BlockSkipPlan) -> None:
    skip, patches = plan.skip, plan.patches
    if skip.ratio is not None:
        assert skip.leading is None and skip.trailing is None and 0 <= skip.ratio < 1
    else:
        assert 0 <= skip.leading <= MAX_BLOCKS and 0 <= skip.trailing <= MAX_BLOCKS
        if plan.model.num_blocks is not None:
            assert skip.leading + skip.trailing < plan.model.num_blocks <= MAX_BLOCKS
    assert plan.residuals.mode in RESIDUAL_MODES and plan.offload in OFFLOAD_TARGETS
    assert plan.residuals.mode != "cached" or (plan.residuals.bank or "").strip()
    assert not (plan.offload == "drop" and plan.residuals.mode == "online")
    assert 0 < patches.min_size <= patches.max_size <= MAX_CROP_SIZE and patches.schedule in PATCH_SCHEDULES
    if patches.multiple_of is not None:
        assert patches.min_size % patches.multiple_of == 0 == patches.max_size % patches.multiple_of
    assert plan.kept_blocks.storage_dtype in (None, *STORAGE_DTYPES)
    for value in (skip.ratio, skip.leading, skip.trailing, patches.min_size, patches.max_size):
        assert value is None or (type(value) in (int, float) and math.isfinite(value))
    assert BlockSkipPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


@settings()  # the profile from conftest.py (ci or long)
@given(data=st.data(), mutations=st.integers(1, 4))
def test_random_mutations_of_a_valid_plan_are_refused_or_keep_the_rules(data, mutations):
    plan = json.loads(json.dumps(VALID))
    for _ in range(mutations):
        _mutate(plan, data)
    try:
        accepted = BlockSkipPlan.from_dict(plan)
    except BlockSkipPlanError as error:
        event("refused")
        assert str(error).startswith(f"{error.path}: ") and len(str(error)) < 400
        return
    event("accepted")
    _check_documented_rules(accepted)


_BYTE_DAMAGE = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=6)),
)


@settings()
@given(damages=st.lists(_BYTE_DAMAGE, min_size=1, max_size=3))
def test_random_byte_damage_to_a_plan_file_is_refused_or_keeps_the_rules(tmp_path_factory, damages):
    raw = bytearray(json.dumps(VALID, indent=2).encode())
    for damage in damages:
        at = damage[1] % (len(raw) + 1)
        if damage[0] == "flip" and raw:
            raw[at % len(raw)] ^= damage[2]
        elif damage[0] == "truncate":
            del raw[at:]
        elif damage[0] == "insert":
            raw[at:at] = damage[2]
    folder = tmp_path_factory.mktemp("damaged")
    try:
        accepted = _load_bytes(folder, bytes(raw))
    except BlockSkipPlanError:
        event("refused")
        return
    event("accepted")
    _check_documented_rules(accepted)


@pytest.fixture(scope="module")
def tiny_flux():
    case = build_tiny("FluxTransformer2DModel")
    kwargs = case.inputs(seed=0, batch=1)
    with torch.no_grad():
        reference = case.output(case.model(**kwargs))
    return case, kwargs, reference


@settings(max_examples=25)  # each example runs the tiny model
@given(data=st.data())
def test_every_accepted_skip_plan_gives_the_full_models_output(tiny_flux, data):
    """Random plans that get through validation and onto the model are exact with zero LoRA."""
    case, kwargs, reference = tiny_flux
    blocks = case.model.config.num_layers + case.model.config.num_single_layers
    plan = {
        "skip": data.draw(
            st.one_of(
                st.fixed_dictionaries({"leading": st.integers(0, blocks), "trailing": st.integers(0, blocks)}),
                st.fixed_dictionaries({"ratio": st.floats(0, 0.99)}),
            ),
            label="skip",
        ),
        "model": data.draw(st.sampled_from([{}, {"num_blocks": blocks}, {"class": "FluxTransformer2DModel"}]), label="model"),
        "offload": data.draw(st.sampled_from(["cpu", "none"]), label="offload"),
    }
    try:
        apply_block_skip(case.model, plan)
    except BlockSkipPlanError:
        event("refused")
        return  # e.g. nothing left to train; the plan error said so
    event("applied")
    try:
        with torch.no_grad():
            torch.testing.assert_close(case.output(case.model(**kwargs)), reference, rtol=0, atol=0)
    finally:
        remove_block_skip(case.model)

