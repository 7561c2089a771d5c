"""Searchers over a finite list of points: Quantune (XGBoost-guided), exhaustive grid, random, genetic.

All share one interface: `ask(n, history)` returns up to n indices of points not yet tried, where
`history` maps tried indices to (loss, objective value). The driver evaluates them (in parallel or
not), records them, and asks again - so every searcher can resume from a journal.

Quantune (after Lee et al., 2022): fit the XGBoost cost model (cost_model.py) on the features of the
trials so far (and, down-weighted, trials of earlier runs: transfer), predict every untried point,
and take the n best by an optimistic score (mean - kappa * ensemble spread), with an epsilon share
of random picks. The first n_init trials, with nothing to fit, are the points whose cheap SQNR proxy
(features.py; computed once, no trial needed) is best - or random points when there is no proxy
(size / latency objectives) or when transferred trials already train the model.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from .cost_model import CostModel
from .objective import Goal

SEARCHERS = ("quantune", "grid", "random", "genetic")


class Searcher(ABC):
    """Proposes which points of the space to try next; subclasses implement ask()."""

    name = "base"

    def __init__(self, points: list[dict], seed: int = 0, goal: Goal | None = None):
        self.points = points
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.goal = goal or Goal()

    def untried(self, history: dict) -> list[int]:
        return [i for i in range(len(self.points)) if i not in history]

    @abstractmethod
    def ask(self, n: int, history: dict[int, tuple[float, float]]) -> list[int]:
        """Indices of up to n untried points; history maps tried indices to (loss, objective)."""

    def _random(self, n: int, history: dict, exclude=()) -> list[int]:
        pool = [i for i in self.untried(history) if i not in set(exclude)]
        if not pool:
            return []
        return [int(i) for i in self.rng.choice(pool, size=min(n, len(pool)), replace=False)]


class GridSearcher(Searcher):
    """Every point, in the space's enumeration order."""
    name = "grid"

    def ask(self, n, history):
        return self.untried(history)[:n]


class RandomSearcher(Searcher):
    name = "random"

    def ask(self, n, history):
        return self._random(n, history)


class GeneticSearcher(Searcher):
    """Steady-state genetic search: parents by tournament (size 3) among the tried points, uniform
    crossover of their dimensions, each dimension mutated with probability 1 / #dims; a child that
    was already tried (or is not in the space) is mutated again, then replaced by a random point.
    The first `population` trials are random."""
    name = "genetic"

    def __init__(self, points, seed=0, goal=None, population: int = 8):
        super().__init__(points, seed, goal)
        self.population = population
        self.dims = sorted({k for p in points for k in p})
        self.values = {d: sorted({json_key(p.get(d)) for p in points}) for d in self.dims}
        self.index = {point_key(p): i for i, p in enumerate(points)}

    def ask(self, n, history):
        if len(history) < self.population:
            return self._random(min(n, self.population - len(history)) or n, history)
        tried = list(history)
        out: list[int] = []
        for _ in range(n):
            a, b = self._tournament(tried, history), self._tournament(tried, history)
            child = {d: (self.points[a] if self.rng.random() < 0.5 else self.points[b]).get(d) for d in self.dims}
            idx = None
            for _ in range(20):
                child = self._mutate(child)
                i = self.index.get(point_key(child))
                if i is not None and i not in history and i not in out:
                    idx = i
                    break
            if idx is None:
                pick = self._random(1, history, exclude=out)
                if not pick:
                    break
                idx = pick[0]
            out.append(idx)
        return out

    def _tournament(self, tried, history):
        picks = self.rng.choice(tried, size=min(3, len(tried)), replace=False)
        return int(min(picks, key=lambda i: self.goal.rank_key(*history[int(i)])))

    def _mutate(self, child):
        child = dict(child)
        rate = 1.0 / max(len(self.dims), 1)
        for d in self.dims:
            if self.rng.random() < rate:
                choices = self.values[d]
                child[d] = from_json_key(choices[int(self.rng.integers(len(choices)))])
        return child


