"""BlockSkipPlan: defaults, round trips, ratio resolution, and errors that name the JSON path."""

import json

import pytest

from blockskip.skipping.plan import BlockSkipPlan, BlockSkipPlanError
from blockskip.skipping.skip_table import blocks_for_ratio, resolve_ratio


def test_every_field_has_a_default():
    plan = BlockSkipPlan.from_dict({})
    assert plan.residuals.mode == "online"
    assert plan.offload == "cpu"
    assert (plan.patches.min_size, plan.patches.max_size, plan.patches.schedule) == (256, 512, "low_to_high")
    assert plan.resolve_skip("FluxTransformer2DModel", 57)[:2] == (0, 0)


def test_round_trip_through_a_file(tmp_path):
    data = {
        "format": "blockskip.plan",
        "version": 1,
        "model": {"class": "FluxTransformer2DModel", "num_blocks": 57},
        "skip": {"leading": 7, "trailing": 10},
        "residuals": {"mode": "online", "bank": None},
        "offload": "none",
        "patches": {"min_size": 256, "max_size": 512, "multiple_of": 16, "schedule": "high_to_low"},
    }
    plan = BlockSkipPlan.from_dict(data)
    assert plan.to_dict() == data
    path = plan.save(tmp_path / "plan.json")
    assert BlockSkipPlan.load(path) == plan
    assert json.loads(path.read_text()) == data
    # A directory means "the plan saved beside a LoRA".
    plan.save(tmp_path)
    assert BlockSkipPlan.load(tmp_path) == plan


def test_save_leaves_no_temporary_files(tmp_path):
    BlockSkipPlan.from_dict({"skip": {"leading": 1}}).save(tmp_path / "plan.json")
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


@pytest.mark.parametrize(
    "ratio, expected",
    [(0.3, (7, 10)), (0.4, (13, 10)), (0.5, (19, 10))],
)
def test_flux_ratios_come_from_the_paper_table(ratio, expected):
    split = BlockSkipPlan.from_dict({"skip": {"ratio": ratio}}).resolve_skip("FluxTransformer2DModel", 57)
    assert (split.leading, split.trailing) == expected
    assert "paper" in split.source


def test_other_models_get_the_documented_default_split():
    # k = round_half_up(0.3 * 20) = 6 -> 4 leading, 2 trailing.
    split = resolve_ratio("SanaTransformer2DModel", 20, 0.3)
    assert (split.leading, split.trailing) == (4, 2)
    assert "default" in split.source
    # FLUX ratios outside the table fall back to the default too, and say so.
    split = resolve_ratio("FluxTransformer2DModel", 57, 0.2)
    assert split.leading + split.trailing == blocks_for_ratio(0.2, 57) == 11
    assert "no table entry" in split.source


def test_round_half_up():
    assert blocks_for_ratio(0.5, 5) == 3  # 2.5 rounds up, not to even
    assert blocks_for_ratio(0.3, 57) == 17


BAD_PLANS = [
    ({"skipp": {}}, "skipp", "unknown key"),
    ({"skip": {"leading": 1, "lead": 2}}, "skip.lead", "unknown key"),
    ({"skip": {"leading": "7"}}, "skip.leading", "not an integer"),
    ({"skip": {"leading": 7.5}}, "skip.leading", "not an integer"),
    ({"skip": {"leading": True}}, "skip.leading", "not an integer"),
    ({"skip": {"leading": -1}}, "skip.leading", "must be >= 0"),
    ({"skip": {"trailing": -3}}, "skip.trailing", "must be >= 0"),
    ({"model": {"num_blocks": 57}, "skip": {"leading": 60}}, "skip.leading", "exceeds the model's 57 blocks"),
    ({"model": {"num_blocks": 57}, "skip": {"leading": 40, "trailing": 17}}, "skip", "leave none"),
    ({"skip": {"ratio": 1.0}}, "skip.ratio", "must be in [0, 1)"),
    ({"skip": {"ratio": -0.1}}, "skip.ratio", "must be in [0, 1)"),
    ({"skip": {"ratio": "30%"}}, "skip.ratio", "not a number"),
    ({"skip": {"ratio": 0.3, "leading": 2}}, "skip.ratio", "not both"),
    ({"offload": "gpu"}, "offload", "not one of"),
    ({"offload": 1}, "offload", "not a string"),
    ({"offload": "drop"}, "offload", "online residuals need them"),
    ({"residuals": {"mode": "precomputed"}}, "residuals.mode", "not one of"),
    ({"residuals": {"mode": "cached"}}, "residuals.bank", "need the path"),
    ({"residuals": []}, "residuals", "expected an object"),
    ({"model": {"class": 3}}, "model.class", "not a string"),
    ({"model": {"num_blocks": 0}}, "model.num_blocks", "must be in 1..1000"),
    ({"format": "kohya.plan"}, "format", "is not"),
    ({"version": 2}, "version", "newer than this blockskip"),
    ({"version": "1"}, "version", "not an integer"),
    ({"patches": {"min_size": 512, "max_size": 256}}, "patches.max_size", "smaller than"),
    ({"patches": {"min_size": 250, "multiple_of": 16}}, "patches.min_size", "not a multiple"),
    ({"patches": {"min_size": 0}}, "patches.min_size", "must be > 0"),
    ({"patches": {"schedule": "sideways"}}, "patches.schedule", "not one of"),
    ([1, 2], "(root)", "a plan is a JSON object"),
]


@pytest.mark.parametrize("data, path, message", BAD_PLANS, ids=[p for _, p, _ in BAD_PLANS])
def test_bad_plans_name_the_path(data, path, message):
    with pytest.raises(BlockSkipPlanError) as error:
        BlockSkipPlan.from_dict(data)
    assert error.value.path == path
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_errors_echo_the_offending_value():
    with pytest.raises(BlockSkipPlanError, match=r'offload: "gpu" is not one of cpu, none, drop'):
        BlockSkipPlan.from_dict({"offload": "gpu"})


def test_unreadable_file(tmp_path):
    with pytest.raises(BlockSkipPlanError, match=r"missing.json: cannot read the plan: No such file"):
        BlockSkipPlan.load(tmp_path / "missing.json")


def test_invalid_json(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text('{"skip": {"leading": 7,}}')
    with pytest.raises(BlockSkipPlanError, match=r"not valid JSON \(line 1, column 24"):
        BlockSkipPlan.load(path)


def test_plan_for_another_model_names_both():
    plan = BlockSkipPlan.from_dict({"model": {"class": "FluxTransformer2DModel", "num_blocks": 57}})
    with pytest.raises(BlockSkipPlanError, match="made for FluxTransformer2DModel, but the model is SanaTransformer2DModel"):
        plan.resolve_skip("SanaTransformer2DModel", 20)
    with pytest.raises(BlockSkipPlanError, match="made for 57 blocks, but this FluxTransformer2DModel has 7"):
        plan.resolve_skip("FluxTransformer2DModel", 7)


def test_skip_that_leaves_nothing_is_refused_at_resolution():
    plan = BlockSkipPlan.from_dict({"skip": {"leading": 4, "trailing": 3}})
    with pytest.raises(BlockSkipPlanError, match="must keep at least one"):
        plan.resolve_skip("FluxTransformer2DModel", 7)
