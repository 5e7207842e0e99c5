"""Initialising reference (transformers) models for parity tests."""
import torch


def widen_weights(model, norm_marker: str, norm_spread: float, matrix_std: float, other_std: float = 0.1):
    """Replace the default init (std 0.02, unit norms): it gives near-uniform attention and tiny
    outputs, which would hide masking or rotary bugs. Larger weights make every token matter."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if norm_marker in name:
                param.copy_(1 + norm_spread * torch.randn_like(param))
            else:
                param.normal_(0.0, matrix_std if param.ndim == 2 else other_std)
    return model
