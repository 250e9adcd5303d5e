import torch

import spikformer


def test_tiny_model_forward_and_backward():
    model = spikformer.create_model("spikformer_cifar_4_256", embed_dim=32, depth=1, num_heads=2)
    logits = model(torch.randn(2, 3, 32, 32))
    logits.sum().backward()
    assert logits.shape == (2, 10)
