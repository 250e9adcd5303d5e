"""PNG figures of a spiking network: firing rate per layer, a spike raster, an SSA attention map.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend switch), so they work on
headless machines and never disturb a user's interactive session. Needs the ``analysis`` extra.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .firing import lif_role

_ROLE_COLOURS = {
    "stem": "#4c72b0", "RPE": "#64b5cd", "Q": "#dd8452", "K": "#c44e52", "V": "#8172b3",
    "attention": "#937860", "projection": "#da8bc3", "MLP fc1": "#55a868", "MLP fc2": "#2f7d4a",
}


def _figure(width: float, height: float):
    from ..extras import require

    Figure = require("matplotlib.figure", "figures").Figure
    FigureCanvasAgg = require("matplotlib.backends.backend_agg", "figures").FigureCanvasAgg
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def plot_firing_rates(rates: dict[str, float], path: str | Path, per_step: dict[str, list[float]] | None = None,
                      title: str = "Firing rate per spiking layer") -> Path:
    """Horizontal bars: the mean firing rate of each LIF layer (coloured by its role), with a dot per time
    step when ``per_step`` is given."""
    names = list(rates)
    fig = _figure(7.0, 1.2 + 0.22 * max(len(names), 1))
    ax = fig.add_subplot(1, 1, 1)
    y = list(range(len(names)))
    colours = [_ROLE_COLOURS.get(lif_role(n), "#777777") for n in names]
    ax.barh(y, [rates[n] for n in names], color=colours, height=0.7)
    if per_step:
        for i, name in enumerate(names):
            steps = per_step.get(name, [])
            ax.scatter(steps, [i] * len(steps), s=9, color="black", zorder=3)
    ax.set_yticks(y, [n.removesuffix(".lif") for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("spikes per neuron per time step" + ("  (bar: mean, dots: each time step)" if per_step else ""))
    ax.set_xlim(0, max(0.05, 1.1 * max([*rates.values(), *(r for v in (per_step or {}).values() for r in v)],
                                        default=0.0)))
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_raster(spikes: torch.Tensor, path: str | Path, layer: str = "", max_neurons: int = 256) -> Path:
    """Spike raster of one layer for one sample: ``spikes [T, ...]`` (neurons flattened), at most
    ``max_neurons`` of them taken at even strides; a mark at (t, neuron) for each spike."""
    flat = spikes.detach().float().flatten(1).cpu()  # [T, M]
    T, M = flat.shape
    stride = max(1, math.ceil(M / max_neurons))
    shown = flat[:, ::stride]
    fig = _figure(2.2 + 0.5 * T, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(shown.T.numpy(), aspect="auto", interpolation="nearest", cmap="Greys", vmin=0, vmax=1,
              extent=(-0.5, T - 0.5, shown.shape[1] - 0.5, -0.5))
    ax.set_xticks(range(T))
    ax.set_xlabel("time step")
    ax.set_ylabel(f"neuron (every {stride}th of {M})" if stride > 1 else f"neuron ({M})")
    rate = float(flat.mean()) if flat.numel() else 0.0
    ax.set_title(f"{layer}\nrate {rate:.3f}", fontsize=9)
    return _save(fig, path)


def plot_attention_map(scores: torch.Tensor, path: str | Path, image: torch.Tensor | None = None,
                       title: str = "SSA attention map") -> Path:
    """The spiking attention map ``Q K^T`` ``[T, N, N]`` of one head, averaged over time, beside the input
    image ``[C, H, W]`` overlaid with the attention each token receives (sum over queries, on the token grid)."""
    scores = scores.detach().float().cpu()
    mean = scores.mean(0)  # [N, N]
    N = mean.shape[0]
    panels = 3 if image is not None else 1
    fig = _figure(4.0 * panels, 4.0)
    ax = fig.add_subplot(1, panels, 1)
    shown = ax.imshow(mean.numpy(), cmap="viridis", interpolation="nearest")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="coincident spikes (mean over T)")
    ax.set_xlabel("key token")
    ax.set_ylabel("query token")
    ax.set_title(title, fontsize=9)
    if image is not None:
        picture = image.detach().float().cpu()
        picture = picture.mean(0) if picture.shape[0] != 3 else picture.permute(1, 2, 0)
        picture = (picture - picture.min()) / (picture.max() - picture.min() + 1e-12)
        H, W = picture.shape[:2]
        grid_h = max(1, round(math.sqrt(N * H / W)))
        grid_w = N // grid_h
        ax_img = fig.add_subplot(1, panels, 2)
        ax_img.imshow(picture.numpy(), cmap="gray" if picture.ndim == 2 else None)
        ax_img.set_title("input", fontsize=9)
        ax_img.axis("off")
        ax_over = fig.add_subplot(1, panels, 3)
        ax_over.imshow(picture.numpy(), cmap="gray" if picture.ndim == 2 else None)
        if grid_h * grid_w == N:
            received = mean.sum(0).reshape(grid_h, grid_w)
            ax_over.imshow(received.numpy(), cmap="inferno", alpha=0.6, interpolation="nearest",
                           extent=(-0.5, W - 0.5, H - 0.5, -0.5))
        ax_over.set_title("attention received per token", fontsize=9)
        ax_over.axis("off")
    return _save(fig, path)
