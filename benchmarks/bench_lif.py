"""Multi-step LIF, forward and forward+backward: our backends against SpikingJelly and a plain loop.

Usage: python benchmarks/bench_lif.py [--device cpu|cuda] [--shapes 4,32,64,384 4,32,196,512] [--repeats 10]
       [--compile] [--no-record]

Every implementation runs on the same input in one process, so the ratios compare like with like. Rows:
our ``auto`` backend (the C kernel on CPU, Triton on CUDA), our pure-PyTorch ``fused`` backend, the plain
per-step autograd loop (our oracle), SpikingJelly's ``MultiStepLIFNode`` (torch backend; cupy too when a GPU
and CuPy are present), optionally ``torch.compile`` of the per-step loop, and the memory floor: the time to
stream the bytes a LIF layer must move (forward: read X, write S; backward: read dS and X, write dX),
measured as copies of the same tensor.
"""

from __future__ import annotations

import argparse

import torch
from benchutil import forward_and_backward, markdown_table, record, time_interleaved

from spikformer.neurons import LIFParams, default_backend, lif_multistep, lif_reference


def spikingjelly_node(backend: str):
    try:
        from spikingjelly.clock_driven import neuron
    except ImportError:
        return None
    node = neuron.MultiStepLIFNode(tau=2.0, detach_reset=True, backend=backend)

    def run(x: torch.Tensor) -> torch.Tensor:
        node.reset()
        return node(x)

    return run


def implementations(device: torch.device, compile_loop: bool) -> dict[str, object]:
    params = LIFParams()
    impls: dict[str, object] = {
        f"spikformer auto ({default_backend(device.type, torch.float32)})": lambda x: lif_multistep(x, params),
        "spikformer fused (pure PyTorch)": lambda x: lif_multistep(x, params, "fused"),
        "per-step autograd loop": lambda x: lif_reference(x, params),
    }
    sj = spikingjelly_node("torch")
    if sj is not None:
        impls["SpikingJelly MultiStepLIFNode, torch"] = sj
    if device.type == "cuda":
        try:
            import cupy  # noqa: F401

            impls["SpikingJelly MultiStepLIFNode, cupy"] = spikingjelly_node("cupy")
        except ImportError:
            pass
    if compile_loop:
        impls["torch.compile(per-step loop)"] = torch.compile(lambda x: lif_reference(x, params), dynamic=False)
    return impls


def measure(shape: tuple[int, ...], device: torch.device, repeats: int, compile_loop: bool) -> list[list[str]]:
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, generator=gen) * 1.5 + 0.5
    grad = torch.randn(shape, device=device, generator=gen)
    xg = x.clone().requires_grad_()
    fns, names = {}, []
    for name, fn in implementations(device, compile_loop).items():
        fns[(name, "fwd")], fns[(name, "fwdbwd")] = forward_and_backward(fn, x, xg, grad)
        names.append(name)
    floor = "memory floor (2 / 5 tensor streams)"
    fns[(floor, "copy")] = lambda: x.clone()  # reads and writes one tensor: 2 tensor-streams
    times = time_interleaved(fns, device, repeats)
    results = {name: (times[(name, "fwd")], times[(name, "fwdbwd")]) for name in names}
    results[floor] = (times[(floor, "copy")], 2.5 * times[(floor, "copy")])
    base = results.get("SpikingJelly MultiStepLIFNode, torch") or results["per-step autograd loop"]
    rows = []
    for name, (fwd, fwdbwd) in results.items():
        rows.append([f"`{list(shape)}`", name, f"{fwd * 1e3:.2f}", f"{fwdbwd * 1e3:.2f}",
                     f"{base[0] / fwd:.1f}x", f"{base[1] / fwdbwd:.1f}x"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", default=["4,32,64,384", "4,32,196,512"],
                        help="T,B,... shapes; the defaults are CIFAR 4-384 and ImageNet 8-512 tokens at batch 32")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the per-step loop")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for text in args.shapes:
        rows += measure(tuple(int(v) for v in text.split(",")), device, args.repeats, args.compile)
    header = ["shape [T, B, ...]", "implementation", "fwd ms", "fwd+bwd ms", "fwd speed-up", "fwd+bwd speed-up"]
    table = markdown_table(header, rows)
    notes = ["Speed-ups are relative to SpikingJelly's torch backend; float32; median of the repeats, the "
             "implementations taking turns in every round."]
    record(f"LIF layer, {device.type}", device, table, notes, write=not args.no_record)


if __name__ == "__main__":
    main()
