"""The pieces of a training step that do not depend on the run: devices, autocast, accuracy, evaluation."""

from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..errors import ConfigError
from ..kernels.cpu import cpu_flags
from .distributed import DistInfo, all_reduce_sum


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available here; use train.device=cpu")
    return device


# oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: bfloat16 is emulated under them.
_ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_has_native_bfloat16() -> bool:
    """Whether bfloat16 runs natively here: the CPU has AVX512_BF16 or AMX (/proc/cpuinfo), and neither
    PyTorch's own kernels (``ATEN_CPU_CAPABILITY``) nor oneDNN's (``ONEDNN_MAX_CPU_ISA``) are held below
    AVX-512, as they are to run an AVX2 machine's code on this one (docs/performance.md, "AVX2")."""
    if not cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        return False
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    onednn_cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    return onednn_cap.strip().upper() not in _ONEDNN_ISAS_WITHOUT_BF16


def autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (None: full precision)."""
    if amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if amp == "gpu_fp16" and device.type == "cuda":
        return torch.float16  # the original recipes' float16 autocast (the trainer adds loss scaling)
    if device.type == "cpu":
        # Without native bfloat16 instructions the CPU emulates it, over ten times slower than float32.
        return torch.bfloat16 if cpu_has_native_bfloat16() else None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[float]:
    """Number of samples whose label is among the top-k logits, for each k (k capped at the class count)."""
    if target.ndim > 1:  # soft (mixup) targets: score against the dominant label
        target = target.argmax(dim=1)
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == target.unsqueeze(1)
    return [float(hits[:, : min(k, logits.shape[1])].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None = None,
             dist_info: DistInfo | None = None, progress: bool = False) -> dict[str, float]:
    """Top-1 accuracy (%), top-5 accuracy (%) when the model has more than 5 classes (with 5 or fewer every
    label is among the top 5: the figure would say nothing), and mean cross-entropy over ``loader`` (reduced
    over ranks)."""
    from ..console import progress_bar

    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    num_classes = None
    for images, labels in progress_bar(loader, enabled=progress, desc="eval"):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        num_classes = logits.shape[1]
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        c1, c5 = topk_correct(logits, labels)
        correct1, correct5, count = correct1 + c1, correct5 + c5, count + len(labels)
    loss_sum, correct1, correct5, count = all_reduce_sum(
        [loss_sum, correct1, correct5, count], device, dist_info or DistInfo())
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
    top5 = {"top5": 100.0 * correct5 / count if count else math.nan} if num_classes is None or num_classes > 5 else {}
    if count == 0:
        return {"top1": math.nan, **top5, "loss": math.nan, "count": 0}
    return {"top1": 100.0 * correct1 / count, **top5, "loss": loss_sum / count, "count": int(count)}
