"""ONNX and NIR export: BN folded, T unrolled; ONNX matches PyTorch in onnxruntime, NIR round-trips and
computes the same spikes, and what NIR cannot express is named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import spikformer
from spikformer.cli import main
from spikformer.export import ExportError, example_input, export_nir, export_onnx, inference_model

onnxruntime = pytest.importorskip("onnxruntime")
nir = pytest.importorskip("nir")

TINY = ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.img_size=16", "model.T=2"]


def tiny_model(name: str = "spikformer_cifar_4_256", **overrides) -> torch.nn.Module:
    kwargs = dict(embed_dim=16, depth=1, num_heads=2, img_size=16, T=2) | overrides
    model = spikformer.create_model(name, **kwargs)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # running statistics := this batch's: eval behaves like training
    model.train()
    model(example_input(model, batch=4))
    return model.eval()


def run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def test_inference_model_computes_the_same_spikes_as_the_model():
    model = tiny_model()
    x = example_input(model, batch=3)
    with torch.no_grad():
        # the unrolled LIF and the kernels agree bit for bit on the same (folded) pre-activations
        assert torch.equal(inference_model(model)(x), model.fuse()(x))


def test_export_command_writes_onnx_that_onnxruntime_runs_like_pytorch(tmp_path, capsys):
    torch.manual_seed(0)
    out = tmp_path / "model.onnx"
    assert main(["export", "--model", "spikformer_cifar_4_256", *TINY, "--out", str(out)]) == 0
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out
    import onnx

    graph = onnx.load(str(out)).graph
    assert not any(node.op_type == "BatchNormalization" for node in graph.node)
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["logits"]
    # The command built the model from seed 0 too: rebuild it and compare at another batch size.
    torch.manual_seed(0)
    model = spikformer.create_model("spikformer_cifar_4_256", embed_dim=16, depth=1, num_heads=2, img_size=16,
                                    T=2).eval()
    x = example_input(model, batch=5)
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(out, x), model(x), rtol=1e-4, atol=1e-5)


def test_an_event_model_exports_with_a_frame_input():
    model = tiny_model("spikformer_dvs_2_256", img_size=32)
    frames = example_input(model, batch=3)
    assert frames.shape == (3, 2, 2, 32, 32)  # [B, T, 2, H, W]
    with torch.no_grad():
        assert torch.equal(inference_model(model)(frames), model.fuse()(frames))


@pytest.mark.slow  # ONNX export takes a while; the image-input export above covers the exporter
def test_onnx_export_of_an_event_model_takes_frames(tmp_path):
    model = tiny_model("spikformer_dvs_2_256", img_size=32)
    path = export_onnx(model, tmp_path / "dvs.onnx")
    frames = example_input(model, batch=3)
    assert frames.shape == (3, 2, 2, 32, 32)  # [B, T, 2, H, W]
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(path, frames), model(frames), rtol=1e-4, atol=1e-5)


def test_nir_export_names_what_nir_cannot_express():
    with pytest.raises(ExportError) as error:
        export_nir(tiny_model())
    message = str(error.value)
    assert "blocks.0.attn" in message and "Q K^T V" in message
    assert "pool" not in message  # the stem's max-pools over spikes are written as window sums and a LIF
    assert "partial=True" in message


def test_nir_partial_export_round_trips_through_nir_write_and_read(tmp_path):
    model = tiny_model()
    graph = export_nir(model, tmp_path / "stem.nir", partial=True)
    assert graph.metadata["truncated_at"] == "blocks.0.attn"
    back = nir.read(str(tmp_path / "stem.nir"))
    assert set(back.nodes) == set(graph.nodes) and sorted(back.edges) == sorted(graph.edges)
    for name, node in graph.nodes.items():
        assert type(back.nodes[name]) is type(node)
        for key, value in node.to_dict().items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(back.nodes[name].to_dict()[key], value, err_msg=f"{name}.{key}")
    assert isinstance(graph.nodes["patch_embed.stages.0.lif"], nir.LIF)
    assert isinstance(graph.nodes["patch_embed.stages.0.conv"], nir.Conv2d)


def simulate_nir(graph, image: np.ndarray, steps: int, dt: float) -> list[np.ndarray]:
    """A minimal NIR interpreter (Conv2d, LIF; edges into a node add): the output at every step."""
    dt = float(dt)
    order, done = [], {"input"}
    while len(done) < len(graph.nodes):
        for name in graph.nodes:
            sources = [s for s, d in graph.edges if d == name]
            if name not in done and all(s in done for s in sources):
                order.append(name)
                done.add(name)
    state: dict[str, np.ndarray] = {}
    outputs = []
    for _ in range(steps):
        values = {"input": image}
        for name in order:
            node = graph.nodes[name]
            x = sum(values[s] for s, d in graph.edges if d == name)
            if isinstance(node, nir.Conv2d):
                y = F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(node.weight), torch.from_numpy(node.bias),
                             tuple(node.stride), tuple(node.padding), tuple(node.dilation), node.groups)[0].numpy()
            elif isinstance(node, nir.LIF):
                v = state.get(name, node.v_reset.copy())
                v = v + (dt / node.tau) * (node.v_leak - v + node.r * x)
                fired = v > node.v_threshold
                state[name] = np.where(fired, node.v_reset, v).astype(np.float32)
                y = fired.astype(np.float32)
            elif isinstance(node, nir.Output):
                outputs.append(x)
                y = x
            else:
                raise AssertionError(f"the test interpreter does not know {type(node).__name__}")
            values[name] = y
    return outputs


def test_nir_graph_computes_the_model_s_spikes():
    model = tiny_model()
    graph = export_nir(model, partial=True, dt=1e-3)
    image = example_input(model, batch=1)
    net = inference_model(model)
    with torch.no_grad():
        tokens = net.patch_embed(net.time_first(image))  # [T, 1, N, D], after both max-pools and the RPE
    expected = tokens[:, 0].transpose(1, 2).reshape(model.T, -1, 4, 4).numpy()  # the [D, H, W] token map
    got = simulate_nir(graph, image[0].numpy(), model.T, graph.metadata["dt"])
    assert len(got) == model.T and expected.sum() > 0
    for t in range(model.T):
        np.testing.assert_array_equal(got[t], expected[t])


def test_nir_exports_the_whole_v2_stem_when_it_downsamples_by_stride():
    model = tiny_model("spikformer_v2_8_384", img_size=32, patch_size=4, stem_options={"downsample": "stride"})
    graph = export_nir(model, partial=True, dt=1e-3)
    assert graph.metadata["truncated_at"] == "blocks.0.attn"  # no max-pool: every unit and the RPE are written
    units = len(model.patch_embed.stages)
    assert {f"patch_embed.stages.{i}.conv" for i in range(units)} | {"patch_embed.rpe.lif"} <= set(graph.nodes)
    image = example_input(model, batch=1)
    net = inference_model(model)
    with torch.no_grad():
        tokens = net.patch_embed(net.time_first(image))  # [T, 1, N, D], x + RPE(x)
    expected = tokens[:, 0].transpose(1, 2).reshape(model.T, -1, 8, 8).numpy()  # the [D, H, W] token map
    got = simulate_nir(graph, image[0].numpy(), model.T, graph.metadata["dt"])
    assert expected.sum() > 0
    for t in range(model.T):
        np.testing.assert_array_equal(got[t], expected[t])


def test_export_command_needs_a_known_format(tmp_path):
    assert main(["export", "--model", "spikformer_cifar_4_256", *TINY, "--out", str(tmp_path / "x.bin")]) == 2
    assert main(["export", "--model", "spikformer_cifar_4_256", *TINY, "--out", str(tmp_path / "x.nir")]) == 2
    assert main(["export", "--model", "spikformer_cifar_4_256", *TINY, "--partial",
                 "--out", str(tmp_path / "x.nir")]) == 0
