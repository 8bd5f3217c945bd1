"""Critic-free policies for :class:`HAEPO`: features, a policy MLP and an action head only."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import (
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    make_proba_distribution,
)
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    FlattenExtractor,
    NatureCNN,
    create_mlp,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

__all__ = ["CnnPolicy", "HAEPOPolicy", "MlpPolicy"]


class HAEPOPolicy(BasePolicy):
    """A stochastic policy without a value head: features -> MLP -> action distribution.

    HAEPO has no critic, so unlike SB3's ``ActorCriticPolicy`` there is no ``vf`` network and
    ``net_arch`` is one list of layer sizes (``dict(pi=[...])`` is accepted too; a ``vf`` entry
    is an error). The action distribution is SB3's for the action space (categorical,
    diagonal Gaussian with a state-independent ``log_std``, multi-categorical, Bernoulli).

    Args:
      observation_space, action_space: the env's spaces.
      lr_schedule: the learning-rate schedule (sets the optimizer's initial rate).
      net_arch: hidden layer sizes; default ``[64, 64]`` (``[]`` after a CNN extractor).
      activation_fn: activation after each hidden layer (default ``nn.Tanh``).
      ortho_init: orthogonal initialization (gain sqrt(2), 0.01 for the action layer).
      log_std_init: initial log standard deviation of a Gaussian policy.
      features_extractor_class, features_extractor_kwargs, normalize_images, optimizer_class,
        optimizer_kwargs: as in SB3's policies.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        log_std_init: float = 0.0,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class,
            features_extractor_kwargs,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            normalize_images=normalize_images,
            squash_output=False,
        )
        if isinstance(net_arch, dict):
            extra = sorted(set(net_arch) - {"pi"})
            if extra:
                raise ValueError(
                    f"net_arch: HAEPO has no value function, expected a list of layer sizes or "
                    f"dict(pi=[...]), got keys {extra}"
                )
            net_arch = list(net_arch.get("pi", []))
        if net_arch is None:
            net_arch = [] if issubclass(features_extractor_class, NatureCNN) else [64, 64]
        if not all(isinstance(n, (int, np.integer)) and n > 0 for n in net_arch):
            raise ValueError(f"net_arch: expected positive layer sizes, got {net_arch!r}")
        self.net_arch = [int(n) for n in net_arch]
        self.activation_fn = activation_fn
        self.ortho_init = ortho_init
        self.log_std_init = float(log_std_init)
        self.features_extractor = self.make_features_extractor()
        self.features_dim = self.features_extractor.features_dim
        self.latent_pi = nn.Sequential(
            *create_mlp(self.features_dim, -1, self.net_arch, activation_fn)
        )
        latent_dim = self.net_arch[-1] if self.net_arch else self.features_dim
        self.action_dist = make_proba_distribution(action_space)
        if isinstance(self.action_dist, DiagGaussianDistribution):
            self.action_net, self.log_std = self.action_dist.proba_distribution_net(
                latent_dim=latent_dim, log_std_init=self.log_std_init
            )
        else:
            self.action_net = self.action_dist.proba_distribution_net(latent_dim=latent_dim)
        if ortho_init:
            gains = {self.features_extractor: np.sqrt(2), self.latent_pi: np.sqrt(2)}
            gains[self.action_net] = 0.01
            for module, gain in gains.items():
                module.apply(partial(self.init_weights, gain=gain))
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            net_arch=self.net_arch,
            activation_fn=self.activation_fn,
            ortho_init=self.ortho_init,
            log_std_init=self.log_std_init,
            lr_schedule=_constant_schedule,  # not needed to load the policy alone
            features_extractor_class=self.features_extractor_class,
            features_extractor_kwargs=self.features_extractor_kwargs,
            normalize_images=self.normalize_images,
            optimizer_class=self.optimizer_class,
            optimizer_kwargs=self.optimizer_kwargs,
        )
        return data

    def action_params(self, obs: PyTorchObs) -> th.Tensor:
        """The action head's output: logits (discrete kinds) or the Gaussian mean."""
        return self.action_net(self.latent_pi(self.extract_features(obs, self.features_extractor)))

    def distribution_from_params(self, params: th.Tensor) -> Distribution:
        """SB3's distribution object for the action head's output ``params``."""
        if isinstance(self.action_dist, DiagGaussianDistribution):
            return self.action_dist.proba_distribution(params, self.log_std)
        return self.action_dist.proba_distribution(action_logits=params)

    def get_distribution(self, obs: PyTorchObs) -> Distribution:
        """The action distribution at ``obs`` (the plain policy, never the sticky one)."""
        return self.distribution_from_params(self.action_params(obs))

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self._predict(obs, deterministic)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self.get_distribution(observation).get_actions(deterministic=deterministic)

    @property
    def is_categorical(self) -> bool:
        """Whether the action space is ``Discrete`` (the one that supports sticky exploration)."""
        return isinstance(self.action_dist, CategoricalDistribution)


def _constant_schedule(progress_remaining: float) -> float:
    del progress_remaining
    return 0.0


class CnnPolicy(HAEPOPolicy):
    """:class:`HAEPOPolicy` with SB3's ``NatureCNN`` features (image observations)."""

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        log_std_init: float = 0.0,
        features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            ortho_init,
            log_std_init,
            features_extractor_class,
            features_extractor_kwargs,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
        )


MlpPolicy = HAEPOPolicy
