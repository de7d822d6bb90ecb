"""precompute_residuals: run the frozen original model once per scheduled sample and bank the spans.

For each skipped span the bank stores what cached training needs and nothing more:
- a leading span stores its **output** streams (every stream the block returns). Nothing upstream
  of it trains, so its input during training is the one seen here and `input + Δ` is exactly this
  output; storing the output keeps cached training bit-identical to the full model.
- a trailing span stores **Δ = output − input** for the image (or joint image+text) stream only:
  no kept block reads a trailing span's text stream, and the output head reads the image.

Samples go through the model in chunks (one batch of `chunk_size` samples). With `device` set,
the blocks wait on the CPU and each one is moved to the device just for its call, so a full
FLUX.1-dev precompute needs about one block of weights on the GPU plus activations.

Example:
    >>> import tempfile, torch
    >>> from diffusers import FluxTransformer2DModel
    >>> model = FluxTransformer2DModel(num_layers=2, num_single_layers=2, attention_head_dim=8,
    ...     num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, in_channels=8, axes_dims_rope=(2, 2, 4))
    >>> inputs = [(f"k{i}", dict(hidden_states=torch.randn(1, 4, 8), encoder_hidden_states=torch.randn(1, 3, 16),
    ...     pooled_projections=torch.randn(1, 8), timestep=torch.tensor([0.5]), img_ids=torch.zeros(4, 3),
    ...     txt_ids=torch.zeros(3, 3))) for i in range(3)]
    >>> scratch = tempfile.TemporaryDirectory()
    >>> summary = precompute_residuals(model, {"skip": {"leading": 1, "trailing": 1}}, inputs, scratch.name, progress=False)
    >>> summary.entries
    3
    >>> scratch.cleanup()
"""

from __future__ import annotations

import inspect
import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from ..families.layouts import block_io_for, get_layout
from ..residuals.bank import (
    BANK_FORMAT,
    BANK_VERSION,
    DEFAULT_SHARD_BYTES,
    HEADER_FIELDS,
    BankError,
    BankWriter,
    read_manifest,
    write_manifest,
)
from ..residuals.fingerprint import model_fingerprint
from ..skipping.plan import BlockSkipPlan
from ..skipping.skip import get_block_skip
from ..skipping.spans import bank_spans


@dataclass
class PrecomputeSummary:
    bank: Path
    entries: int  # entries in the bank when done
    computed: int  # entries computed by this call (the rest were there already)
    bytes_written: int
    seconds: float


def bank_header(model: nn.Module, plan: BlockSkipPlan, schedule: Any = None, dtype: torch.dtype | None = None) -> dict:
    """What a bank for `plan` on `model` must record: fingerprint, spans, schedule hash, storage dtype."""
    return {
        "model": model_fingerprint(model),
        "spans": bank_spans(model, plan),
        "schedule": schedule.fingerprint() if hasattr(schedule, "fingerprint") else schedule,
        "dtype": str(dtype or next(model.parameters()).dtype).replace("torch.", ""),
    }


