"""Mixture of Gaussian-splatting experts (MoE-GS): Gaussian-level gates, volume-aware pixel routing.

- :mod:`.gates`: per-Gaussian gates (linear-in-time logit, a small network, or the published three channels).
- :mod:`.router`: the router variants behind one interface, the 1x1-conv pixel decoder, the softmax.
- :mod:`.mixture`: :class:`Mixture`, rendering ``I(p) = sum_k w_k(p) I_k(p)``.
- :mod:`.config`: :class:`MoEConfig`; :mod:`.build`: a fresh mixture over trained experts;
  :mod:`.trainer`: stages 2/3; :mod:`.checkpoint`: :func:`save_mixture` / :func:`load_mixture`;
  :mod:`.evaluate`: :func:`evaluate_mixture`, :func:`oracle_headroom`, :func:`region_psnr`; :mod:`.run`: :func:`train_mixture` end to end.
- :mod:`.prune`, :mod:`.distill`, :mod:`.viz`, :mod:`.ablation`: efficiency, figures and the ablation table.
"""

from .gates import Gate, LinearGate, MLPGate, PublishedGate, build_gate
from .mixture import Mixture, MixtureOutput
from .router import ROUTERS, Router, RouterInputs, prior_logits
from .build import build_mixture, expert_meta
from .checkpoint import FORMAT, load_mixture, save_mixture
from .config import MoEConfig, published_config
from .evaluate import evaluate_mixture, oracle_headroom, region_psnr
from .run import train_mixture
from .trainer import MixtureTrainer

__all__ = ["FORMAT", "Gate", "LinearGate", "MLPGate", "PublishedGate", "build_gate", "Mixture", "MixtureOutput", "ROUTERS", "Router",
           "RouterInputs", "prior_logits", "MixtureTrainer", "MoEConfig", "build_mixture", "evaluate_mixture",
           "expert_meta", "load_mixture", "oracle_headroom", "published_config", "region_psnr", "save_mixture", "train_mixture"]
