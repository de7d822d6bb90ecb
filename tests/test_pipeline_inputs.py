"""PipelineInputs, ImageFolder and the schedule file: the pieces `blockskip precompute` and training share."""

import json

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from blockskip import DynamicPatchCollator, TrainingSchedule
from blockskip.crops.image_folder import ImageFolder, ImageFolderError
from blockskip.crops.patches import PatchSchedule
from blockskip.crops.sampler_spec import parse_sampler, sampler_from_dict, sampler_to_dict
from blockskip.crops.timesteps import LogitNormalSampler, ShiftedSampler, UniformSampler
from blockskip.training.pipeline_inputs import PipelineInputs, image_ids, load_pipeline, pack_latents
from tiny_image_folders import CAPTIONS, write_images
from tiny_pipelines import MAX_TOKENS, build_tiny_pipeline


def test_flux_packing_and_ids_match_the_pipeline():
    from diffusers import FluxPipeline

    latents = torch.randn(2, 16, 6, 4)
    assert torch.equal(pack_latents(latents), FluxPipeline._pack_latents(latents, 2, 16, 6, 4))
    assert torch.equal(image_ids(3, 2), FluxPipeline._prepare_latent_image_ids(2, 3, 2, "cpu", torch.float32))


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux-inputs")
    pipeline = load_pipeline(build_tiny_pipeline("flux", root / "pipeline"))
    images = ImageFolder(write_images(root / "images", [(64, 80), (48, 64), (64, 64)]))
    schedule = TrainingSchedule(images.image_sizes(), 2, 2, PatchSchedule(32, 64, 16), seed=0)
    collator = DynamicPatchCollator(min_size=32, max_size=64, multiple_of=16, convention="sigma")
    batches = list(DataLoader(schedule.dataset(images), batch_size=2, collate_fn=collator))
    return pipeline, schedule, batches


def test_flux_inputs_follow_the_script_and_are_deterministic(flux):
    pipeline, schedule, batches = flux
    inputs = PipelineInputs(pipeline, max_sequence_length=MAX_TOKENS)
    entries = schedule.step(1)
    kwargs, target = inputs.forward_kwargs(batches[1], entries)
    again, target_again = inputs.forward_kwargs(batches[1], entries)
    assert all(torch.equal(kwargs[name], again[name]) for name in kwargs) and torch.equal(target, target_again)

    vae = pipeline.vae
    mean = vae.encode(batches[1]["pixel_values"]).latent_dist.mean  # the posterior mean, not a sample
    latents = (mean - vae.config.shift_factor) * vae.config.scaling_factor
    noise = schedule.noise(entries, latents.shape[1:])
    sigma = batches[1]["noise_level"][:, None, None, None]
    assert torch.allclose(kwargs["hidden_states"], pack_latents((1 - sigma) * latents + sigma * noise), atol=1e-6)
    assert torch.allclose(target, pack_latents(noise - latents), atol=1e-6)
    assert kwargs["hidden_states"].shape == (2, 4, 64) and kwargs["img_ids"].shape == (4, 3)
    assert kwargs["encoder_hidden_states"].shape[:2] == (2, MAX_TOKENS) and kwargs["txt_ids"].shape == (MAX_TOKENS, 3)
    assert torch.equal(kwargs["timestep"], batches[1]["noise_level"]) and kwargs["guidance"].tolist() == [3.5, 3.5]
    text, pooled, _ = pipeline.encode_prompt(batches[1]["prompt"], max_sequence_length=MAX_TOKENS)
    assert torch.allclose(kwargs["encoder_hidden_states"], text, atol=1e-6)
    assert torch.allclose(kwargs["pooled_projections"], pooled, atol=1e-6)

    rows = inputs.split(kwargs)
    assert [row["hidden_states"].shape[0] for row in rows] == [1, 1]
    assert rows[1]["img_ids"] is kwargs["img_ids"]  # shared inputs have no batch dimension


def test_a_batch_from_another_step_is_refused(flux):
    pipeline, schedule, batches = flux
    inputs = PipelineInputs(pipeline, max_sequence_length=MAX_TOKENS)
    with pytest.raises(ValueError, match="out of step"):
        inputs.forward_kwargs(batches[0], schedule.step(1))
    stripped = {k: v for k, v in batches[0].items() if k != "blockskip_key"}
    with pytest.raises(ValueError, match="noise levels are not those of the schedule"):
        inputs.forward_kwargs(stripped, schedule.step(1))


