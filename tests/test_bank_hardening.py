"""Residual banks refuse what they were not made from, and damage of any kind, with `BankError`.

One case per section: other inputs at training, other inputs on resume, other weights, shard
names that leave the folder, structurally broken manifests. The hypothesis tests at the end damage
a tiny bank at random and check that it is refused (at open or at the step) or, when the damage
changed nothing that matters (a whitespace byte of the manifest), trains exactly as before. Run
many more examples with `HYPOTHESIS_PROFILE=long`.
"""

import contextlib
import copy
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from tiny_models import build_tiny

from blockskip import apply_block_skip, remove_block_skip
from blockskip.residuals.bank import BankError, BankReader
from blockskip.residuals.fingerprint import model_fingerprint, tensor_hash
from blockskip.residuals.manifest import MANIFEST, write_manifest
from blockskip.training.precompute import precompute_residuals

FLUX = "FluxTransformer2DModel"
SKIP = {"skip": {"leading": 4, "trailing": 2}}
SCHEDULE = "schedule-A"
FUZZ = settings()  # the profile from conftest.py (ci or long)


def _samples(case, count=4, seed=0):
    return case.bank_samples(count, seed)


def _plan(bank):
    return {**SKIP, "residuals": {"mode": "cached", "bank": str(bank)}}


def _precompute(case, samples, bank, **options):
    options = {"schedule": SCHEDULE, "shard_bytes": 4096, "chunk_size": 1, "progress": False, **options}
    return precompute_residuals(case.model, SKIP, samples, bank, **options)


@contextlib.contextmanager
def _applied(model, bank):
    handle = apply_block_skip(model, _plan(bank), schedule=SCHEDULE)
    try:
        yield handle
    finally:
        remove_block_skip(model)


def _train_outputs(case, bank, samples) -> dict[str, torch.Tensor]:
    """Every entry's output through cached training (no gradients), as a training step computes it."""
    outputs = {}
    with _applied(case.model, bank) as handle, torch.no_grad():
        for key, kwargs in samples:
            with handle.step([key]):
                outputs[key] = case.output(case.model(**kwargs))
    return outputs


@pytest.fixture(scope="module")
def tiny():
    case = build_tiny(FLUX)
    return case, _samples(case)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tiny):
    """A complete bank in three shards, and the outputs cached training gives with it."""
    case, samples = tiny
    bank = tmp_path_factory.mktemp("pristine") / "bank"
    _precompute(case, samples, bank)
    assert len(read_json(bank / MANIFEST)["shards"]) >= 2
    return bank, _train_outputs(case, bank, samples)


@pytest.fixture
def bank(tmp_path, pristine):
    copy = tmp_path / "bank"
    shutil.copytree(pristine[0], copy)
    return copy


def read_json(path):
    return json.loads(Path(path).read_text())


def rewrite(bank, change):
    """Edit the manifest with `change(manifest)` and write it back with a valid checksum."""
    manifest = read_json(bank / MANIFEST)
    change(manifest)
    write_manifest(bank, manifest)


# ----------------------------------------------------------------------------- inputs at training


def test_a_bank_made_from_other_inputs_is_refused_at_the_step(tiny, bank):
    case, samples = tiny
    others = _samples(case, seed=100)  # other images and captions, same shapes
    with _applied(case.model, bank) as handle, torch.no_grad():
        with pytest.raises(BankError, match=r"bank entry 'e0' was made from other inputs.*Re-run the precompute"):
            with handle.step(["e0"]):
                case.model(**others[0][1])
        caption_only = {**samples[1][1], "encoder_hidden_states": samples[1][1]["encoder_hidden_states"].clone()}
        caption_only["encoder_hidden_states"][0, -1, -1] += 1e-6
        with pytest.raises(BankError, match="'e1' was made from other inputs"):
            with handle.step(["e1"]):
                case.model(**caption_only)
        handle.cache.check_inputs = False  # the documented opt-out
        with handle.step(["e0"]):
            case.model(**others[0][1])


def test_the_inputs_are_checked_before_any_block_runs(tiny, bank):
    case, samples = tiny
    calls = []
    kept_block = case.model.single_transformer_blocks[1]
    hook = kept_block.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with _applied(case.model, bank) as handle, torch.no_grad():
            with pytest.raises(BankError, match="other inputs"), handle.step(["e0"]):
                case.model(**samples[1][1])
            assert calls == []
            with handle.step(["e0"]):
                case.model(**samples[0][1])
            assert calls == [1]
    finally:
        hook.remove()


