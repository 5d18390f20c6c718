"""Frozen timm backbones: weights, preprocessing, augmented views, LoRA adapters, the ONNX Runtime
export, and image features from a recorded spec.
"""
