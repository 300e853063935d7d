"""Several processes (torchrun, `accelerate launch`, `--gpu 0,1`): which process this is, which
device is its own, which share of a job is its own, and gathering the shares back in order. Every
read of the launcher's environment is here (its writes: training/launch.py).

With one process every helper is the identity, so callers never branch on it. The launchers set
WORLD_SIZE / RANK / LOCAL_RANK; the process group is opened once by accelerate's PartialState
(gloo on CPU, NCCL on GPU), the same state transformers' Trainer later uses for DDP.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


CLAIMED_RUN_DIR = "VLM_RECIPES_CLAIMED_RUN_DIR"
"""Set by the `--gpu 0,1` / `--nproc` launcher (training/launch.py) for the processes it starts: it
holds the run directory's lock for the whole job, and they write into that directory."""


def launched() -> bool:
    """Started as one of several processes by torchrun / accelerate (before the group is opened)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_strategy() -> str:
    """The strategy accelerate launched this process with (it exports it to the processes):
    ddp (also torchrun, or one process), fsdp, zero2 or zero3."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return f"zero{os.environ.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '2')}"
    return "ddp"


def fsdp_checkpoints_activations() -> bool:
    """accelerate launched FSDP with its own activation checkpointing (configs/accelerate/fsdp.yaml);
    Trainer refuses a second one, so a stage's gradient_checkpointing defers to it."""
    return launch_strategy() == "fsdp" and os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "").lower() == "true"


def fsdp_loads_on_cpu() -> bool:
    """accelerate launched FSDP with fsdp_cpu_ram_efficient_loading: the weights are loaded by the
    main process only, on the meta device elsewhere."""
    return launch_strategy() == "fsdp" and os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "") == "true"


def claimed_run_dir() -> Path | None:
    """The run directory the launcher that started this process claimed for it (None: not launched by it)."""
    claimed = os.environ.get(CLAIMED_RUN_DIR)
    return Path(claimed) if claimed else None


def init_processes(device: str) -> None:
    """Open the process group if this process was launched as one of several (idempotent)."""
    if launched() and not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=device == "cpu")


