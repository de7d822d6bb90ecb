"""Crop-size schedule, DynamicPatchCollator, the latent variant and the edge cases."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from blockskip.crops.collator import DynamicPatchCollator, LatentPatchCollator, latent_crop_error
from blockskip.crops.images import ImageLoadError, image_to_tensor
from blockskip.crops.patches import SCHEDULES, PatchSchedule, crop_size
from blockskip.crops.timesteps import LogitNormalSampler

SMALL = dict(min_size=32, max_size=64, multiple_of=16)


@st.composite
def schedules(draw):
    m = draw(st.sampled_from([8, 16, 32]))
    lo = m * draw(st.integers(1, 8))
    hi = lo + m * draw(st.integers(0, 8))
    return PatchSchedule(lo, hi, m, draw(st.sampled_from(["low_to_high", "high_to_low", "random", "fixed"])))


@given(schedules(), st.floats(0, 1), st.integers(1, 2000), st.integers(0, 1000))
@settings(max_examples=150, deadline=None)
def test_crop_size_is_a_multiple_within_bounds(schedule, t, side, seed):
    s = schedule.crop_size(t, side, torch.Generator().manual_seed(seed))
    assert s % schedule.multiple_of == 0
    # below s_min the collator upscales the image to s_min first, so s_min is always allowed
    assert schedule.min_size <= s <= min(schedule.max_size, max(side, schedule.min_size))


@given(schedules(), st.floats(0, 1), st.floats(0, 1), st.integers(1, 2000))
@settings(max_examples=150, deadline=None)
def test_low_to_high_is_monotone_and_high_to_low_antitone(schedule, t1, t2, side):
    t1, t2 = sorted((t1, t2))
    up = PatchSchedule(schedule.min_size, schedule.max_size, schedule.multiple_of, "low_to_high")
    down = PatchSchedule(schedule.min_size, schedule.max_size, schedule.multiple_of, "high_to_low")
    assert up.crop_size(t1, side) <= up.crop_size(t2, side)
    assert down.crop_size(t1, side) >= down.crop_size(t2, side)


def test_crop_size_formula_endpoints():
    # FLUX: s(t) = 256 + t * 256, rounded to 16
    assert [crop_size(t, 256, 512) for t in (0.0, 0.25, 0.5, 1.0)] == [256, 320, 384, 512]
    assert crop_size(0.03, 256, 512) == 256 + 16 * round(0.03 * 256 / 16)
    assert crop_size(1.0, 256, 512, image_side=300) == 288  # clamped to the image, down to 16
    assert crop_size(0.0, 256, 512, schedule="high_to_low") == 512
    assert crop_size(0.7, 256, 512, schedule="fixed") == 256
    assert PatchSchedule(256, 512, 16, "fixed", fixed_size=384).crop_size(0.0, 1000) == 384
    assert crop_size(0.3, 512, 1024, multiple_of=32) % 32 == 0  # Sana
    with pytest.raises(ValueError, match="multiple"):
        PatchSchedule(250, 512, 16)
    with pytest.raises(ValueError, match="unknown patch schedule"):
        PatchSchedule(256, 512, 16, "zoom")


@given(
    h=st.integers(8, 150), w=st.integers(8, 150), channels=st.sampled_from([1, 2, 3, 4]),
    schedule=st.sampled_from(SCHEDULES), seed=st.integers(0, 100), zero_one=st.booleans(),
)
@settings(max_examples=40, deadline=None)
def test_every_output_is_s_min_square_and_box_is_inside(h, w, channels, schedule, seed, zero_one):
    x = torch.rand(channels, h, w, generator=torch.Generator().manual_seed(seed))
    x = x if zero_one else x * 2 - 1
    c = DynamicPatchCollator(**SMALL, schedule=schedule, seed=seed)
    b = c([x, x])
    assert b["pixel_values"].shape == (2, 3, 32, 32)
    for (top, left, bh, bw), (sh, sw) in zip(b["crop_box"].tolist(), b["source_size"].tolist()):
        assert min(sh, sw) >= 32 and top >= 0 and left >= 0 and top + bh <= sh and left + bw <= sw
        if schedule != "resize":
            assert bh == bw and bh % 16 == 0 and 32 <= bh <= min(64, sh, sw)
        else:  # whole image: the centred largest square
            assert bh == bw == min(sh, sw)
    if min(h, w) >= 32:
        assert b["source_size"].tolist() == [[h, w]] * 2
    else:  # upscaled, aspect kept, short side = s_min
        assert min(b["source_size"][0].tolist()) == 32
    lo, hi = float(x.min()), float(x.max())  # antialiased bilinear never overshoots
    assert float(b["pixel_values"].min()) >= lo - 1e-5 and float(b["pixel_values"].max()) <= hi + 1e-5


def test_crop_content_is_resized_crop_of_the_source():
    x = torch.linspace(-1, 1, 3 * 100 * 120).reshape(3, 100, 120)
    c = DynamicPatchCollator(**SMALL, seed=3, sampler=LogitNormalSampler())
    b = c([{"image": x}])
    top, left, h, w = b["crop_box"][0].tolist()
    ref = F.interpolate(x[None, :, top : top + h, left : left + w], size=(32, 32), mode="bilinear",
                        antialias=True, align_corners=False)
    torch.testing.assert_close(b["pixel_values"], ref)
    assert h == crop_size(float(b["noise_level"][0]), 32, 64, 16, image_side=100)


@given(seed=st.integers(0, 2**40))
@settings(max_examples=10, deadline=None)
def test_same_seed_same_batch(seed):
    examples = [torch.rand(3, 90, 70, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    a, b = (DynamicPatchCollator(**SMALL, seed=seed)(examples) for _ in range(2))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    other = DynamicPatchCollator(**SMALL, seed=seed + 1)(examples)
    assert not torch.equal(a["noise_level"], other["noise_level"])


def test_stream_advances_and_epoch_and_rank_change_it():
    x = [torch.rand(3, 64, 64)] * 8
    c = DynamicPatchCollator(**SMALL, seed=0)
    first, second = c(x)["noise_level"], c(x)["noise_level"]
    assert not torch.equal(first, second)
    c.set_epoch(1)
    assert not torch.equal(c(x)["noise_level"], first)
    c.set_epoch(0)
    assert torch.equal(c(x)["noise_level"], first)  # back to the epoch-0 stream
    assert not torch.equal(DynamicPatchCollator(**SMALL, seed=0, rank=1)(x)["noise_level"], first)


def test_dict_examples_keep_other_fields_and_wrap_a_base_collate():
    examples = [{"instance_images": torch.rand(3, 64, 80), "instance_prompt": f"p{i}", "id": i} for i in range(3)]

    def script_collate(batch):  # the shape of the diffusers DreamBooth collate_fn
        return {"pixel_values": torch.stack([e["instance_images"] for e in batch]),
                "prompts": [e["instance_prompt"] for e in batch]}

    c = DynamicPatchCollator(**SMALL, image_key="instance_images", collate_fn=script_collate, seed=0)
    b = c(examples)
    assert b["prompts"] == ["p0", "p1", "p2"] and b["pixel_values"].shape == (3, 3, 32, 32)
    d = DynamicPatchCollator(**SMALL, image_key="instance_images", seed=0)(examples)  # default_collate
    assert d["instance_prompt"] == ["p0", "p1", "p2"] and d["id"].tolist() == [0, 1, 2]
    torch.testing.assert_close(d["pixel_values"], b["pixel_values"])
    assert {"noise_level", "timesteps", "timestep_input", "timestep_u", "crop_box", "source_size"} <= set(b)


def test_timesteps_follow_the_convention():
    x = [torch.rand(3, 64, 64)] * 6
    flux = DynamicPatchCollator(**SMALL, seed=0)(x)  # default: diffusers FLUX script
    torch.testing.assert_close(flux["timesteps"], flux["noise_level"] * 1000)
    torch.testing.assert_close(flux["timestep_input"], flux["noise_level"])
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler()
    torch.testing.assert_close(sched.timesteps[(flux["timestep_u"] * 1000).long()], flux["timesteps"])
    kohya = DynamicPatchCollator(**SMALL, seed=0, convention="kohya_flux")(x)
    assert "timestep_u" not in kohya


def test_supplied_noise_level_and_crop_box_are_used():
    x = torch.rand(3, 100, 100)
    c = DynamicPatchCollator(**SMALL, seed=0)
    b = c([{"image": x, "noise_level": 1.0}, {"image": x, "noise_level": 0.0},
           {"image": x, "noise_level": 0.5, "crop_box": (10, 20, 48, 48)}])
    assert b["noise_level"][0] == 1.0 and b["crop_box"][0, 2] == 64
    assert b["crop_box"][1, 2] == 32
    assert b["crop_box"][2].tolist() == [10, 20, 48, 48] and b["noise_level"][2] == 0.5
    assert "noise_level" not in b or b["noise_level"].shape == (3,)
    def schedule(example, index):  # e.g. a precomputed, seeded schedule (cached mode)
        return {"noise_level": 0.25 * index, "crop_box": (index, index, 32, 32)}

    hook = DynamicPatchCollator(**SMALL, seed=0, overrides=schedule)
    hb = hook([x, x, x])
    # the diffusers table stops at 1/1000: a supplied 0.0 snaps to 0.001
    assert hb["noise_level"].tolist() == pytest.approx([0.001, 0.25, 0.5], abs=1e-6)
    assert hb["crop_box"][:, 0].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="does not fit"):
        c([{"image": x, "crop_box": (60, 0, 64, 64)}])


def test_aligned_mask_gets_the_same_crop():
    x = torch.rand(3, 80, 96)
    mask = torch.zeros(80, 96)
    mask[:, :48] = 1
    c = DynamicPatchCollator(**SMALL, aligned_keys={"mask": "nearest"}, seed=2)
    b = c([{"image": x, "mask": mask}, {"image": x, "mask": Image.fromarray((mask.numpy() * 255).astype(np.uint8))}])
    assert b["mask"].shape == (2, 1, 32, 32)
    for i in range(2):
        top, left, h, w = b["crop_box"][i].tolist()
        ref = F.interpolate(mask[None, None, top : top + h, left : left + w], size=(32, 32), mode="nearest-exact")[0]
        torch.testing.assert_close(b["mask"][i], ref)


def test_pil_grayscale_rgba_and_paths(tmp_path):
    rgba = Image.new("RGBA", (70, 50), (255, 0, 0, 0))  # fully transparent red -> white
    gray = Image.new("L", (50, 70), 0)
    path = tmp_path / "img.png"
    Image.new("RGB", (64, 64), (0, 0, 255)).save(path)
    c = DynamicPatchCollator(**SMALL, seed=0, value_range=(0.0, 1.0))
    b = c([rgba, gray, str(path), path])
    px = b["pixel_values"]
    torch.testing.assert_close(px[0], torch.ones(3, 32, 32))
    torch.testing.assert_close(px[1], torch.zeros(3, 32, 32))
    torch.testing.assert_close(px[2, 2], torch.ones(32, 32))
    assert px[3, 0].abs().max() == 0
    assert b["source_size"][0].tolist() == [50, 70] and b["source_size"][1].tolist() == [70, 50]
    assert image_to_tensor(gray).min() == -1.0  # default range [-1, 1]
    deep = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))  # 16-bit grayscale: full scale, not clipped
    assert deep.mode.startswith("I") and image_to_tensor(deep, (0.0, 1.0)).min() == 1.0


def test_small_images_are_upscaled_to_s_min():
    tiny = torch.rand(3, 10, 20)
    b = DynamicPatchCollator(**SMALL, seed=0)([tiny])
    assert b["source_size"].tolist() == [[32, 64]] and b["crop_box"][0, 2] == 32


def test_corrupt_and_missing_files_name_the_path(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    c = DynamicPatchCollator(**SMALL, seed=0)
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        c([{"image": str(bad)}])
    with pytest.raises(ImageLoadError, match="missing.png"):
        c([tmp_path / "missing.png"])
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (64, 64)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ImageLoadError, match="cut.png"):
        c([truncated])


def test_clear_errors_for_wrong_inputs():
    c = DynamicPatchCollator(**SMALL, seed=0)
    with pytest.raises(ValueError, match="permute"):
        c([torch.rand(64, 64, 3)])
    with pytest.raises(KeyError, match="'image'"):
        c([{"pixels": torch.rand(3, 64, 64)}])
    with pytest.raises(TypeError, match="example 0"):
        c([12])
    with pytest.raises(TypeError, match="mix of dict"):
        c([torch.rand(3, 64, 64), {"image": torch.rand(3, 64, 64)}])


def test_accepts_plan_like_objects():
    settings_ = SimpleNamespace(min_size=64, max_size=128, multiple_of=None, schedule="random")
    plan = SimpleNamespace(patches=settings_, model=SimpleNamespace(class_name="SanaTransformer2DModel"))
    c = DynamicPatchCollator(plan)
    assert c.schedule == PatchSchedule(64, 128, 32, "random")
    assert DynamicPatchCollator(settings_, max_size=256).schedule == PatchSchedule(64, 256, 16, "random")
    assert DynamicPatchCollator().schedule == PatchSchedule(256, 512, 16, "low_to_high")
    try:
        from blockskip.skipping.plan import BlockSkipPlan
    except Exception:  # plan.py is another module's business; only check when importable
        return
    plan = BlockSkipPlan.from_dict({"patches": {"min_size": 128, "max_size": 256, "multiple_of": 16}})
    assert DynamicPatchCollator(plan).schedule == PatchSchedule(128, 256, 16, "low_to_high")


class _Images(Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"image": torch.rand(3, 48 + 8 * (i % 4), 64, generator=g), "prompt": f"p{i}"}


def test_dataloader_with_two_workers_is_deterministic():
    def run(epoch=0):
        c = DynamicPatchCollator(**SMALL, seed=7)
        c.set_epoch(epoch)
        loader = DataLoader(_Images(), batch_size=4, num_workers=2, collate_fn=c)
        return list(loader)

    a, b = run(), run()
    assert len(a) == 4
    for x, y in zip(a, b):
        assert torch.equal(x["pixel_values"], y["pixel_values"]) and torch.equal(x["crop_box"], y["crop_box"])
        assert x["prompt"] == y["prompt"]
    # batch 0 and 1 come from different workers: different streams
    assert not torch.equal(a[0]["noise_level"], a[1]["noise_level"])
    assert not torch.equal(run(epoch=1)[0]["noise_level"], a[0]["noise_level"])


def test_unseeded_collator_follows_torch_seeding_and_pickles():
    import pickle

    def run():
        c = DynamicPatchCollator(**SMALL)  # seed=None: the DataLoader's worker seeds decide
        loader = DataLoader(_Images(), batch_size=4, num_workers=2, collate_fn=c,
                            generator=torch.Generator().manual_seed(0))
        return [b["noise_level"] for b in loader]

    assert all(torch.equal(x, y) for x, y in zip(run(), run()))
    c = DynamicPatchCollator(**SMALL, seed=5)
    first = c([torch.rand(3, 64, 64)] * 4)["noise_level"]
    clone = pickle.loads(pickle.dumps(c))  # what a spawn-started worker receives
    assert torch.equal(clone([torch.rand(3, 64, 64)] * 4)["noise_level"], first)


# ---- latent variant ------------------------------------------------------------------------

def test_latent_collator_geometry_is_exact():
    z = torch.randn(16, 12, 10)
    c = LatentPatchCollator(**SMALL, vae_scale_factor=8, seed=0)
    b = c([{"latents": z, "noise_level": 0.0}, {"latents": z, "noise_level": 1.0}, {"latents": z[None]}])
    assert b["latents"].shape == (3, 16, 4, 4)
    assert b["source_size"].tolist() == [[96, 80]] * 3  # in pixels
    for i in range(3):
        top, left, h, w = b["crop_box"][i].tolist()
        assert top % 8 == left % 8 == 0 and h % 16 == 0 and 32 <= h <= 64
        crop = z[:, top // 8 : (top + h) // 8, left // 8 : (left + w) // 8]
        ref = crop if h == 32 else F.interpolate(crop[None], size=(4, 4), mode="area")[0]
        torch.testing.assert_close(b["latents"][i], ref)
    assert b["crop_box"][1, 2] == 64
    with pytest.raises(ValueError, match="vae_scale_factor"):
        LatentPatchCollator(min_size=32, max_size=64, multiple_of=16, vae_scale_factor=32)
    with pytest.raises(TypeError, match="latents must be a tensor"):
        c([Image.new("RGB", (64, 64))])


def _test_image(h, w, seed):
    """Smooth colour waves plus a few hard-edged rectangles, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.zeros(3, h, w)
    for c in range(3):
        for k in range(4):
            fx, fy, phase = (torch.rand(3, generator=g) * torch.tensor([6.0, 6.0, 6.28])).tolist()
            img[c] += torch.sin(2 * math.pi * (fx * xx + fy * yy) + phase) / (k + 1)
    for _ in range(4):
        top, left = torch.randint(0, h - h // 4, (2,), generator=g).tolist()
        img[:, top : top + h // 4, left : left + w // 4] += torch.rand(3, 1, 1, generator=g) * 2 - 1
    return (img / img.abs().max()).clamp(-1, 1)


def test_latent_variant_error_against_encoding_the_resized_crop(capsys):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, norm_num_groups=8, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), sample_size=64,
    ).eval()
    images = [_test_image(192, 224, seed) for seed in range(2)]
    kwargs = dict(min_size=64, max_size=192, multiple_of=16, vae_scale_factor=8)
    encode = lambda x: vae.encode(x).latent_dist.mean  # noqa: E731
    pool = lambda x: F.avg_pool2d(x, 8)  # noqa: E731  an ideal, purely local encoder
    vae_err = latent_crop_error(encode, images, **kwargs)
    pool_err = latent_crop_error(pool, images, **kwargs)
    with torch.no_grad():  # what "no information" looks like: two different crops of one image
        a, b = encode(F.interpolate(images[0][None, :, :96, :96], size=(64, 64), mode="bilinear", antialias=True)), \
            encode(F.interpolate(images[0][None, :, 96:, 128:], size=(64, 64), mode="bilinear", antialias=True))
        unrelated = float((a - b).norm() / b.norm())
    with capsys.disabled():
        print("\nlatent-variant relative error, tiny random AutoencoderKL: "
              + ", ".join(f"t={t}: {e:.3f}" for t, e in vae_err.items()) + f" (unrelated crops: {unrelated:.3f})"
              + "; avg-pool encoder: " + ", ".join(f"t={t}: {e:.4f}" for t, e in pool_err.items()))
    # documented bounds (docs/patches.md): on a random VAE the latent variant is no closer than two
    # unrelated crops, so this bound only catches gross breakage (NaN, wrong scale or layout)
    assert all(math.isfinite(e) and e < 2.0 for e in vae_err.values())
    assert pool_err[0.0] < 1e-6 and all(e < 0.02 for e in pool_err.values())
