"""The count baseline every EHR report shows beside the trajectory risk.

Logistic regression (scikit-learn, L2) on the counts of each token of the timeline up to the
prediction time (the whole history, not the prompt cut to the model's context) plus the age at
prediction in years. The inverse regularisation C is chosen by cross-validation over the TRAIN
split's patients only (StratifiedGroupKFold: all of a patient's labels in one fold, AUROC as the score),
then refitted on all train labels. A trajectory model that cannot beat this has not learnt more
than which codes a patient has had.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from gptlab.ehr.meds import Timeline
from gptlab.ehr.tokenizer import EHRTokenizer

CS = (0.001, 0.01, 0.1, 1.0, 10.0)  # candidate C values (inverse L2 strength)


def count_features(tok: EHRTokenizer, tl: Timeline, prediction_time: np.datetime64) -> np.ndarray:
    """Token counts of the timeline up to prediction_time (inclusive), then the age at it (years;
    NaN without a birth date, imputed by the train median)."""
    ids = tok.encode_timeline(tl, until=prediction_time)
    counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=tok.vocab_size).astype(np.float64)
    age = np.nan if tl.birth is None else float((prediction_time - tl.birth) / np.timedelta64(1, "D")) / 365.25
    return np.r_[counts, age]


def feature_matrix(tok: EHRTokenizer, timelines: dict[int, Timeline], sids: np.ndarray,
                   times: np.ndarray) -> np.ndarray:
    """count_features of every (subject, time), each timeline encoded once: the prompt up to t is
    the tokens known at or before t, less the interval tokens (and <TL_END>) that follow the last
    event ≤ t, which would tell how long until the next event."""
    out = np.zeros((len(sids), tok.vocab_size + 1))
    is_gap = (tok.token_minutes > 0) | (np.arange(tok.vocab_size) == tok.eot_token_id)
    cache: dict[int, tuple] = {}
    for k, (s, t) in enumerate(zip(sids, times)):
        tl = timelines[int(s)]
        if int(s) not in cache:
            ids, tt, plen = tok.encode_with_times(tl)
            cache = {int(s): (np.asarray(ids), tt, plen)}  # labels come grouped by subject: keep one
        ids, tt, plen = cache[int(s)]
        n = max(plen, int(np.searchsorted(tt[plen:], t, side="right")) + plen)
        while n > plen and is_gap[ids[n - 1]]:
            n -= 1
        counts = np.bincount(ids[:n], minlength=tok.vocab_size)
        age = np.nan if tl.birth is None else float((t - tl.birth) / np.timedelta64(1, "D")) / 365.25
        out[k, :-1], out[k, -1] = counts, age
    return out


@dataclass
class CountBaseline:
    """A fitted scaler + logistic regression and the C cross-validation chose."""

    model: object
    age_fill: float
    C: float
    n_train: int
    n_train_patients: int

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = X.copy()
        X[np.isnan(X[:, -1]), -1] = self.age_fill
        return self.model.predict_proba(X)[:, 1]


def fit_count_baseline(X: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 5,
                       seed: int = 0) -> CountBaseline:
    """LogisticRegressionCV (L2, C from CS by AUROC over StratifiedGroupKFold folds of patients) on
    standardised counts + age; raises with what is missing when train holds too little. Stratified,
    so that each fold holds positives (an AUROC needs both classes) even when they are few (the
    MIMIC demo's mortality tasks); with fewer positive patients than `folds`, one fold each."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(y, dtype=bool)
    n_patients = len(np.unique(groups))
    positive_patients = len(np.unique(groups[y]))
    folds = min(folds, positive_patients)
    if y.all() or folds < 2 or n_patients < folds:
        raise ValueError(f"count baseline: the train split's labels need both classes, in ≥ 2 patients each "
                         f"(got {int(y.sum())} positive of {len(y)}, {positive_patients} positive patients, "
                         f"{n_patients} patients)")
    X = X.copy()
    ages = X[:, -1]
    fill = float(np.nanmedian(ages)) if np.isfinite(ages).any() else 0.0
    X[np.isnan(ages), -1] = fill
    cv = list(StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(X, y, groups))
    # scikit-learn ≥ 1.8 names the L2 penalty as l1_ratios=(0,) and simplifies its fitted attributes
    # (C_ a float) when asked; older versions (the pin is ≥ 1.3) know neither argument
    current = "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters
    lr = LogisticRegressionCV(Cs=list(CS), cv=cv, scoring="roc_auc", max_iter=2000, random_state=seed,
                              **({"l1_ratios": (0.0,), "use_legacy_attributes": False} if current else {}))
    model = make_pipeline(StandardScaler(), lr).fit(X, y)
    return CountBaseline(model, fill, float(np.ravel(lr.C_)[0]), len(y), n_patients)
