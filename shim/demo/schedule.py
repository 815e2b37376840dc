"""The rolling-upgrade schedule the demo replays: pure, so it is tested without processes.

A StatefulSet with RollingUpdate restarts one pod at a time, in a fixed order, waiting for
each to be Ready before the next. When the active node (the leader) goes down, another
node wins the election. The *worst case* election (the one an operator reported) always
hands leadership to a node that still runs the old image, preferring the one that will
restart next, so leadership changes as often as possible and lands on old images.

Events, each at a time offset in seconds from the start of the run:

* ``stop``     node N's pod is terminated (its Vault process and plugin die);
* ``leader``   node N becomes the active node (``node = -1``: no leader for now);
* ``init``     node N's init container runs on the new image (the baseline's
               re-registration hook; the run decides whether it writes the catalog);
* ``start``    node N is up again on the new image, as a standby;
* ``crash``    the active node's plugin process dies (to show what a relaunch meets);
* ``end``      the run is over.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

ELECTIONS = ("worst", "random")


@dataclass(frozen=True)
class Event:
    t: float
    kind: str
    node: int = -1


@dataclass(frozen=True)
class Settings:
    nodes: int = 3
    order: tuple[int, ...] | None = None      # restart order; default: highest ordinal first
    election: str = "worst"
    seed: int = 1
    lead_in: float = 1.5                      # steady state before the rollout starts
    restart: float = 2.0                      # pod terminated -> Ready again
    init_at: float = 0.8                      # init container runs this long after the stop
    election_delay: float = 0.3               # leader lost -> new leader
    settle: float = 1.0                       # Ready -> next pod is terminated
    tail: float = 2.0                         # steady state after the last pod is Ready
    crash_interval: float = 0.0               # mean seconds between plugin crashes; 0 = none

    def __post_init__(self):
        if not 2 <= self.nodes <= 9:
            raise ValueError("nodes must be between 2 and 9")
        if self.order is not None and sorted(self.order) != list(range(self.nodes)):
            raise ValueError(f"order must be a permutation of 0..{self.nodes - 1}")
        if self.election not in ELECTIONS:
            raise ValueError(f"election must be one of {', '.join(ELECTIONS)}")
        for name in ("lead_in", "restart", "election_delay", "settle", "tail"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 < self.init_at < self.restart:
            raise ValueError("init_at must fall inside the restart")
        if self.crash_interval < 0:
            raise ValueError("crash_interval must not be negative")

    @property
    def restart_order(self) -> tuple[int, ...]:
        return self.order if self.order is not None else tuple(reversed(range(self.nodes)))


@dataclass
class _State:
    up: set = field(default_factory=set)
    upgraded: set = field(default_factory=set)
    leader: int = -1


def _elect(s: Settings, st: _State, order: list[int], remaining: list[int], rng: random.Random) -> int:
    candidates = sorted(st.up)
    if not candidates:
        return -1
    if s.election == "random":
        return rng.choice(candidates)
    old = [n for n in candidates if n not in st.upgraded]
    if old:
        # the old-image node that restarts soonest: leadership must move again
        return min(old, key=lambda n: remaining.index(n) if n in remaining else len(remaining))
    return min(candidates, key=order.index)  # the longest-upgraded node


def build(s: Settings) -> list[Event]:
    rng = random.Random(s.seed)
    order = list(s.restart_order)
    st = _State(up=set(range(s.nodes)))
    st.leader = order[0]  # the leader is the first pod to restart: the reported worst case
    if s.election == "random":
        st.leader = rng.choice(sorted(st.up))
    events = [Event(0.0, "leader", st.leader)]
    t = s.lead_in
    for i, node in enumerate(order):
        remaining = order[i + 1:]
        events.append(Event(t, "stop", node))
        st.up.discard(node)
        if st.leader == node:
            events.append(Event(t, "leader", -1))
            st.leader = _elect(s, st, order, remaining, rng)
            events.append(Event(t + s.election_delay, "leader", st.leader))
        events.append(Event(t + s.init_at, "init", node))
        t += s.restart
        st.up.add(node)
        st.upgraded.add(node)
        events.append(Event(t, "start", node))
        if st.leader == -1:  # nobody was up to take over: the restarted node does
            st.leader = node
            events.append(Event(t + s.election_delay, "leader", node))
        t += s.settle if remaining else s.tail
    end = t
    if s.crash_interval > 0:
        c = rng.expovariate(1 / s.crash_interval)
        while c < end:
            events.append(Event(round(c, 3), "crash", -1))
            c += rng.expovariate(1 / s.crash_interval)
    events.append(Event(end, "end"))
    return sorted(events, key=lambda e: (e.t, _RANK[e.kind]))


_RANK = {"stop": 0, "leader": 1, "init": 2, "start": 3, "crash": 4, "end": 5}


def leader_at(events: list[Event], t: float) -> int:
    leader = -1
    for e in events:
        if e.t > t:
            break
        if e.kind == "leader":
            leader = e.node
    return leader


def describe(events: list[Event], names: list[str] | None = None) -> list[str]:
    """The schedule in words, one line per event (printed before a run)."""
    name = (lambda n: names[n]) if names else (lambda n: f"vault-{n}")
    text = {"stop": "{n} restarts (pod terminated)", "init": "{n}: init container on the new image",
            "start": "{n} is Ready on the new image (standby)", "crash": "the active node's plugin crashes",
            "end": "end of run"}
    out = []
    for e in events:
        if e.kind == "leader":
            out.append(f"{e.t:6.2f}s  " + (f"{name(e.node)} becomes leader" if e.node >= 0 else "no leader"))
        else:
            out.append(f"{e.t:6.2f}s  " + text[e.kind].format(n=name(e.node) if e.node >= 0 else ""))
    return out


# --- the plan the real cluster replays ----------------------------------------------------

@dataclass(frozen=True)
class Step:
    node: int                    # the pod restarted at this step
    leader_after: int | None     # who must lead if this node is active when it stops (None: any)


@dataclass(frozen=True)
class Plan:
    nodes: int
    initial: int                 # the active node when the rollout starts
    steps: tuple[Step, ...]
    election: str = "worst"
    seed: int = 1

    def describe(self, names: list[str] | None = None) -> list[str]:
        name = (lambda n: names[n]) if names else (lambda n: f"vault-{n}")
        out = [f"{name(self.initial)} is active; restart order "
               + ", ".join(name(s.node) for s in self.steps) + f" ({self.election} elections"
               + (f", seed {self.seed})" if self.election == "random" else ")")]
        leader = self.initial
        for s in self.steps:
            line = f"restart {name(s.node)} on the new image"
            if s.node == leader:
                leader = s.leader_after if s.leader_after is not None else -1
                line += f"; {name(leader)} takes over" if leader >= 0 else "; any node takes over"
            out.append(line)
        return out


@dataclass(frozen=True)
class Timing:
    """Pauses of the real replay (seconds); everything else is the cluster's own time."""
    lead_in: float = 2.0          # steady state before the first pod restarts
    settle: float = 1.0           # a restarted pod is Ready -> the next one is terminated
    tail: float = 2.0             # after the last pod is Ready

    def __post_init__(self):
        for name in ("lead_in", "settle", "tail"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


def plan(s: Settings) -> Plan:
    """The restarts and, for each, who leads next: the same choices :func:`build` makes for
    the model (worst case: an old-image node that restarts soonest; random: seeded)."""
    rng = random.Random(s.seed)
    order = list(s.restart_order)
    st = _State(up=set(range(s.nodes)))
    st.leader = order[0] if s.election == "worst" else rng.choice(sorted(st.up))
    initial = st.leader
    steps = []
    for i, node in enumerate(order):
        remaining = order[i + 1:]
        st.up.discard(node)
        wanted = None
        if st.leader == node:
            wanted = _elect(s, st, order, remaining, rng)
            st.leader = wanted
        steps.append(Step(node, wanted if wanted is not None and wanted >= 0 else None))
        st.up.add(node)
        st.upgraded.add(node)
    return Plan(s.nodes, initial, tuple(steps), s.election, s.seed)