def test_a_batch_must_hold_the_entries_rows_in_key_order(tiny, bank):
    case, samples = tiny
    pair = [samples[0][1], samples[1][1]]
    batch = {name: torch.cat([kw[name] for kw in pair]) if value.shape[:1] == (1,) else value
             for name, value in pair[0].items()}
    with _applied(case.model, bank) as handle, torch.no_grad():
        with handle.step(["e0", "e1"]):
            case.model(**batch)
        with pytest.raises(BankError, match="'e1' was made from other inputs"), handle.step(["e1", "e0"]):
            case.model(**batch)
        with pytest.raises(BankError, match="'hidden_states' has 2 rows, but the step names 3 bank entries"):
            with handle.step(["e0", "e1", "e2"]):
                case.model(**batch)


def test_a_bank_from_an_older_blockskip_is_refused_with_the_way_out(bank):
    rewrite(bank, lambda manifest: manifest.update(version=1))
    with pytest.raises(BankError, match="bank version 1; this blockskip reads 2: it was made by an older blockskip.*"
                                        "run the precompute again"):
        BankReader(bank)


# ----------------------------------------------------------------------------- inputs on resume


def _interrupted(samples, after):
    yield from samples[:after]
    raise KeyboardInterrupt


def test_a_resume_from_other_inputs_is_refused(tiny, tmp_path, pristine):
    case, samples = tiny
    with pytest.raises(KeyboardInterrupt):
        _precompute(case, _interrupted(samples, 3), tmp_path / "bank")
    written = read_json(tmp_path / "bank" / MANIFEST)
    assert written["shards"] and not written["complete"]
    with pytest.raises(BankError, match="was started from other inputs: entry 'e0'.*or run the precompute into a new folder"):
        _precompute(case, _samples(case, seed=100), tmp_path / "bank")
    assert read_json(tmp_path / "bank" / MANIFEST) == written  # nothing was added
    summary = _precompute(case, samples, tmp_path / "bank")  # the original inputs finish it
    assert summary.entries == 4 and summary.computed < 4
    for name in ("manifest.json", *(p.name for p in pristine[0].glob("shard-*"))):
        assert (tmp_path / "bank" / name).read_bytes() == (pristine[0] / name).read_bytes(), name


def test_the_command_refuses_to_resume_or_train_on_another_image_folder(tmp_path, monkeypatch):
    from tiny_image_folders import write_images
    from tiny_pipelines import MAX_TOKENS, build_tiny_pipeline
    from torch.utils.data import DataLoader

    from blockskip import BlockSkipPlan, DynamicPatchCollator, TrainingSchedule
    from blockskip.cli import main
    from blockskip.crops.image_folder import ImageFolder
    from blockskip.training.pipeline_inputs import PipelineInputs, load_pipeline

    sizes = [(64, 64), (48, 64), (64, 48)]
    build_tiny_pipeline("flux", tmp_path / "pipeline")
    write_images(tmp_path / "images", sizes, seed=0)
    write_images(tmp_path / "other", sizes, seed=1)  # same sizes and captions: the schedule cannot tell
    plan = {"skip": {"leading": 2, "trailing": 1}, "patches": {"min_size": 32, "max_size": 64},
            "residuals": {"mode": "cached", "bank": str(tmp_path / "bank")}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))

    def cli(images):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["precompute", "--pipeline", str(tmp_path / "pipeline"), "--images", str(tmp_path / images),
                         "--plan", str(tmp_path / "plan.json"), "--steps", "2", "--batch-size", "1",
                         "--max-sequence-length", str(MAX_TOKENS), "--chunk-size", "1", "--shard-mib", "0.001",
                         "--no-progress"])
        return code, err.getvalue()

    bank_inputs = PipelineInputs.bank_inputs
    monkeypatch.setattr(PipelineInputs, "bank_inputs", lambda self, *a, **k: _interrupted(list(bank_inputs(self, *a, **k)), 1))
    with pytest.raises(KeyboardInterrupt):
        cli("images")
    monkeypatch.setattr(PipelineInputs, "bank_inputs", bank_inputs)
    code, err = cli("other")
    assert code == 2 and "was started from other inputs: entry 's000000b0'" in err
    assert read_json(tmp_path / "bank" / "precompute.json")["images"] == str((tmp_path / "images").resolve())
    assert cli("images")[0] == 0

    schedule = TrainingSchedule.from_dict(read_json(tmp_path / "bank" / "schedule.json"))
    pipeline = load_pipeline(tmp_path / "pipeline", "fp32")
    inputs = PipelineInputs(pipeline, max_sequence_length=MAX_TOKENS)
    loader = DataLoader(schedule.dataset(ImageFolder(tmp_path / "other")), batch_size=1, shuffle=False,
                        collate_fn=DynamicPatchCollator(schedule.patches, convention="sigma"))
    batch = next(iter(loader))
    handle = apply_block_skip(pipeline.transformer, BlockSkipPlan.load(tmp_path / "plan.json"), schedule=schedule)
    kwargs, _ = inputs.forward_kwargs(batch, schedule.step(0))
    with pytest.raises(BankError, match="'s000000b0' was made from other inputs"), handle.step(batch["blockskip_key"]):
        pipeline.transformer(**kwargs)


