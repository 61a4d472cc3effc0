"""Load traces for the autoscaler simulation: demand, in in-flight requests, at each second.

Demand is concurrency (requests inside the servers, queued ones included), the quantity the
autoscaler measures, so a trace feeds the simulated pods' gauges directly. The shapes are the
ones issue 4 names; levels assume the benchmark's target of 8 in-flight per replica and
maxReplicas 20 (160 in-flight), so every trace fits under the maximum and the ideal count is
always reachable. Every trace is a plain tuple built deterministically (the noisy one from a
seed), so simulations and the docs table reproduce exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Trace:
    """A named demand curve: `demand[t]` in-flight requests during second t."""

    name: str
    description: str
    demand: tuple[float, ...]

    @property
    def seconds(self) -> int:
        return len(self.demand)


def step_trace(*, low: float = 16.0, high: float = 80.0, seconds: int = 1800) -> Trace:
    """A step up at 5 min, a step back down at 20 min."""
    demand = tuple(high if 300 <= t < 1200 else low for t in range(seconds))
    return Trace("step", f"{low:g} -> {high:g} at 300 s, back to {low:g} at 1200 s", demand)


def ramp_trace(*, low: float = 8.0, high: float = 120.0, seconds: int = 1800) -> Trace:
    """Linear climb over 10 min, a 3 min plateau, linear descent over 10 min."""

    def at(t: int) -> float:
        if t < 120:
            return low
        if t < 720:
            return low + (high - low) * (t - 120) / 600
        if t < 900:
            return high
        if t < 1500:
            return high - (high - low) * (t - 900) / 600
        return low

    return Trace(
        "ramp",
        f"{low:g} -> {high:g} over 600 s, plateau 180 s, back over 600 s",
        tuple(at(t) for t in range(seconds)),
    )


def spike_trace(*, base: float = 10.0, factor: float = 10.0, seconds: int = 1800) -> Trace:
    """A sudden 10x burst lasting 2 min, 10 min in."""
    demand = tuple(base * factor if 600 <= t < 720 else base for t in range(seconds))
    return Trace("spike", f"{base:g} -> {base * factor:g} ({factor:g}x) for 120 s at 600 s", demand)


def diurnal_trace(*, low: float = 10.0, high: float = 90.0, seconds: int = 3600) -> Trace:
    """One day's cycle compressed into an hour: a raised cosine from low to high and back."""
    middle, swing = (high + low) / 2, (high - low) / 2
    demand = tuple(middle - swing * math.cos(2 * math.pi * t / seconds) for t in range(seconds))
    return Trace("diurnal", f"{low:g} -> {high:g} -> {low:g}, one cosine period of {seconds} s", demand)


def noisy_constant_trace(
    *, level: float = 40.0, noise: float = 0.2, seconds: int = 1800, seed: int = 4
) -> Trace:
    """A constant level with independent uniform noise of +-`noise` each second.

    The default level sits exactly on a replica boundary (40 / 8 = 5), the worst case for
    flapping: the stable average crosses it back and forth all the time.
    """
    rng = random.Random(seed)
    demand = tuple(level * (1 + rng.uniform(-noise, noise)) for _ in range(seconds))
    return Trace("noisy", f"{level:g} +-{noise:.0%} uniform noise each second (seed {seed})", demand)


def standard_traces() -> tuple[Trace, ...]:
    """The benchmark's traces, in table order."""
    return (step_trace(), ramp_trace(), spike_trace(), diurnal_trace(), noisy_constant_trace())
