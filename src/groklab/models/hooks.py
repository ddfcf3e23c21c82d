"""Hook points: named identity modules where activations can be read or edited.

Names follow TransformerLens (``blocks.0.mlp.hook_post``), so analysis code reads like the
literature. ``run_with_cache`` records the output of every hook point by its module path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn


class HookPoint(nn.Module):
    """Identity module; a forward hook registered on it sees (and may replace) the activation."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class HookedModule(nn.Module):
    """Mixin giving ``hook_dict``, ``hooks(...)`` and ``run_with_cache``."""

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        """Every hook point by its TransformerLens name."""
        return {name: m for name, m in self.named_modules() if isinstance(m, HookPoint)}

    @contextmanager
    def hooks(self, fwd_hooks: list[tuple[str, Callable[[Tensor, str], Tensor | None]]]) -> Iterator[None]:
        """Temporarily attach ``fn(activation, name)`` hooks; a hook's non-None return replaces
        the activation.

        Raises:
            KeyError: a name that is not a hook point (the message lists them).
        """
        points = self.hook_dict
        handles = []
        try:
            for name, fn in fwd_hooks:
                if name not in points:
                    raise KeyError(f"no hook point {name!r}; hook points: {', '.join(points)}")
                handles.append(points[name].register_forward_hook(
                    lambda _m, _i, out, fn=fn, name=name: fn(out, name)))
            yield
        finally:
            for h in handles:
                h.remove()

    def run_with_cache(
        self, *args, names: list[str] | None = None, **kwargs
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Run the model and return ``(output, cache)``, where ``cache[name]`` is the activation
        at each hook point (all of them, or only ``names``), detached."""
        cache: dict[str, Tensor] = {}

        def save(x: Tensor, name: str) -> None:
            cache[name] = x.detach()

        wanted = names if names is not None else list(self.hook_dict)
        with self.hooks([(n, save) for n in wanted]):
            out = self(*args, **kwargs)
        return out, cache
