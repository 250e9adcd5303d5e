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
from ..fast.kernels.cpu import cpu_flags
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
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(f"train.device={name} but this machine has {count} GPUs (cuda:0 to cuda:{count - 1}); "
                          "use one of those, or train.device=cuda")
    return device


def check_lif_backend(name: str, device: torch.device) -> None:
    """``ConfigError`` when ``model.lif_backend`` names a kernel this device cannot run (``triton`` on a CPU,
    ``c`` on a GPU): found when the run starts, not at the first forward pass. Whether a kernel runs is a
    property of the machine, so a checkpoint's config that names one still loads elsewhere."""
    from ..neurons.lif_backends import backend_available

    if name not in ("auto", "torch", "fused") and not backend_available(name, device.type, torch.float32):
        raise ConfigError(f"model.lif_backend={name} cannot run on {device.type} here; use model.lif_backend=auto "
                          f"(the fastest available) or fused")


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


def cuda_has_native_bfloat16(device: torch.device) -> bool:
    """Whether this GPU computes bfloat16 natively (compute capability 8.0, Ampere, and later). Earlier ones
    emulate it many times slower, which ``torch.cuda.is_bf16_supported()`` counts as support."""
    return torch.cuda.get_device_capability(device)[0] >= 8


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
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_native_bfloat16(device) else torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def topk_hits(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """``[len(ks)]`` numbers of samples whose label is among the top-k logits (k capped at the class count), on
    ``logits``' device: summing them costs no host synchronisation."""
    if target.ndim > 1:  # soft (mixup) targets: score against the dominant label
        target = target.argmax(dim=1)
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == target.unsqueeze(1)
    return torch.stack([hits[:, : min(k, logits.shape[1])].any(dim=1).sum() for k in ks]).float()


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[float]:
    """:func:`topk_hits` as host numbers."""
    return topk_hits(logits, target, ks).tolist()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None = None,
             dist_info: DistInfo | None = None, progress: bool = False) -> dict[str, float]:
    """Top-1 accuracy (%), top-5 accuracy (%) when the model has more than 5 classes (with 5 or fewer every
    label is among the top 5: the figure would say nothing), and mean cross-entropy over ``loader`` (reduced
    over ranks)."""
    from ..console import progress_bar

    model.eval()
    # [loss, top-1, top-5] summed on the device and read once at the end: no host synchronisation per batch
    sums, count = torch.zeros(3, dtype=torch.float64, device=device), 0
    num_classes = getattr(model, "num_classes", None)
    for images, labels in progress_bar(loader, enabled=progress, desc="eval"):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        num_classes = logits.shape[1]
        loss = F.cross_entropy(logits, labels, reduction="sum")
        sums += torch.cat([loss.reshape(1), topk_hits(logits, labels)]).to(sums.dtype)
        count += len(labels)
    loss_sum, correct1, correct5, count = all_reduce_sum([*sums.tolist(), count], device, dist_info or DistInfo())
    top5 = {"top5": 100.0 * correct5 / count if count else math.nan} if num_classes is None or num_classes > 5 else {}
    if count == 0:
        return {"top1": math.nan, **top5, "loss": math.nan, "count": 0}
    return {"top1": 100.0 * correct1 / count, **top5, "loss": loss_sum / count, "count": int(count)}