# ----------------------------------------------------------------------------- other weights


def test_every_frozen_weight_is_in_the_fingerprint(tiny):
    case, _ = tiny
    reference = model_fingerprint(case.model)["weights"]
    with torch.no_grad():
        for name, tensor in case.model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            flat = tensor.view(-1)
            for index in sorted({0, flat.numel() // 2, flat.numel() - 1}):  # the old 256-value sample missed most
                kept = flat[index].clone()
                flat[index] = torch.nextafter(kept, kept + 1)
                changed = model_fingerprint(case.model)["weights"]
                flat[index] = kept
                assert changed != reference, (name, index)
    assert model_fingerprint(case.model)["weights"] == reference


def test_changing_most_of_a_skipped_blocks_weights_is_refused(tiny, bank):
    case, _ = tiny
    weight = case.model.transformer_blocks[0].attn.to_q.weight
    kept = weight.detach().clone()
    with torch.no_grad():
        weight.view(-1)[1::2] += 1e-3  # half the values; the old sample of every stride-th value saw none of them
    try:
        with pytest.raises(BankError, match="computed from another model: its weights differs"):
            apply_block_skip(case.model, _plan(bank), schedule=SCHEDULE)
    finally:
        with torch.no_grad():
            weight.copy_(kept)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_raw_bytes_of_any_dtype_are_hashed(dtype):
    tensor = torch.linspace(-2, 2, 1000).to(dtype)
    bits = tensor.view(torch.uint8).clone()
    bits[-1] ^= 1  # the lowest bit of the last byte
    assert tensor_hash(bits.view(dtype)) != tensor_hash(tensor)
    assert tensor_hash(torch.tensor([0.0] * 3).to(dtype)) != tensor_hash(torch.tensor([-0.0] * 3).to(dtype))
    assert tensor_hash(tensor) != tensor_hash(tensor.reshape(10, 100))


# ----------------------------------------------------------------------------- shard names


@pytest.mark.parametrize("name", ["../outside/shard-00000.safetensors", "/tmp/shard-00000.safetensors",
                                  "part-00000/../../shard-00000.safetensors", "sub/shard-00000.safetensors"])
def test_shard_names_that_can_leave_the_folder_are_refused(bank, name):
    rewrite(bank, lambda manifest: manifest["shards"][0].update(file=name))
    with pytest.raises(BankError, match=r"shards\[0\]\.file is .* not of the form"):
        BankReader(bank)


def test_a_shard_symlinked_outside_the_folder_is_refused(bank, tmp_path):
    shard = bank / "shard-00000.safetensors"
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(shard, outside)
    shard.symlink_to(outside)  # same bytes, same sha256: only its place is wrong
    with pytest.raises(BankError, match="'shard-00000.safetensors' in the bank at .* leads outside the bank folder"):
        BankReader(bank)


def test_a_manifest_symlinked_outside_the_folder_is_refused(bank, tmp_path):
    outside = tmp_path / "manifest-elsewhere.json"
    shutil.move(bank / MANIFEST, outside)
    (bank / MANIFEST).symlink_to(outside)
    with pytest.raises(BankError, match="leads outside the bank folder"):
        BankReader(bank)


# ----------------------------------------------------------------------------- broken manifests


def _swap_shard_keys(manifest):
    first, second = manifest["shards"][0], manifest["shards"][1]
    first["keys"], second["keys"] = second["keys"], first["keys"]
    first["inputs"], second["inputs"] = second["inputs"], first["inputs"]


BROKEN = {
    "extra key in model": (lambda m: m["model"].update(extra="x"), r"model has an unknown field 'extra'"),
    "shards missing": (lambda m: m.pop("shards"), r"the manifest lacks 'shards'"),
    "spans missing": (lambda m: m.pop("spans"), r"the manifest lacks 'spans'"),
    "model not a dict": (lambda m: m.update(model=["x"]), r"model should be dict, not list"),
    "bytes as text": (lambda m: m["shards"][0].update(bytes="100"), r"shards\[0\]\.bytes should be int, not str"),
    "bytes as bool": (lambda m: m["shards"][0].update(bytes=True), r"shards\[0\]\.bytes should be int, not bool"),
    "complete as text": (lambda m: m.update(complete="yes"), r"complete should be bool, not str"),
    "keys as text": (lambda m: m["shards"][0].update(keys="e0"), r"shards\[0\]\.keys should be list"),
    "a key with a slash": (lambda m: m["shards"][0]["keys"].__setitem__(0, "a/b"), r"keys\[0\] is 'a/b'"),
    "a key twice": (lambda m: m["shards"][1]["keys"].__setitem__(0, m["shards"][0]["keys"][0]), r"repeats entry 'e0'"),
    "inputs shorter than keys": (lambda m: m["shards"][0]["inputs"].pop(), r"shards\[0\]\.inputs has \d+ hashes for \d+ keys"),
    "span start as float": (lambda m: m["spans"][0].update(start=0.0), r"spans\[0\]\.start should be int, not float"),
    "span stop before start": (lambda m: m["spans"][0].update(stop=0), r"spans\[0\]\.stop is 0, below 1"),
    "stores not matching position": (lambda m: m["spans"][0].update(stores="delta"), r"spans\[0\]\.stores is 'delta'"),
    "dtype not a dtype": (lambda m: m.update(dtype="Tensor"), r"dtype is 'Tensor', not a torch dtype"),
    "schedule as int": (lambda m: m.update(schedule=3), r"schedule should be str or null, not int"),
    "entries wrong": (lambda m: m.update(entries=5), r"entries is 5, but the shards list 4"),
    "entries missing": (lambda m: m.pop("entries"), r"entries is missing"),
    "an unknown top field": (lambda m: m.update(signature="x"), r"the manifest has an unknown field 'signature'"),
    "shared inputs unsorted": (lambda m: m.update(shared_inputs=["txt_ids", "img_ids"]), r"shared_inputs is not sorted"),
    "sha256 not hex": (lambda m: m["shards"][0].update(sha256="z" * 64), r"shards\[0\]\.sha256 is 'zzz"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_structurally_broken_manifest_names_the_field(bank, case):
    change, message = BROKEN[case]
    rewrite(bank, change)
    with pytest.raises(BankError, match=message):
        BankReader(bank)


def test_shard_key_lists_swapped_are_refused_before_the_step_uses_them(tiny, bank):
    case, samples = tiny
    rewrite(bank, _swap_shard_keys)
    BankReader(bank)  # the manifest itself is well formed ...
    with _applied(case.model, bank) as handle, torch.no_grad():
        with pytest.raises(BankError, match="does not hold the entries the manifest lists"), handle.step(["e0"]):
            case.model(**samples[0][1])


@pytest.mark.parametrize("text, message", [
    (b"\xff\xfe{}", "is not UTF-8"),
    (b"{'format': 1}", "is not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"format": "blockskip.bank", "format": "blockskip.bank"}', "duplicate key 'format'"),
    (b'{"format": "blockskip.bank", "version": NaN}', "NaN is not JSON"),
    (b'["blockskip.bank"]', "is not a blockskip residual bank manifest"),
])
def test_manifest_bytes_that_are_not_a_manifest_are_refused(bank, text, message):
    (bank / MANIFEST).write_bytes(text)
    with pytest.raises(BankError, match=message):
        BankReader(bank)


# ----------------------------------------------------------------------------- random damage


def _consume(case, bank, samples, references):
    """Train every entry through the damaged bank: `BankError`, or exactly the undamaged outputs."""
    try:
        outputs = _train_outputs(case, bank, samples)
    except BankError:
        event("refused")
        return "refused"
    for key, output in outputs.items():
        assert torch.equal(output, references[key]), f"bank accepted with a wrong residual for {key}"
    event("accepted")
    return "accepted"


@contextlib.contextmanager
def _scratch_copy(pristine_bank):
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "bank"
        shutil.copytree(pristine_bank, copy)
        yield copy


_FILES = ["manifest.json", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
_BYTE_DAMAGE = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**31), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 2**31)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=64)),
)


def _damage_bytes(data: bytes, damage) -> bytes:
    if not data and damage[0] != "extend":
        return data
    if damage[0] == "flip":
        data = bytearray(data)
        data[damage[1] % len(data)] ^= damage[2]
        return bytes(data)
    if damage[0] == "truncate":
        return data[: damage[1] % len(data)]
    return data + damage[1]


@FUZZ
@given(damages=st.lists(st.tuples(st.sampled_from(_FILES), _BYTE_DAMAGE), min_size=1, max_size=3))
def test_random_byte_damage_is_refused_or_harmless(tiny, pristine, damages):
    case, samples = tiny
    with _scratch_copy(pristine[0]) as bank:
        for name, damage in damages:
            (bank / name).write_bytes(_damage_bytes((bank / name).read_bytes(), damage))
        outcome = _consume(case, bank, samples, pristine[1])
        shards_changed = any((bank / name).read_bytes() != (pristine[0] / name).read_bytes() for name in _FILES[1:])
        if shards_changed:
            assert outcome == "refused"  # every shard byte is covered by its size and sha256


def _paths(value, prefix=()):
    """Every place in a JSON tree: dict keys and list indices, as tuples."""
    yield prefix
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _paths(child, (*prefix, key))


def _subtrees(value):
    yield value
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        yield from _subtrees(child)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)


