"""TrainingSchedule: deterministic, consumed by the collator, and the base of cached training."""

import torch
from peft import LoraConfig
from torch.utils.data import DataLoader

from blockskip import BlockSkipPlan, DynamicPatchCollator, TrainingSchedule, apply_block_skip, lora_target_modules
from blockskip.crops.patches import PatchSchedule
from blockskip.shapes.demo_data import CaptionEmbedder, build_demo_model, pack_images, subject_images
from blockskip.training.precompute import precompute_residuals

PATCHES = PatchSchedule(32, 48, 16)


def test_same_seed_same_schedule_other_seed_other_schedule():
    sizes = [(48, 48), (64, 40), (20, 30)]
    a = TrainingSchedule(sizes, steps=5, batch_size=2, patches=PATCHES, seed=3)
    b = TrainingSchedule(sizes, steps=5, batch_size=2, patches=PATCHES, seed=3)
    c = TrainingSchedule(sizes, steps=5, batch_size=2, patches=PATCHES, seed=4)
    assert list(a) == list(b) and list(a) != list(c)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_entries_follow_the_patch_schedule():
    sizes = [(48, 48), (64, 40), (20, 30)]
    schedule = TrainingSchedule(sizes, steps=30, batch_size=3, patches=PATCHES, seed=0)
    seen = set()
    for entries in schedule:
        for entry in entries:
            top, left, height, width = entry.crop_box
            assert height == width == PATCHES.crop_size(entry.noise_level, min(_working(sizes[entry.sample_index])))
            assert 0 <= top and top + height <= _working(sizes[entry.sample_index])[0]
            assert 0 <= left and left + width <= _working(sizes[entry.sample_index])[1]
            seen.add(entry.sample_index)
    assert seen == {0, 1, 2}
    # Each epoch visits every sample once.
    first_epoch = [e.sample_index for step in range(1) for e in schedule.step(step)]
    assert sorted(first_epoch) == [0, 1, 2]


def _working(size):
    from blockskip.crops.patches import working_size

    return working_size(*size, PATCHES.min_size)


def test_noise_is_reproducible_and_per_entry():
    schedule = TrainingSchedule([(48, 48)] * 4, steps=2, batch_size=2, patches=PATCHES, seed=0)
    entries = schedule.step(1)
    first = schedule.noise(entries, (3, 5))
    assert torch.equal(first, schedule.noise(entries, (3, 5)))
    assert torch.equal(first[1], schedule.noise(entries[1:], (3, 5))[0])
    assert not torch.equal(first[0], first[1])


def test_collator_uses_the_schedule():
    images = list(subject_images(3, size=48))
    schedule = TrainingSchedule([(48, 48)] * 3, steps=3, batch_size=2, patches=PATCHES, seed=1)
    collator = DynamicPatchCollator(min_size=32, max_size=48, multiple_of=16, convention="sigma")
    batches = list(DataLoader(schedule.dataset(images), batch_size=2, shuffle=False, collate_fn=collator))
    for step, batch in enumerate(batches):
        entries = schedule.step(step)
        assert batch["blockskip_key"] == [entry.key for entry in entries]
        assert batch["crop_box"].tolist() == [list(entry.crop_box) for entry in entries]
        assert torch.allclose(batch["noise_level"], torch.tensor([entry.noise_level for entry in entries]))


def _setup(plan, steps=4):
    images = list(subject_images(4, size=48))
    schedule = TrainingSchedule([(48, 48)] * 4, steps=steps, batch_size=2, patches=PATCHES, seed=0)
    loader = DataLoader(
        schedule.dataset(images), batch_size=2, shuffle=False,
        collate_fn=DynamicPatchCollator(min_size=32, max_size=48, multiple_of=16, convention="sigma"),
    )
    text, pooled = CaptionEmbedder()(["a photo of sks ring"])

    def inputs(batch, step):
        latents, ids = pack_images(batch["pixel_values"])
        noise = schedule.noise(schedule.step(step), latents.shape[1:])
        sigma = batch["noise_level"][:, None, None]
        rows = latents.shape[0]
        return latents, noise, dict(
            hidden_states=(1 - sigma) * latents + sigma * noise, encoder_hidden_states=text.expand(rows, -1, -1),
            pooled_projections=pooled.expand(rows, -1), timestep=batch["noise_level"], img_ids=ids,
            txt_ids=torch.zeros(text.shape[1], 3),
        )

    return schedule, loader, inputs


def _train(model, handle, schedule, loader, inputs):
    model.requires_grad_(False)
    torch.manual_seed(0)  # the same LoRA initialisation in both runs
    model.add_adapter(LoraConfig(r=4, target_modules=lora_target_modules(model, ["to_q", "to_k", "to_v"])))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for step, batch in enumerate(loader):
        latents, noise, kwargs = inputs(batch, step)
        context = handle.step(batch["blockskip_key"]) if handle.cache is not None else torch.enable_grad()
        with context:
            loss = torch.nn.functional.mse_loss(model(**kwargs, return_dict=False)[0], noise - latents)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_cached_training_reproduces_online_training_with_a_leading_skip(tmp_path):
    """With only a leading skip both modes are exact: the runs must match step by step."""
    online_plan = {"skip": {"leading": 5}}
    schedule, loader, inputs = _setup(online_plan)
    cached_plan = BlockSkipPlan.from_dict({**online_plan, "residuals": {"mode": "cached", "bank": str(tmp_path / "bank")}})

    model = build_demo_model()
    samples = (
        (key, {k: v[row : row + 1] if k not in ("img_ids", "txt_ids") else v for k, v in inputs(batch, step)[2].items()})
        for step, batch in enumerate(loader)
        for row, key in enumerate(batch["blockskip_key"])
    )
    precompute_residuals(model, cached_plan, samples, tmp_path / "bank", schedule=schedule, chunk_size=2, progress=False)
    cached_losses, cached_lora = _train(model, apply_block_skip(model, cached_plan, schedule=schedule), schedule, loader, inputs)

    other = build_demo_model()
    online_losses, online_lora = _train(other, apply_block_skip(other, online_plan), schedule, loader, inputs)
    assert torch.allclose(torch.tensor(cached_losses), torch.tensor(online_losses), rtol=1e-5)
    for name, value in online_lora.items():
        assert torch.allclose(cached_lora[name], value, rtol=1e-4, atol=1e-6), name