class QuantuneSearcher(Searcher):
    name = "quantune"

    def __init__(self, points, seed=0, goal=None, features: np.ndarray | None = None,
                 prior: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, kappa: float = 1.0,
                 epsilon: float = 0.05, n_init: int = 4, prior_weight: float = 0.5, proxy: np.ndarray | None = None):
        super().__init__(points, seed, goal)
        if features is None:
            raise ValueError("Quantune needs the points' features")
        self.X = np.asarray(features, np.float64)
        self.prior = prior            # (X, loss, value) of transferred trials
        self.kappa, self.epsilon, self.n_init, self.prior_weight = kappa, epsilon, n_init, prior_weight
        self.proxy = proxy            # higher is better (a combined SQNR proxy), for the first batch

    def ask(self, n, history):
        untried = self.untried(history)
        if not untried:
            return []
        have_prior = self.prior is not None and len(self.prior[0]) >= 4
        if len(history) < self.n_init and not have_prior:
            return self._initial(min(n, self.n_init - len(history)), history)
        idx = list(history)
        X = self.X[idx]
        loss = np.array([history[i][0] for i in idx], np.float64)
        value = np.array([history[i][1] for i in idx], np.float64)
        weight = np.ones(len(idx))
        if have_prior:
            X = np.vstack([X, self.prior[0]])
            loss = np.concatenate([loss, self.prior[1]])
            value = np.concatenate([value, self.prior[2]])
            weight = np.concatenate([weight, np.full(len(self.prior[0]), self.prior_weight)])
        fit_seed = self.seed * 7919 + len(history)
        cand = np.array(untried)
        loss_model = CostModel(seed=fit_seed).fit(X, loss, weight)
        l_mean, l_std = loss_model.predict(self.X[cand])
        if self.goal.constrained:
            ok = np.isfinite(value)
            value_model = CostModel(seed=fit_seed + 1).fit(X[ok], value[ok], weight[ok]) if ok.sum() >= 2 else None
            v_mean, v_std = value_model.predict(self.X[cand]) if value_model else (np.zeros(len(cand)),) * 2
            bound = loss_model.scale(self.goal.max_loss) if math.isfinite(self.goal.max_loss) else np.inf
            maybe = l_mean - self.kappa * l_std <= bound
            # feasible-looking points by optimistic objective; the rest after them, by predicted loss
            score = np.where(maybe, v_mean - self.kappa * v_std, 1e6 + l_mean)
        else:
            score = l_mean - self.kappa * l_std
        order = [int(cand[j]) for j in np.argsort(score, kind="stable")]
        out: list[int] = []
        for i in order:
            if len(out) >= n:
                break
            if self.rng.random() < self.epsilon:
                pick = self._random(1, history, exclude=out)
                if pick:
                    out.append(pick[0])
                    continue
            if i not in out:
                out.append(i)
        return out[:n]

    def _initial(self, n, history):
        if self.proxy is None:
            return self._random(n, history)
        return [int(i) for i in np.argsort(-self.proxy, kind="stable") if int(i) not in history][:n]


def make_searcher(name: str, points: list[dict], seed: int = 0, goal: Goal | None = None, **kw) -> Searcher:
    if name == "quantune":
        return QuantuneSearcher(points, seed, goal, **kw)
    cls = {"grid": GridSearcher, "random": RandomSearcher, "genetic": GeneticSearcher}.get(name)
    if cls is None:
        from qcc.errors import QccError

        raise QccError(f"unknown searcher {name!r}; choose from {', '.join(SEARCHERS)}")
    return cls(points, seed, goal)


def point_key(point: dict) -> str:
    import json

    return json.dumps(point, sort_keys=True)


def json_key(value) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def from_json_key(key: str):
    import json

    return json.loads(key)
