"""What the concurrency autoscaler remembers between two rounds: its window state.

The autoscaler is a pure function `(state, samples, spec, now) -> decision`; this module is the
state. `WindowState` is an immutable value: every method returns a new one, so a caller folds
rounds (`state = decide(state, ...).state`) and a test can replay any sequence of rounds. Time
is whatever monotonic float the caller passes as `now` (seconds); nothing here reads a clock.

It remembers four things:

- `observations`: the total in-flight requests measured at each round, for the stable and panic
  averages. An average is the plain mean of the observations inside the window (those taken
  strictly after `now - window`), which assumes rounds come at a steady cadence, as the
  operator's scrape loop does. A round that measured nothing adds nothing, so a scrape outage
  shortens the evidence instead of inventing any.
- `wanted`: the replica count each round asked for, kept as a monotonic max-queue: an entry is
  dropped as soon as a later one asks for at least as many, because no window that holds the
  older one can miss the later one. The maximum over the scale-down delay is then the first
  live entry, and the queue holds at most one entry per distinct count however long the delay
  (86400 s allowed) is. Entries older than the delay fall off the front.
- `wanted_since`: when the unbroken run of rounds in `wanted` began. Scale-down needs lower
  demand for the whole delay, so evidence younger than the delay (a restarted operator, or a
  round that measured nothing, which restarts the run) cannot justify one.
- `panic_until`: panic mode lasts a stable window past the last round that saw a burst; while it
  lasts the replica count may not go down (Knative's KPA does the same, to avoid churn right
  after a burst while the stable average still lags behind).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple


class Observation(NamedTuple):
    """Total in-flight requests over the measured pods at one round."""

    at: float
    in_flight: float


class WantedReplicas(NamedTuple):
    """The replica count one round asked for, before any scale-down rule held it back."""

    at: float
    replicas: int


@dataclass(frozen=True, slots=True)
class WindowState:
    """Immutable window state; the empty state is a fresh autoscaler (no history, no panic)."""

    observations: tuple[Observation, ...] = ()
    wanted: tuple[WantedReplicas, ...] = ()
    wanted_since: float | None = None
    panic_until: float | None = None

    def observe(self, now: float, in_flight: float, *, keep_seconds: float) -> WindowState:
        """Adds this round's measured total and forgets observations older than `keep_seconds`."""
        horizon = now - keep_seconds
        kept = tuple(o for o in self.observations if o.at > horizon)
        return replace(self, observations=(*kept, Observation(now, in_flight)))

    def average(self, now: float, window_seconds: float) -> float | None:
        """Mean in-flight over the observations taken after `now - window_seconds`; None if none."""
        horizon = now - window_seconds
        values = [o.in_flight for o in self.observations if o.at > horizon]
        if not values:
            return None
        return sum(values) / len(values)

    def want(self, now: float, replicas: int, *, delay_seconds: float) -> WindowState:
        """Records this round's wanted count in the max-queue and drops entries past the delay."""
        horizon = now - delay_seconds
        kept = [w for w in self.wanted if w.at >= horizon]
        while kept and kept[-1].replicas <= replicas:
            kept.pop()
        kept.append(WantedReplicas(now, replicas))
        since = now if self.wanted_since is None else self.wanted_since
        return replace(self, wanted=tuple(kept), wanted_since=since)

    def forget_wanted(self) -> WindowState:
        """Breaks the run of wanted counts: scale-down must wait a whole delay again."""
        return replace(self, wanted=(), wanted_since=None)

    def max_wanted(self, now: float, delay_seconds: float) -> int | None:
        """The largest count wanted within `[now - delay, now]`; None when nothing is recorded."""
        horizon = now - delay_seconds
        for entry in self.wanted:  # the queue is decreasing: the first live entry is the max
            if entry.at >= horizon:
                return entry.replicas
        return None

    def lower_for(self, now: float, replicas: int) -> float:
        """Seconds for which every recorded round wanted fewer than `replicas` (0 if none did).

        The last queue entry asking for `replicas` or more is the last round that did so: a
        later round asking for as many would have evicted it. Before `wanted_since` nothing is
        known, so the run can be no longer than the recorded history.
        """
        if self.wanted_since is None:
            return 0.0
        start = self.wanted_since
        for entry in self.wanted:
            if entry.replicas >= replicas:
                start = max(start, entry.at)
            else:
                break
        return now - start

    def with_panic_until(self, panic_until: float | None) -> WindowState:
        return replace(self, panic_until=panic_until)
