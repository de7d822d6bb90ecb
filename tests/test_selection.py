"""Profiles, the (n*, m*) search and its tie rule, the Euler sampler, embedders, select_blocks."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from blockskip.selection.embeddings import ClipImageEmbedder, DinoEmbedder, LatentEmbedder, cosine_distance, load_embedder
from blockskip.selection.plotting import draw_profile, save_profile_plot
from blockskip.selection.profile import (
    ProfileError,
    SelectionProfile,
    best_skip,
    search_split,
    table_from_profile,
    table_source_code,
)
from blockskip.selection.select import select_blocks, window_starts
from blockskip.skipping import skip_table
from blockskip.training.sampling import EulerSampler, timestep_scale_for
from tiny_models import build_tiny


def _profile(num_blocks, leading, trailing, **extra):
    """A one-sample profile from per-count distances."""
    return SelectionProfile(
        model_class="HandMade", num_blocks=num_blocks, samples=["x"],
        leading=[[value] for value in leading], trailing=[[value] for value in trailing], **extra,
    )


# ----------------------------------------------------------------------------- the search


def test_search_returns_the_argmin():
    # costs for k = 4: n=0: 0+.9, n=1: .1+.5, n=2: .2+.3, n=3: .6+.1, n=4: .8+0
    profile = _profile(8, [0.1, 0.2, 0.6, 0.8], [0.1, 0.3, 0.5, 0.9])
    split = search_split(profile, 4)
    assert (split.leading, split.trailing) == (2, 2)
    assert math.isclose(profile.cost(2, 2), 0.5)
    assert "measured with blockskip select" in split.source


def test_ties_go_to_the_most_leading_blocks():
    # k = 3: (0, 3) .6, (1, 2) .5, (2, 1) .5, (3, 0) .7 -> tie between n = 1 and n = 2 -> (2, 1)
    profile = _profile(6, [0.1, 0.4, 0.7], [0.1, 0.4, 0.6])
    assert tuple(search_split(profile, 3))[:2] == (2, 1)
    # Within a relative 1e-9 counts as a tie; beyond it does not.
    almost = _profile(6, [0.1, 0.4 + 1e-12, 0.7], [0.1, 0.4, 0.6])
    assert tuple(search_split(almost, 3))[:2] == (2, 1)
    worse = _profile(6, [0.1, 0.4 + 1e-6, 0.7], [0.1, 0.4, 0.6])
    assert tuple(search_split(worse, 3))[:2] == (1, 2)
    # All equal: everything ties, the whole skip is leading.
    flat = _profile(6, [0.0] * 5, [0.0] * 5)
    assert tuple(search_split(flat, 5))[:2] == (5, 0)


def test_k_zero_and_k_n_minus_one():
    profile = _profile(5, [0.1, 0.2, 0.3, 0.9], [0.05, 0.5, 0.6, 0.7])
    assert tuple(search_split(profile, 0))[:2] == (0, 0)
    # k = N - 1 = 4: n=0: .7, n=1: .1+.6, n=2: .2+.5, n=3: .3+.05, n=4: .9 -> (3, 1)
    assert tuple(search_split(profile, 4))[:2] == (3, 1)
    with pytest.raises(ProfileError, match=r"k = 5 must be in \[0, 4\]"):
        search_split(profile, 5)


def test_k_beyond_the_measured_counts_is_refused():
    profile = _profile(10, [0.1, 0.2], [0.1, 0.2, 0.3])
    assert profile.max_skip == 2
    with pytest.raises(ProfileError, match="covers 2 leading and 3 trailing"):
        search_split(profile, 3)


def test_best_skip_rounds_the_ratio_half_up():
    profile = _profile(5, [0.1, 0.2, 0.3, 0.9], [0.05, 0.5, 0.6, 0.7])
    assert sum(tuple(best_skip(profile, 0.5))[:2]) == 3  # 2.5 -> 3, not 2
    assert sum(tuple(best_skip(profile, 0.3))[:2]) == 2  # 1.5 -> 2


@settings(max_examples=150, deadline=None)
@given(
    st.integers(2, 9).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.5]), min_size=n - 1, max_size=n - 1),
            st.lists(st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.5]), min_size=n - 1, max_size=n - 1),
            st.integers(0, n - 1),
        )
    )
)
def test_search_matches_brute_force(case):
    num_blocks, leading, trailing, k = case
    profile = _profile(num_blocks, leading, trailing)
    split = search_split(profile, k)
    costs = {n: ([0.0] + leading)[n] + ([0.0] + trailing)[k - n] for n in range(k + 1)}
    best = min(costs.values())
    assert split.leading + split.trailing == k
    assert split.leading == max(n for n, cost in costs.items() if cost <= best + 1e-9)


# ----------------------------------------------------------------------------- profiles on disk


def test_profile_round_trips_through_json(tmp_path):
    profile = SelectionProfile(
        model_class="FluxTransformer2DModel", num_blocks=7, samples=["a|p|seed=0", "b|p|seed=0"],
        leading=[[0.1, 0.2], [0.3, 0.25]], trailing=[[0.05, 0.1], [0.2, 0.2]],
        window_size=3, window_stride=2, window_starts=[0, 2, 4], window_distances=[[0.1, 0.1], [0.5, 0.4], [0.2, 0.3]],
        metric="dino:dinov2-small", block_lists=[("transformer_blocks", 3), ("single_transformer_blocks", 4)],
        settings={"steps": 20, "seeds": [0]},
    )
    path = profile.save(tmp_path / "sub" / "profile.json")
    loaded = SelectionProfile.load(path)
    assert loaded == profile
    assert json.loads(path.read_text())["format"] == "blockskip.selection_profile"
    assert loaded.window_curve() == pytest.approx([0.1, 0.45, 0.25])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(format="other"), "not a selection profile"),
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d["leading"].append([0.1]), r"leading\[1\]: expected 2 distances"),
        (lambda d: d["trailing"][0].__setitem__(0, float("nan")), "not a finite number"),
        (lambda d: d["window"].update(starts=[3]), "does not fit a window"),
        (lambda d: d.pop("samples"), "missing or mistypes"),
    ],
)
def test_bad_profiles_are_clear_errors(change, message):
    data = SelectionProfile(
        model_class="M", num_blocks=4, samples=["a", "b"], leading=[[0.1, 0.2]], trailing=[[0.1, 0.1]],
        window_size=2, window_starts=[0], window_distances=[[0.3, 0.2]],
    ).to_dict()
    change(data)
    with pytest.raises(ProfileError, match=message):
        SelectionProfile.from_dict(json.loads(json.dumps(data, allow_nan=True)))


def test_measured_tables_print_as_code_and_register(monkeypatch):
    profile = _profile(10, [0.1, 0.2, 0.3, 0.4], [0.05, 0.1, 0.5, 0.9])
    table = table_from_profile(profile)
    assert table.kind == "measured" and "latent-cosine" in table.provenance
    assert set(table.entries) == {0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4}  # k <= 4 only
    namespace = {"SkipTable": skip_table.SkipTable}
    exec("entries = {\n" + table_source_code(table) + "\n}", namespace)
    assert namespace["entries"][("HandMade", 10)] == table

    monkeypatch.setattr(skip_table, "_TABLES", dict(skip_table._TABLES))
    skip_table.register_skip_table(table)
    split = skip_table.resolve_ratio("HandMade", 10, 0.3)
    assert (split.leading, split.trailing) == tuple(best_skip(profile, 0.3))[:2]
    assert split.source.startswith("measured with blockskip select")
    with pytest.raises(ValueError, match="pass replace=True"):
        skip_table.register_skip_table(table)
    # The paper's table is still marked as the paper's; other models say they use the default.
    assert skip_table.get_skip_table("FluxTransformer2DModel", 57).kind == "paper"
    assert skip_table.get_skip_table("SD3Transformer2DModel", 24) is skip_table.DEFAULT_TABLE


def test_plot_is_a_png_with_the_chosen_skip_shaded(tmp_path):
    profile = _profile(
        6, [0.1, 0.2, 0.3], [0.1, 0.2, 0.3], window_size=2, window_starts=[0, 2, 4],
        window_distances=[[0.1], [0.4], [0.2]], block_lists=[("double", 2), ("single", 4)],
    )
    path = save_profile_plot(profile, tmp_path / "curve.png", split=(2, 1))
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (960, 640)
    plain = draw_profile(profile)
    assert plain.tobytes() != image.convert("RGB").tobytes()


# ----------------------------------------------------------------------------- sampler, embedders


class _StraightFlow(torch.nn.Module):
    """Predicts the exact velocity toward a fixed x0: Euler is then exact in any number of steps."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, hidden_states, timestep, return_dict=True):
        return ((hidden_states - self.target) / timestep[:, None],)


