"""Evaluation: metrics, held-out evaluation, FPS and model size."""

from .evaluate import evaluate_expert, evaluate_renderer, model_size_mb, save_png, to_uint8
from .metrics import psnr, ssim

__all__ = ["evaluate_expert", "evaluate_renderer", "model_size_mb", "psnr", "save_png", "ssim", "to_uint8"]