def _mutate(manifest, original, data):
    """One random edit of `manifest`; new values are random JSON or any part of the `original` manifest."""
    path = data.draw(st.sampled_from(list(_paths(manifest))[1:]), label="path")
    parent = manifest
    for step in path[:-1]:
        parent = parent[step]
    value = data.draw(st.one_of(_JSON, st.sampled_from(list(_subtrees(original))).map(copy.deepcopy)), label="value")
    operation = data.draw(st.sampled_from(["replace", "delete", "add"]), label="operation")
    if operation == "replace":
        parent[path[-1]] = value
    elif operation == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8), label="new key")] = value
    else:
        parent.insert(path[-1], value)


@FUZZ
@given(data=st.data(), mutations=st.integers(1, 3), checksum=st.booleans())
def test_random_manifest_edits_are_refused_or_harmless(tiny, pristine, data, mutations, checksum):
    """Fields changed, deleted or added with random values of random types, the checksum rewritten or not."""
    case, samples = tiny
    original = read_json(pristine[0] / MANIFEST)
    with _scratch_copy(pristine[0]) as bank:
        manifest = read_json(bank / MANIFEST)
        for _ in range(mutations):
            _mutate(manifest, original, data)
        if checksum:
            write_manifest(bank, {key: value for key, value in manifest.items() if key != "checksum"})
        else:
            (bank / MANIFEST).write_text(json.dumps(manifest))
        _consume(case, bank, samples, pristine[1])


@FUZZ
@given(data=st.data())
def test_any_changed_input_value_is_refused_at_the_step(tiny, pristine, data):
    case, samples = tiny
    key, kwargs = data.draw(st.sampled_from(samples), label="sample")
    name = data.draw(st.sampled_from(sorted(n for n, v in kwargs.items() if torch.is_tensor(v) and v.numel())), label="input")
    changed = dict(kwargs, **{name: kwargs[name].clone()})
    raw = changed[name].view(-1).view(torch.uint8)
    raw[data.draw(st.integers(0, raw.numel() - 1), label="byte")] ^= data.draw(st.integers(1, 255), label="mask")
    with _applied(case.model, pristine[0]) as handle, torch.no_grad():
        with pytest.raises(BankError, match=f"'{key}' was made from other inputs"), handle.step([key]):
            case.model(**changed)