def test_euler_sampler_is_exact_on_straight_paths():
    target = torch.randn(2, 5, dtype=torch.float64)
    noise = torch.randn(2, 5, dtype=torch.float64)
    for steps, shift in ((1, 1.0), (4, 1.0), (7, 3.0)):
        sampler = EulerSampler(steps=steps, shift=shift, timestep_scale=1.0)
        result = sampler.sample(_StraightFlow(target), {"hidden_states": noise})
        torch.testing.assert_close(result, target)
    assert EulerSampler(steps=2, shift=3.0).sigmas().tolist() == [1.0, 0.75, 0.0]


def test_timestep_scales():
    assert timestep_scale_for(build_tiny("FluxTransformer2DModel").model) == 1.0
    assert timestep_scale_for(build_tiny("SD3Transformer2DModel").model) == 1000.0
    with pytest.raises(ValueError, match="v-prediction"):
        timestep_scale_for(build_tiny("CogVideoXTransformer3DModel").model)


def test_image_embedders_load_local_dino_and_clip(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=28, patch_size=14)).save_pretrained(tmp_path / "dino")
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=28, patch_size=14,
                                                   projection_dim=8)).save_pretrained(tmp_path / "clip")
    images = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    for spec, kind, width in ((tmp_path / "dino", DinoEmbedder, 16), (tmp_path / "clip", ClipImageEmbedder, 8)):
        embedder = load_embedder(str(spec))
        assert isinstance(embedder, kind) and embedder.wants == "images"
        embeddings = embedder(images)
        assert embeddings.shape == (2, width)
        assert cosine_distance(embeddings, embedder(images)).abs().max() < 1e-6
        assert cosine_distance(embeddings, embedder(images.flip(-1))).min() > 0
    assert isinstance(load_embedder(f"dino:{tmp_path / 'clip'}"), DinoEmbedder)  # explicit kind wins
    assert isinstance(load_embedder("latent"), LatentEmbedder)
    with pytest.raises(FileNotFoundError, match="not 'latent' and no such folder"):
        load_embedder(str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- select_blocks


def test_window_positions():
    assert window_starts(57, 14) == list(range(44))
    assert window_starts(7, 14) == [0]  # clamped to the depth
    assert window_starts(10, 4, 4) == [0, 4, 6]  # the last position is always probed
    with pytest.raises(ValueError):
        window_starts(10, 0)


@pytest.mark.parametrize("family", ["FluxTransformer2DModel", "SD3Transformer2DModel", "SanaTransformer2DModel"])
def test_select_blocks_on_a_bare_transformer(family):
    case = build_tiny(family)
    inputs = [case.inputs(seed=seed, batch=2) for seed in (0, 1)]
    profile = select_blocks(case.model, inputs=inputs, window=14, max_skip=2, sampler=EulerSampler(steps=2),
                            progress=False)
    num_blocks = len(case.blocks())
    assert profile.model_class == family and profile.num_blocks == num_blocks
    assert profile.window_size == num_blocks and profile.window_starts == [0]  # window 14 clamped
    assert profile.samples == ["inputs[0][0]", "inputs[0][1]", "inputs[1][0]", "inputs[1][1]"]
    assert profile.max_leading == profile.max_trailing == 2
    rows = profile.leading + profile.trailing + profile.window_distances
    every = [value for row in rows for value in row]
    assert all(value >= -1e-12 for value in every) and max(every) > 0
    split = best_skip(profile, 2 / num_blocks)
    assert split.leading + split.trailing == 2
    assert [name for name, _ in profile.block_lists] == list(case.block_lists)


def _hook_count(model):
    return sum(len(module._forward_hooks) + len(module._forward_pre_hooks) for module in model.modules())


def test_select_blocks_is_deterministic_and_leaves_no_hooks():
    case = build_tiny("SanaTransformer2DModel")
    inputs = [case.inputs(seed=3)]
    hooks_before = _hook_count(case.model)
    first = select_blocks(case.model, inputs=inputs, window=2, stride=2, max_skip=1,
                          sampler=EulerSampler(steps=2), progress=False)
    second = select_blocks(case.model, inputs=inputs, window=2, stride=2, max_skip=1,
                           sampler=EulerSampler(steps=2), progress=False)
    assert first.leading == second.leading and first.window_distances == second.window_distances
    assert first.window_starts == [0, 2]
    assert _hook_count(case.model) == hooks_before  # the probe's hooks are gone


def test_select_blocks_argument_errors():
    case = build_tiny("SanaTransformer2DModel")
    with pytest.raises(ValueError, match="give a pipeline"):
        select_blocks(case.model, prompts=["a dog"])
    with pytest.raises(ValueError, match="max_skip 4"):
        select_blocks(case.model, inputs=[case.inputs()], max_skip=4, progress=False)
    with pytest.raises(ValueError, match="needs a pipeline"):
        select_blocks(case.model, inputs=[case.inputs()], loras=["x"], progress=False)