def collate_inputs(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch per-sample forward kwargs: batch-1 tensors are concatenated, shared values kept once.

    A tensor that is equal in every sample and has no batch dimension (FLUX's `img_ids`) is shared;
    a tensor whose first dimension is 1 is concatenated. Anything else must be equal everywhere.
    """
    batched = {}
    for name, first in samples[0].items():
        values = [sample[name] for sample in samples]
        if torch.is_tensor(first):
            if first.ndim >= 1 and first.shape[0] == 1:
                batched[name] = torch.cat(values)
            elif all(torch.equal(value, first) for value in values[1:]):
                batched[name] = first
            else:
                raise BankError(f"input {name!r} differs between samples but has no batch dimension of 1")
        elif all(value == first for value in values[1:]):
            batched[name] = first
        else:
            raise BankError(f"input {name!r} must be the same for every sample of a chunk")
    return batched


@contextmanager
def _capture(model: nn.Module, spans: list[dict], records: dict) -> Iterator[None]:
    """Record the streams entering each span's first block and leaving its last one."""
    handles = []
    for index, span in enumerate(spans):
        blocks = getattr(model, span["list"])
        first, last = blocks[span["start"]], blocks[span["stop"] - 1]
        io, signature = block_io_for(first), inspect.signature(first.forward)

        def before(module, args, kwargs, index=index, io=io, signature=signature):
            arguments = signature.bind(*args, **kwargs).arguments
            records[index, "in"] = {role: arguments.get(io.argument_for(role)) for role in io.returns}

        def after(module, args, kwargs, output, index=index, io=io):
            values = output if io.returns_tuple else (output,)
            records[index, "out"] = dict(zip(io.returns, values))

        handles.append(first.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(last.register_forward_hook(after, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _blocks_streamed_to(model: nn.Module, device: torch.device | None) -> Iterator[None]:
    """Keep blocks on the CPU and move each to `device` only while it runs."""
    if device is None:
        yield
        return
    blocks = [block for block_list in get_layout(model) for block in block_list.blocks]
    block_ids = {id(block) for block in blocks}
    for module in model.children():
        if id(module) not in block_ids and not isinstance(module, nn.ModuleList):
            module.to(device)
    handles = []
    for block in blocks:
        block.to("cpu")
        handles.append(block.register_forward_pre_hook(lambda module, args: module.to(device)))
        handles.append(block.register_forward_hook(lambda module, args, output: module.to("cpu")))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _entry_tensors(spans: list[dict], records: dict, sample: int, dtype: torch.dtype | None) -> dict:
    tensors = {}
    for index, span in enumerate(spans):
        for role in span["roles"]:
            output = records[index, "out"][role][sample]
            value = output if span["stores"] == "output" else output - records[index, "in"][role][sample]
            tensors[f"{index}/{role}"] = value.to(dtype) if dtype is not None else value
    return tensors


def _chunks(inputs: Iterable, size: int, writer: BankWriter) -> Iterator[list]:
    chunk = []
    for key, kwargs in inputs:
        if key in writer.input_hashes:
            writer.check_inputs(key, kwargs)  # a resume: the written entry must come from this input
            continue
        chunk.append((key, kwargs))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def precompute_residuals(
    model: nn.Module,
    plan: BlockSkipPlan | dict | str | Path,
    inputs: Iterable[tuple[str, dict[str, Any]]],
    bank_dir: str | Path,
    *,
    schedule: Any = None,
    dtype: torch.dtype | None = None,
    chunk_size: int = 8,
    device: str | torch.device | None = None,
    num_entries: int | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = True,
    process_index: int | None = None,
    num_processes: int | None = None,
) -> PrecomputeSummary:
    """Fill `bank_dir` with the plan's residuals for every `(key, forward_kwargs)` in `inputs`.

    `forward_kwargs` are the transformer's keyword arguments for one sample (batch size 1).
    `schedule` (a `TrainingSchedule` or its fingerprint string) is recorded so training can
    check it uses the same one. `dtype` stores residuals in another dtype (bf16 halves the bank).
    Every entry records the hash of its `forward_kwargs`, which training compares with what it feeds.
    An interrupted call can be repeated with the same arguments: it resumes after the last shard,
    and refuses inputs other than those the written entries were made from (give them again: they
    are hashed, not recomputed).
    With `device` set, the model is left with its blocks on the CPU and its other layers on `device`.

    Under several processes (`torch.distributed` initialised, e.g. by `accelerate launch`, or
    `process_index`/`num_processes` given) every process takes every n-th input, writes its own
    part of the bank, and the first process merges the parts' manifests once all are done.
    """
    plan = BlockSkipPlan.coerce(plan)
    if get_block_skip(model) is not None:
        raise BankError("precompute needs the full model: call it before apply_block_skip (or after remove_block_skip)")
    header = bank_header(model, plan, schedule, dtype)
    spans = header["spans"]
    if num_entries is None and hasattr(inputs, "__len__"):
        num_entries = len(inputs)
    rank, world = _process_group(process_index, num_processes)
    if world > 1:
        inputs = (item for position, item in enumerate(inputs) if position % world == rank)
        num_entries = None if num_entries is None else len(range(rank, num_entries, world))
    root, bank_dir = Path(bank_dir), Path(bank_dir) / f"part-{rank:05d}" if world > 1 else Path(bank_dir)
    writer = BankWriter(bank_dir, header, shard_bytes=shard_bytes)
    total = num_entries
    device = torch.device(device) if device is not None else None
    already = len(writer.input_hashes)
    computed, started, checked_space = 0, time.perf_counter(), False
    bar = tqdm(total=total, initial=already, unit="sample", desc="precompute", disable=not progress)
    model_was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _blocks_streamed_to(model, device):
            for chunk in _chunks(inputs, chunk_size, writer):
                records: dict = {}
                batch = collate_inputs([kwargs for _, kwargs in chunk])
                if device is not None:
                    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                with _capture(model, spans, records):
                    model(**batch)
                for sample, (key, kwargs) in enumerate(chunk):
                    tensors = _entry_tensors(spans, records, sample, dtype)
                    if not checked_space and total is not None:
                        _check_disk_space(Path(bank_dir), tensors, total - already)
                        checked_space = True
                    writer.add(key, tensors, inputs=kwargs)
                computed += len(chunk)
                bar.update(len(chunk))
                bar.set_postfix(written=f"{writer.bytes_written / 2**20:.1f} MiB")
        writer.finish()
    finally:
        bar.close()
        model.train(model_was_training)
    if world > 1:
        _barrier()
        if rank == 0:
            merge_bank_parts(root)
        _barrier()
    return PrecomputeSummary(root, len(writer.input_hashes), computed, writer.bytes_written, time.perf_counter() - started)


def _process_group(process_index: int | None, num_processes: int | None) -> tuple[int, int]:
    if num_processes is not None:
        return process_index or 0, num_processes
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def merge_bank_parts(folder: str | Path) -> None:
    """Write the manifest of a bank whose parts (`part-*/`) were computed by separate processes."""
    folder = Path(folder)
    parts = sorted(folder.glob("part-*"))
    if not parts:
        raise BankError(f"{folder} has no part-* folders to merge")
    manifests = [read_manifest(part) for part in parts]
    for part, manifest in zip(parts, manifests):
        if not manifest["complete"]:
            raise BankError(f"{part} is incomplete; run the precompute again to finish it")
        if any(manifest[field] != manifests[0][field] for field in HEADER_FIELDS):
            raise BankError(f"{part} was computed for another model, plan or schedule than {parts[0]}")
    shared = {json.dumps(m["shared_inputs"]) for m in manifests if m["shards"]}
    if len(shared) > 1:
        raise BankError(f"the parts in {folder} batch their inputs differently ({sorted(shared)}); run the precompute again")
    shards = [
        {**shard, "file": f"{part.name}/{shard['file']}"}
        for part, manifest in zip(parts, manifests)
        for shard in manifest["shards"]
    ]
    merged = {
        "format": BANK_FORMAT,
        "version": BANK_VERSION,
        **{field: manifests[0][field] for field in HEADER_FIELDS},
        "complete": True,
        "shards": shards,
        "shared_inputs": json.loads(shared.pop()) if shared else None,
        "entries": sum(len(shard["keys"]) for shard in shards),
    }
    write_manifest(folder, merged)


def _check_disk_space(folder: Path, entry: dict[str, torch.Tensor], remaining: int) -> None:
    per_entry = sum(t.numel() * t.element_size() for t in entry.values())
    needed = per_entry * remaining
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise BankError(
            f"the bank needs about {needed / 2**30:.2f} GiB more ({remaining} entries × {per_entry / 2**20:.2f} MiB) "
            f"but {folder} has {free / 2**30:.2f} GiB free"
        )
