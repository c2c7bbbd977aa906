"""The device a user names (`device:` in a campaign, `--device`), checked before anything is loaded."""

from __future__ import annotations

import torch

from evo_merge.errors import UserError


def cuda_count() -> int:
    """The CUDA devices torch sees here (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(device: str, key: str = "device", missing: str = "") -> torch.device:
    """auto (cuda when available) | cpu | cuda | cuda:N; another name, or a GPU that is not there, is a
    user error naming `key`; `missing` is added to the second (what the caller can do instead)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"{key}: {device!r} is not a device (auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda":
        count = cuda_count()
        if (resolved.index or 0) >= count:
            raise UserError(f"{key}: {device} asked for, but torch sees {count} CUDA device(s){missing}")
    elif resolved.type != "cpu":
        raise UserError(f"{key}: {device!r} is not a device evo-merge runs on (auto, cpu, cuda or cuda:N)")
    return resolved


def available_device(device: str) -> torch.device:
    """The campaign's device where this process has it, else the host: an export from a run folder
    on a machine without the campaign's GPU (or in the main process of a cluster whose workers hold
    the GPUs) merges on the CPU, slower and equal to rounding (the export says when DARE's and
    DELLA's drops differ from the candidate scored)."""
    try:
        return resolve_device(device)
    except UserError:
        return torch.device("cpu")


def indexed(device: torch.device) -> torch.device:
    """`device` as a tensor on it names it: a bare cuda with the index of the GPU it means (the
    current one). torch.device("cuda") != torch.device("cuda:0"), so a bare cuda never equals a
    tensor's device."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device
