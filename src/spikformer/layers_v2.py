"""Spikformer V2's Spiking Convolutional Stem now lives in ``spikformer.layers`` beside V1's SPS, which is
the same module with one unit per stage; these names stay importable from here."""

from .layers import DOWNSAMPLE_MODES, SCSOptions, SpikingConvolutionalStem, build_scs

__all__ = ["DOWNSAMPLE_MODES", "SCSOptions", "SpikingConvolutionalStem", "build_scs"]
