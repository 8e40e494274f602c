#!/usr/bin/env python3
"""Make tests/fixtures/gmm/sklearn_gmm.json, the reference for src/ops/gmm.rs.

Run once, from the repository root, in a venv that has scikit-learn:

    python3 -m venv /tmp/venv-sk
    /tmp/venv-sk/bin/pip install scikit-learn==1.9.1 numpy==2.4.6 scipy==1.17.1
    /tmp/venv-sk/bin/python tools/make_gmm_fixture.py

It was run with Python 3.11.7, numpy 2.4.6, scipy 1.17.1 and scikit-learn 1.9.1
(OpenBLAS 0.3.31, x86-64 with AVX-512); the versions are also written into the
fixture's "versions" entry. The output is deterministic (fixed seed). As a
cross-check, scikit-learn 1.3.2 (numpy 1.26.4, scipy 1.11.4) gives the same
n_iter_, converged_, predict() and float32 error on every case, and parameters
and scores within 7e-10 relative.

Every case makes the call mmdetection's PAAHead makes in `paa_reassign`: the
candidate costs sorted ascending, shaped (n, 1), and

    GaussianMixture(2, weights_init=[0.5, 0.5], means_init=[[min], [max]],
                    precisions_init=[[1.0], [1.0]], covariance_type='diag')

followed by fit(x), predict(x) and score_samples(x) on the same array (we also
record predict_proba and the fitted attributes).  PAAHead hands sklearn a
float32 array (the losses come from a float32 tensor), so its means_init is
float32 too (built from that array's min/max); each case is therefore run
twice, once with float32 data exactly as PAAHead does ("dtype": "f32") and
once with float64 data ("dtype": "f64").  A few cases override max_iter/tol
to exercise the non-converged path.  Where sklearn raises, the entry records
the error instead of a result.

Cases (values look like PAA candidate costs: focal loss + 1.3 * GIoU loss,
positive, 2 to 45 of them = up to topk 9 x 5 FPN levels):
  bimodal_18        9 low-cost + 9 high-cost candidates, well separated
  bimodal_45        45 candidates (full 9 x 5), 12 good + 33 poor, overlapping
  bimodal_close     two modes only ~2 sd apart
  unimodal_20       one Gaussian blob of 20 costs
  unimodal_tight_9  9 costs within 0.01 of each other
  skewed_30         exponential-looking costs (long right tail)
  ties_9            repeated values (ties in the sorted input)
  three_values      3 candidates
  two_values        2 distinct candidates (the smallest case PAAHead fits)
  two_equal         2 identical candidates
  all_equal_7       7 identical costs (both components identical throughout)
  all_equal_5p76    5 identical costs of 5.76; with float32 data x*x is
                    rounded to float32 (1.8e-6 below the exact square), the
                    variance comes out <= 0 despite reg_covar = 1e-6, and
                    sklearn raises ValueError ("ill-defined empirical
                    covariance"); with float64 data it fits
  far_outlier_13    12 similar costs and one far outlier (component 1
                    collapses onto the outlier: variance = reg_covar level)
  bimodal_max_iter_2  bimodal_45 with max_iter=2 (stops unconverged, warns)
  unimodal_tol_0    unimodal_20 with tol=0 and max_iter=7 (never converges)
"""

import json
import platform
import sys
import warnings
from pathlib import Path

import numpy as np
import scipy
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

OUT = Path(__file__).resolve().parent.parent / "tests/fixtures/gmm/sklearn_gmm.json"


def make_cases():
    rng = np.random.default_rng(20200823)  # ECCV 2020; any fixed seed
    c = {}
    c["bimodal_18"] = np.concatenate(
        [rng.normal(0.45, 0.08, 9), rng.normal(1.7, 0.2, 9)]
    )
    c["bimodal_45"] = np.concatenate(
        [rng.normal(0.6, 0.15, 12), rng.normal(1.5, 0.35, 33)]
    )
    c["bimodal_close"] = np.concatenate(
        [rng.normal(0.9, 0.1, 10), rng.normal(1.15, 0.1, 10)]
    )
    c["unimodal_20"] = rng.normal(1.1, 0.2, 20)
    c["unimodal_tight_9"] = 0.73 + rng.uniform(0.0, 0.01, 9)
    c["skewed_30"] = 0.15 + rng.exponential(0.5, 30)
    c["ties_9"] = np.array([0.5, 0.5, 0.5, 0.7, 0.7, 1.2, 1.2, 1.2, 1.9])
    c["three_values"] = np.array([0.42, 0.55, 1.37])
    c["two_values"] = np.array([0.31, 1.74])
    c["two_equal"] = np.array([0.8, 0.8])
    c["all_equal_7"] = np.full(7, 1.1)
    c["all_equal_5p76"] = np.full(5, 5.76)
    c["far_outlier_13"] = np.concatenate([rng.normal(0.6, 0.05, 12), [9.5]])
    return c


