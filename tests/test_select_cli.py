"""`blockskip select` end to end on tiny pipelines built offline (no network, latent metric)."""

import json

import pytest
import torch
from PIL import Image

from blockskip.cli import main
from blockskip.selection.profile import SelectionProfile
from blockskip.selection.select import select_blocks
from blockskip.skipping.plan import BlockSkipPlan
from tiny_pipelines import PIPELINE_CALL_DEFAULTS, build_tiny_pipeline, load_tiny_pipeline, save_tiny_lora


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    """A tiny FLUX pipeline folder (2 double + 4 single blocks), two LoRAs and a prompt file."""
    root = tmp_path_factory.mktemp("flux")
    folder = build_tiny_pipeline("flux", root / "pipeline")
    loras = [save_tiny_lora("flux", folder, root / f"lora_{name}", seed=seed) for seed, name in enumerate("ab", 1)]
    prompts = root / "prompts.txt"
    prompts.write_text("# one prompt a line\na photo of sks dog on the beach\n\n")
    return folder, loras, prompts


def _select(*arguments):
    return main(["select", *map(str, arguments)])


def test_select_writes_plan_profile_and_plot(flux, tmp_path, capsys):
    folder, loras, prompts = flux
    plan_path = tmp_path / "out" / "plan.json"
    code = _select(
        "--pipeline", folder, "--lora", *loras, "--prompts", prompts, "--ratio", 0.3, "-o", plan_path,
        "--window", 3, "--steps", 2, "--height", 64, "--width", 64, "--pipeline-arg", "max_sequence_length=16",
        "--device", "cpu",
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "blockskip select (FluxTransformer2DModel)" in captured.err  # the progress bar

    plan = BlockSkipPlan.load(plan_path)
    assert (plan.model.class_name, plan.model.num_blocks) == ("FluxTransformer2DModel", 6)
    assert plan.skip.leading + plan.skip.trailing == 2  # round_half_up(0.3 * 6)
    assert plan.resolve_skip("FluxTransformer2DModel", 6).leading == plan.skip.leading

    profile = SelectionProfile.load(tmp_path / "out" / "plan.profile.json")
    assert profile.samples == [f"lora_{name}|a photo of sks dog on the beach|seed=0" for name in "ab"]
    assert profile.window_size == 3 and profile.window_starts == [0, 1, 2, 3]
    assert profile.max_skip == 2 and profile.settings["loras"] == [str(path) for path in loras]
    assert Image.open(tmp_path / "out" / "plan.png").size == (960, 640)
    assert f"skip {plan.skip.leading} leading + {plan.skip.trailing} trailing" in captured.out

    # Any covered ratio is then a lookup, with no generation at all.
    code = _select("--from-profile", tmp_path / "out" / "plan.profile.json", "--ratio", 0.2, "-o", tmp_path / "p2.json")
    assert code == 0
    assert sum(BlockSkipPlan.load(tmp_path / "p2.json").to_dict()["skip"].values()) == 1
    code = _select("--from-profile", tmp_path / "out" / "plan.profile.json", "--table")
    printed = capsys.readouterr().out
    assert code == 0 and "('FluxTransformer2DModel', 6): SkipTable(" in printed and "kind='measured'" in printed


def test_select_errors_are_clear(flux, tmp_path, capsys):
    folder, _, prompts = flux
    assert _select("--pipeline", folder, "--ratio", 0.3, "-o", tmp_path / "plan.json") == 2
    assert "--prompts FILE" in capsys.readouterr().err
    assert _select("--pipeline", folder, "--prompts", prompts) == 2
    assert "give --ratio and -o PLAN" in capsys.readouterr().err
    profile = SelectionProfile(model_class="M", num_blocks=10, samples=["a"], leading=[[0.1]], trailing=[[0.1]])
    profile.save(tmp_path / "small.json")
    assert _select("--from-profile", tmp_path / "small.json", "--ratio", 0.5, "-o", tmp_path / "p.json") == 2
    assert "rerun with a larger max_skip" in capsys.readouterr().err


def test_loras_are_loaded_one_at_a_time_and_unloaded(flux):
    folder, loras, _ = flux
    pipeline = load_tiny_pipeline("flux", folder)
    arguments = dict(window=0, max_skip=1, steps=2, pipeline_kwargs=PIPELINE_CALL_DEFAULTS["flux"], progress=False)
    with_lora = select_blocks(pipeline, ["a sks dog"], loras=loras[:1], **arguments)
    assert not any("lora" in name for name, _ in pipeline.transformer.named_parameters())
    without = select_blocks(pipeline, ["a sks dog"], **arguments)
    assert with_lora.leading != without.leading  # the LoRA changed what was probed
    per_lora = select_blocks(pipeline, {"lora_a": ["a sks dog"], "*": ["a red toy"]}, loras=loras, **arguments)
    assert [sample.split("|")[:2] for sample in per_lora.samples] == [["lora_a", "a sks dog"], ["lora_b", "a red toy"]]


def test_a_dino_embedder_compares_decoded_images(flux, tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    folder, loras, _ = flux
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=28, patch_size=14)).save_pretrained(tmp_path / "dino")
    pipeline = load_tiny_pipeline("flux", folder)
    profile = select_blocks(
        pipeline, ["a sks dog"], loras=loras[:1], window=0, max_skip=1, steps=2, embedder=str(tmp_path / "dino"),
        pipeline_kwargs=PIPELINE_CALL_DEFAULTS["flux"], progress=False,
    )
    assert profile.metric == "dino:dino" and profile.leading[0][0] >= 0
    pipeline.load_lora_weights(str(loras[1]), adapter_name="mine")
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        select_blocks(pipeline, ["a sks dog"], loras=loras[:1], window=0, max_skip=1, progress=False)


@pytest.mark.parametrize("family", ["sd3", "sana"])
def test_tiny_pipelines_of_other_families_run_the_probe(family, tmp_path):
    folder = build_tiny_pipeline(family, tmp_path / family)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["transformer"][0] == "diffusers" and index["tokenizer"][0] == "transformers"
    pipeline = load_tiny_pipeline(family, folder)
    profile = select_blocks(
        pipeline, ["a photo of sks dog"], window=2, stride=2, max_skip=1, steps=2,
        pipeline_kwargs=PIPELINE_CALL_DEFAULTS[family], progress=False,
    )
    assert profile.num_blocks == 5 and len(profile.samples) == 1
    assert all(torch.isfinite(torch.tensor(row)).all() for row in profile.leading + profile.window_distances)
    assert max(profile.window_curve()) > 0
