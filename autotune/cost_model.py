"""XGBoost cost model: predicts a trial's loss (and objective) from config features, with an uncertainty.

An ensemble of gradient-boosted tree regressors, each fitted on a bootstrap resample of the trials
so far (plus, down-weighted, trials transferred from journals of earlier runs). The spread of their
predictions is the exploration signal:  mean_k f_k(x) - kappa * std_k f_k(x)  is an optimistic
(lower-confidence-bound) estimate of a value to minimize.

Targets are passed through a signed log,  t(y) = sign(y) log(1 + |y| / s)  with s the median |y|, so a
few catastrophic configs (loss 80 points) don't drown the differences between good ones; t is
monotone, so ranking by t ranks by y.
"""

from __future__ import annotations

import numpy as np

ENSEMBLE = 5


class TargetScale:
    def __init__(self, y: np.ndarray):
        finite = np.abs(y[np.isfinite(y)])
        self.s = float(np.median(finite)) if finite.size and np.median(finite) > 0 else 1.0

    def __call__(self, y) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        return np.sign(y) * np.log1p(np.abs(y) / self.s)


class CostModel:
    def __init__(self, seed: int = 0, ensemble: int = ENSEMBLE, n_estimators: int = 60, max_depth: int = 4):
        self.seed, self.ensemble = seed, ensemble
        self.params = dict(n_estimators=n_estimators, max_depth=max_depth, learning_rate=0.15, subsample=0.9,
                           colsample_bytree=0.8, min_child_weight=1.0, n_jobs=1, tree_method="hist")
        self.models: list = []
        self.scale: TargetScale | None = None
        self.mean_y = 0.0

    def fit(self, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> CostModel:
        import xgboost as xgb

        X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
        worst = np.nanmax(y[np.isfinite(y)]) if np.isfinite(y).any() else 1.0
        y = np.where(np.isfinite(y), y, 2 * abs(worst) + 1)  # failed trials: worse than anything seen
        self.scale = TargetScale(y)
        t = self.scale(y)
        self.mean_y = float(t.mean())
        w = np.ones(len(y)) if weight is None else np.asarray(weight, np.float64)
        rng = np.random.default_rng(self.seed)
        self.models = []
        for k in range(self.ensemble):
            idx = rng.integers(0, len(y), len(y)) if self.ensemble > 1 else np.arange(len(y))
            model = xgb.XGBRegressor(random_state=self.seed * 101 + k, **self.params)
            model.fit(X[idx], t[idx], sample_weight=w[idx])
            self.models.append(model)
        return self

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation over the ensemble, in the transformed target space."""
        preds = np.stack([m.predict(np.asarray(X, np.float64)) for m in self.models])
        return preds.mean(axis=0), preds.std(axis=0)
