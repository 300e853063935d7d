"""Hub datasets too large to download whole are refused with advice, not streamed.

`datasets` can stream a hub dataset (`streaming=True`), but a stream has no length and no random
access: the validation carve-out, `data.max_train`, the `name[train:N]` slice, the Trainer's shuffling
sampler and the sharding between processes all pick row numbers. A dataset that is downloaded is
Arrow on disk, memory-mapped, and its images are decoded only when a sample is used (data/index.py), so
what limits a hub dataset is disk and download time, not memory. Above `HUB_DOWNLOAD_LIMIT_GB` the
loader refuses and says how to fetch only the split needed.
"""

from __future__ import annotations

from ..errors import InputError

HUB_DOWNLOAD_LIMIT_GB = 20.0
"""Above this many GB of files a hub dataset is not downloaded implicitly (COCO-sized sets are 20+ GB)."""


def check_hub_download_size(repo_id: str, limit_gb: float = HUB_DOWNLOAD_LIMIT_GB) -> None:
    """An InputError with the fix when `repo_id`'s files add up to more than `limit_gb`. Silent when the
    size cannot be learned (offline, cached, private): `load_dataset` reports those itself."""
    total = _repo_bytes(repo_id)
    if total is None or total <= limit_gb * 1e9:
        return
    raise InputError(f"dataset {repo_id} is {total / 1e9:.0f} GB to download, more than the "
                     f"{limit_gb:.0f} GB downloaded implicitly: fetch the split you need "
                     f"(`hf download {repo_id} --repo-type dataset --include 'data/val-*' --local-dir DIR`) "
                     "and pass DIR as the dataset, with a slice such as DIR[train:5000] to use part of it")


def _repo_bytes(repo_id: str) -> int | None:
    from huggingface_hub import HfApi

    try:
        info = HfApi().dataset_info(repo_id, files_metadata=True)
    except Exception:  # offline, private or missing: not this check's business
        return None
    sizes = [s.size for s in info.siblings or [] if s.size is not None]
    return sum(sizes) if sizes else None