OVERRIDES = {
    "bimodal_max_iter_2": ("bimodal_45", {"max_iter": 2}),
    "unimodal_tol_0": ("unimodal_20", {"tol": 0.0, "max_iter": 7}),
}


def f(v):
    """Plain Python floats (exact for float32 and float64)."""
    return [float(t) for t in np.asarray(v, dtype=np.float64).ravel()]


def run(values, dtype, opts):
    # As PAAHead: sort ascending, shape (n, 1), init from the array itself.
    x = np.sort(np.asarray(values, dtype=dtype)).reshape(-1, 1)
    means_init = np.array([x.min(), x.max()]).reshape(2, 1)  # dtype of x
    weights_init = np.array([0.5, 0.5])
    precisions_init = np.array([1.0, 1.0]).reshape(2, 1)  # 'diag'
    entry = {
        "x": f(x),
        "means_init": f(means_init),
        "means_init_dtype": str(means_init.dtype),
        "tol": opts.get("tol", 1e-3),
        "reg_covar": 1e-6,
        "max_iter": opts.get("max_iter", 100),
    }
    gmm = GaussianMixture(
        2,
        weights_init=weights_init,
        means_init=means_init,
        precisions_init=precisions_init,
        covariance_type="diag",
        tol=entry["tol"],
        reg_covar=entry["reg_covar"],
        max_iter=entry["max_iter"],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            gmm.fit(x)
        except ValueError as e:
            entry["error"] = str(e).split(".")[0]
            return entry
        pred = gmm.predict(x)
        proba = gmm.predict_proba(x)
        scores = gmm.score_samples(x)
    entry["convergence_warning"] = any(
        issubclass(w.category, ConvergenceWarning) for w in caught
    )
    entry.update(
        weights=f(gmm.weights_),
        means=f(gmm.means_),
        variances=f(gmm.covariances_),
        precisions_cholesky=f(gmm.precisions_cholesky_),
        n_iter=int(gmm.n_iter_),
        converged=bool(gmm.converged_),
        lower_bound=float(gmm.lower_bound_),
        lower_bounds=[float(v) for v in gmm.lower_bounds_],
        predict=[int(v) for v in pred],
        predict_proba=[f(r) for r in proba],
        score_samples=f(scores),
        score_samples_dtype=str(scores.dtype),
    )
    return entry


def main():
    cases = make_cases()
    out = {
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "sklearn": sklearn.__version__,
        },
        "call": "GaussianMixture(2, weights_init=[0.5,0.5], means_init=[[min],[max]], "
        "precisions_init=[[1.0],[1.0]], covariance_type='diag', tol, reg_covar, max_iter)"
        " on x sorted ascending, shape (n,1); then fit, predict, predict_proba, score_samples",
        "cases": [],
    }
    names = list(cases) + list(OVERRIDES)
    for name in names:
        base, opts = OVERRIDES.get(name, (name, {}))
        for dtype in ("f32", "f64"):
            np_dtype = np.float32 if dtype == "f32" else np.float64
            entry = {"name": name, "dtype": dtype}
            entry.update(run(cases[base], np_dtype, opts))
            out["cases"].append(entry)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # Compact: one case per line keeps the file small and diffable.
    cases_out = out.pop("cases")
    body = ",\n".join(json.dumps(c, separators=(",", ":")) for c in cases_out)
    head = json.dumps(out, separators=(",", ":"))[:-1]
    OUT.write_text(head + ',"cases":[\n' + body + "\n]}\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(cases_out)} entries)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
