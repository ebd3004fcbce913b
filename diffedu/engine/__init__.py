"""How do we train? Device and seeds, EMA, checkpoints and the training loop (monograph §2.2, §6.1)."""
from diffedu.engine.loop import EMA, FitResult, fit, load_checkpoint, make_generator, resolve_device, save_checkpoint

__all__ = ["EMA", "FitResult", "fit", "load_checkpoint", "make_generator", "resolve_device", "save_checkpoint"]