def rank_and_world() -> tuple[int, int]:
    """(rank, number of processes); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """The one process that writes files and prints (rank 0)."""
    return rank_and_world()[0] == 0


def local_device(device: str) -> str:
    """This process's own device: cuda:LOCAL_RANK under a launcher (each process holds a whole
    model; data parallel), else `device` unchanged."""
    if device == "cuda" and launched():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def fsdp_units(model) -> list:
    """The modules FSDP2 (`fully_shard`, as accelerate's fsdp.yaml applies it) shards in `model`;
    empty for a plain or DDP model."""
    from torch.distributed.fsdp import FSDPModule

    return [module for module in model.modules() if isinstance(module, FSDPModule)]


def gather_full_weights(model) -> tuple[list[bool], dict]:
    """Make every process hold the whole of `model`, as under DDP: under FSDP each unit's shards are
    gathered once and stay gathered across forwards, so a process can evaluate its own share of the
    items (however many forwards that takes: no collective runs per forward), merge LoRA or save.
    Returns what `full_weights` restores: whether each unit resharded after its forward, and the
    methods set aside. A no-op without FSDP (DECISIONS D27)."""
    units = fsdp_units(model)
    groups = [unit._get_fsdp_state()._fsdp_param_group for unit in units]  # None: a unit with no weights of its own
    resharded = [group is not None and group._reshard_after_forward for group in groups]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    # Trainer registers `generate` as an FSDP forward method; its post-hook runs after the nested
    # forwards and puts the root's shards back, so the next batch would all-gather alone and hang
    hooked = {name: method for name, method in vars(model).items() if hasattr(method, "__wrapped__")} if units else {}
    for name in hooked:
        delattr(model, name)
    return resharded, hooked


@contextmanager
def full_weights(model) -> Iterator[None]:
    """`gather_full_weights` for the block (validation while training); the shards come back after."""
    resharded, hooked = gather_full_weights(model)
    try:
        yield
    finally:
        for unit, reshard in zip(fsdp_units(model), resharded):
            unit.reshard()
            unit.set_reshard_after_forward(reshard, recurse=False)
        for name, method in hooked.items():
            setattr(model, name, method)


def whole_state_dict(model) -> dict | None:
    """What `save_pretrained` should save: under FSDP, once `gather_full_weights` ran, the whole
    weights each process now holds (merged LoRA included), read without `state_dict()`, whose FSDP
    hooks would put the shards back; named as the model without FSDP names them (FSDP's activation
    checkpointing wraps layers under an extra name). None without FSDP (the model saves its own)."""
    if not fsdp_units(model):
        return None
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import _CHECKPOINT_PREFIX

    state = {name: param.detach() for name, param in model.named_parameters()}
    for prefix, module in model.named_modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and name not in module._non_persistent_buffers_set:
                state[f"{prefix}.{name}" if prefix else name] = buffer
    state = {name.replace(_CHECKPOINT_PREFIX, ""): tensor for name, tensor in state.items()}
    return without_tied_copies(state, getattr(model, "all_tied_weights_keys", None) or {})


def without_tied_copies(state: dict, tied: dict) -> dict:
    """`state` less each tied weight (`tied`: name -> the name it is tied to, e.g. lm_head.weight ->
    embed_tokens.weight) that holds the same values as its source: gathered, tied weights are two
    tensors, and the model saves one. A "tied" pair whose values differ is kept whole (issue 31):
    dropping one would silently replace trained weights by the others on loading."""
    def copy_of_source(name: str) -> bool:
        source = state.get(tied.get(name))
        tensor = state[name]
        return source is not None and (tensor is source or (tensor.shape == source.shape and
                                                            tensor.dtype == source.dtype and torch.equal(tensor, source)))

    return {name: tensor for name, tensor in state.items() if not copy_of_source(name)}


def _all_gather(obj) -> list:
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _outcome(fn: Callable, *args) -> tuple[bool, object]:
    """(True, result) or (False, the exception): an error travels to the other processes instead
    of leaving them waiting in a collective that this process never reaches."""
    try:
        return True, fn(*args)
    except Exception as err:  # re-raised on every process by _raise_first_error
        return False, err


def _raise_first_error(outcomes: list[tuple[bool, object]]) -> None:
    """Every process raises the lowest rank's error, so all fail together with the same message
    (which only the main process prints)."""
    for ok, value in outcomes:
        if not ok:
            raise value


def on_main(fn: Callable[[], T]) -> T:
    """`fn()` run by the main process only; its result (or its error) reaches every process.
    For work that must happen once: choosing and clearing the run directory."""
    rank, world = rank_and_world()
    if world == 1:
        return fn()
    outcome = [_outcome(fn) if rank == 0 else None]
    dist.broadcast_object_list(outcome, src=0)
    _raise_first_error(outcome)
    return outcome[0][1]


def shard(items: Sequence[T], block: int) -> list[T]:
    """This process's share of `items`: blocks of `block` consecutive items dealt round-robin
    (block 0 to rank 0, block 1 to rank 1, ...). Blocks are the batches one process would run,
    so every batch is computed exactly as without sharding: same rows, same padding."""
    rank, world = rank_and_world()
    starts = range(rank * block, len(items), world * block)
    return [item for start in starts for item in items[start:start + block]]


def gather(local, total: int, block: int):
    """Inverse of `shard`: every process's per-item results (a list, or a tensor with one row per
    item) back in the original order, on every process. Nothing padded, nothing dropped."""
    return _reassemble(_all_gather(local), total, block)


def _reassemble(parts: list, total: int, block: int):
    world = len(parts)
    pieces = []
    for index, start in enumerate(range(0, total, block)):
        owner, position = index % world, (index // world) * block
        pieces.append(parts[owner][position:position + min(block, total - start)])
    if pieces and isinstance(pieces[0], torch.Tensor):
        return torch.cat(pieces)
    return [item for piece in pieces for item in piece]


def map_sharded(fn: Callable[[list], T], items: Sequence, block: int) -> T:
    """`fn(items)` computed 1/N by each of N processes and gathered: `fn` maps a list to per-item
    results (a list or a tensor of rows) and batches by `block` itself. An error in any process
    is raised in all of them."""
    mine = shard(items, block)
    ok, value = _outcome(fn, mine) if mine else (True, [])
    if isinstance(value, torch.Tensor):
        value = value.cpu()  # gathered as pickles; the main process may sit on another device
    outcomes = _all_gather((ok, value))
    _raise_first_error(outcomes)
    return _reassemble([v for _, v in outcomes], len(items), block)


# --- in-batch negatives across processes (mrl's InfoNCE and its distillation term) -------------

def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(n, h) on each of W processes -> (W*n, h) in rank order; gradients flow back to each shard
    (summed over the processes that used it: backward is a reduce-scatter)."""
    from torch.distributed._functional_collectives import all_gather_single_autograd

    gathered = all_gather_single_autograd(tensor.contiguous(), 0, dist.group.WORLD)
    return gathered.wait() if hasattr(gathered, "wait") else gathered


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """(n, h) on each of W processes -> (W*n, h) in rank order, without gradients."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def in_batch_layout(queries: torch.Tensor, targets: torch.Tensor, gather: bool, with_grad: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one layout of in-batch retrieval: queries (B, H) and targets ((1 + k) * B, H) laid out
    [B positives, then k*B hard negatives] -> (this process's positives (B, H), every process's
    candidates (W*(1+k)*B, H), every process's queries (W*B, H)). The candidates are [all W*B
    positives, then all negatives], so query i of rank r has its positive at r*B + i. `gather`
    False (or one process): this process's rows only."""
    batch = queries.shape[0]
    positives, negatives = targets[:batch], targets[batch:]
    world = rank_and_world()[1] if gather else 1
    if world == 1:
        return positives, targets, queries
    collect = gather_with_grad if with_grad else gather_rows
    all_negatives = collect(negatives) if negatives.shape[0] else negatives
    return positives, torch.cat([collect(positives), all_negatives]), collect(queries)

