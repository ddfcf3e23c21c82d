"""Logits at the '=' position over the whole p^2 grid, computed from a state dict.

The progress measures need the logits of every checkpoint over all p^2 pairs. For the paper's
architecture (one block, no LayerNorm, with an MLP) ``GridEvaluator`` runs the trainer's exact
last-position forward (``groklab.train.step.fast_last_logits``: per-token tables for the first
layer, the last position only), with the token plan built once per run. Other architectures fall
back to ``HookedTransformer.forward``. Both give the model's logits up to float32 rounding
(tested).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..config import Config
from ..models.onelayer import fast_last_logits
from ..models.tables import plan_tokens
from ..models.transformer import HookedTransformer


def fast_path_ok(cfg: Config) -> bool:
    """Whether ``grid_logits`` can use the factorised forward for this architecture."""
    m = cfg.model
    return m.n_layers == 1 and not m.use_ln and not m.attn_only and m.n_ctx == 3


def _fast(sd: dict[str, Tensor], cfg: Config, tokens: Tensor, plan) -> Float[Tensor, "pairs p"]:
    """The trainer's exact last-position forward (``groklab.train.step.fast_last_logits``) run
    without a graph on one model (ensemble axis of 1)."""
    params = {k: v.float().unsqueeze(0) for k, v in sd.items()}
    return fast_last_logits(cfg, params, tokens.unsqueeze(0), plan)[0, :, :cfg.task.p]


class GridEvaluator:
    """Evaluates checkpoints of one run over its p^2 grid, reusing buffers and one model.

    Args:
        cfg: the run's resolved config.
        tokens: ``[p*p, 3]`` grid from ``make_data``; used only by the fallback path.
        chunk: rows per forward pass on the fallback path.
    """

    def __init__(self, cfg: Config, tokens: Tensor, chunk: int = 4096):
        self.cfg, self.tokens, self.chunk = cfg, tokens, chunk
        self.fast = fast_path_ok(cfg)
        self._plan = plan_tokens(tokens.unsqueeze(0), cfg.model.n_heads) if self.fast else None
        self._model: HookedTransformer | None = None

    @torch.no_grad()
    def logits(self, state: dict[str, Tensor]) -> Float[Tensor, "pairs p"]:
        """Logits at the '=' position for every pair, '=' class dropped: ``[p*p, p]`` float32.

        Raises:
            KeyError / RuntimeError: the state dict does not match the config.
        """
        p = self.cfg.task.p
        if self.fast:
            return _fast(state, self.cfg, self.tokens, self._plan)
        if self._model is None:
            self._model = HookedTransformer(self.cfg).eval()
        self._model.load_state_dict(state)
        outs = [self._model(self.tokens[i:i + self.chunk])[:, -1, :p]
                for i in range(0, len(self.tokens), self.chunk)]
        return torch.cat(outs).float()