def test_bank_inputs_skip_what_the_bank_has_without_encoding_it(flux, monkeypatch):
    pipeline, schedule, batches = flux
    inputs = PipelineInputs(pipeline, max_sequence_length=MAX_TOKENS)
    encoded = []
    original = inputs.encode_images
    monkeypatch.setattr(inputs, "encode_images", lambda pixels: encoded.append(len(pixels)) or original(pixels))
    keys = [key for key, _ in inputs.bank_inputs(batches, schedule, skip=["s000000b0", "s000000b1", "s000001b0"])]
    assert keys == ["s000001b1"] and encoded == [2]


# ----------------------------------------------------------------------------- image folders


def test_image_folder_reads_metadata_and_sidecar_captions(tmp_path):
    folder = write_images(tmp_path / "meta", [(40, 30), (20, 50)])
    (folder / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "sub" / "deep.png")
    with open(folder / "metadata.jsonl", "a") as handle:
        handle.write(json.dumps({"file_name": "sub/deep.png", "text": "deep"}) + "\n")
    dataset = ImageFolder(folder)
    assert [dataset[i]["prompt"] for i in range(3)] == [CAPTIONS[0], CAPTIONS[1], "deep"]
    assert dataset.image_sizes() == [(40, 30), (20, 50), (8, 8)]

    sidecar = write_images(tmp_path / "txt", [(16, 16), (16, 16)], captions="txt")
    (sidecar / "img1.txt").unlink()
    assert [item["prompt"] for item in ImageFolder(sidecar, default_prompt="sks")] == [CAPTIONS[0], "sks"]


def test_image_folder_errors_name_the_file(tmp_path):
    folder = write_images(tmp_path / "a", [(16, 16)])
    (folder / "metadata.jsonl").write_text('{"file_name": "img0.png", "text": "x"}\n{"file_name": "gone.png", "text": "y"}\n')
    with pytest.raises(ImageFolderError, match=r"metadata.jsonl, line 2: 'gone.png' does not exist"):
        ImageFolder(folder)
    (folder / "metadata.jsonl").write_text('{"file_name": "img0.png"\n')
    with pytest.raises(ImageFolderError, match="line 1: not valid JSON"):
        ImageFolder(folder)
    Image.new("RGB", (8, 8)).save(folder / "extra.png")
    (folder / "metadata.jsonl").write_text('{"file_name": "img0.png", "text": "x"}\n')
    with pytest.raises(ImageFolderError, match=r"extra.png has no caption \(no line in .*metadata.jsonl\)"):
        ImageFolder(folder)
    with pytest.raises(ImageFolderError, match="holds no images"):
        ImageFolder((tmp_path / "empty").mkdir() or tmp_path / "empty")


def test_image_sizes_follow_exif_orientation(tmp_path):
    image = Image.new("RGB", (30, 20))  # 30 wide, 20 high; orientation 6 = rotate 90° on display
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "rotated.jpg", exif=exif)
    (tmp_path / "rotated.txt").write_text("a photo")
    assert ImageFolder(tmp_path).image_sizes() == [(30, 20)]


# ----------------------------------------------------------------------------- schedule files


def test_schedule_round_trips_through_json():
    sampler = ShiftedSampler(LogitNormalSampler(0.5, 1.0), shift=3.0)
    schedule = TrainingSchedule([(64, 80), (48, 64)], 4, 2, PatchSchedule(32, 64, 16, "high_to_low"), seed=7, sampler=sampler)
    rebuilt = TrainingSchedule.from_dict(json.loads(json.dumps(schedule.to_dict())))
    assert rebuilt.fingerprint() == schedule.fingerprint() and list(rebuilt) == list(schedule)

    edited = {**schedule.to_dict(), "steps": 5}
    with pytest.raises(ValueError, match="edited"):
        TrainingSchedule.from_dict(edited)
    with pytest.raises(ValueError, match="not a blockskip schedule"):
        TrainingSchedule.from_dict({"steps": 4})


def test_sampler_specs():
    assert parse_sampler("uniform") == UniformSampler()
    assert parse_sampler("logit_normal:mean=0.5, std=2,shift=3") == ShiftedSampler(LogitNormalSampler(0.5, 2.0), 3.0)
    assert sampler_from_dict(sampler_to_dict(parse_sampler("mode:scale=1.29"))) == parse_sampler("mode")
    with pytest.raises(ValueError, match="unknown timestep sampler"):
        parse_sampler("cosmap")
    with pytest.raises(ValueError, match="key=value"):
        parse_sampler("logit_normal:mean")

    class Custom(UniformSampler):
        pass

    with pytest.raises(ValueError, match="cannot save a Custom"):
        sampler_to_dict(Custom())
