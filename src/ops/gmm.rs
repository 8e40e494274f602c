//! One-dimensional, two-component Gaussian mixture fitted by EM, reproducing
//! sklearn's `GaussianMixture` exactly as mmdetection's `PAAHead` calls it
//! (Probabilistic Anchor Assignment, Kim & Lee, ECCV 2020).
//!
//! # What PAAHead does with the mixture
//!
//! In `PAAHead.paa_reassign` (the same in mmdetection 2.x and 3.x), for every
//! image and every ground-truth box:
//!
//! * The candidates are, on each FPN level, the `topk` (default 9) anchors with
//!   the smallest cost among that level's anchors that the initial
//!   `MaxIoUAssigner` gave to this box; the per-level picks are concatenated, so
//!   there are at most 9 x 5 = 45 of them. The cost of an anchor is its
//!   classification loss summed over classes plus its box loss, both with
//!   `reduction='none'` (`get_pos_loss`; focal loss + 1.3 x GIoU in the PAA
//!   configs), so the values are positive and typically 0.1..3.
//! * Fewer than 2 candidates: the box is skipped (`continue`), so it ends up
//!   with no positive at all; its candidate, like every initial positive that
//!   is not re-selected, becomes background (label `num_classes`, box weight 0).
//! * Otherwise the costs are sorted ascending (the anchor indices are permuted
//!   alongside; `torch.sort` is not stable, so the order of equal costs is
//!   unspecified), reshaped to `(n, 1)` and moved to a **float32** numpy array,
//!   and PAAHead builds
//!   `GaussianMixture(2, weights_init=[0.5, 0.5], means_init=[[min], [max]],
//!   precisions_init=[[1.0], [1.0]], covariance_type=self.covariance_type)`.
//!   `covariance_type` is a PAAHead constructor argument defaulting to `'diag'`
//!   (the PAA configs keep it); with one feature that is a plain per-component
//!   variance. Everything else is sklearn's default: `tol=1e-3`,
//!   `reg_covar=1e-6`, `max_iter=100`, `n_init=1`; `init_params='kmeans'` is
//!   moot because all three initial values are given. `means_init` is a
//!   float32 array too (it is built from the float32 array's min and max),
//!   `weights_init` and `precisions_init` are float64. [`paa_init`] builds
//!   exactly this initialisation and [`paa_fit`] makes the whole call.
//! * It calls `fit(x)`, then `predict(x)` and `score_samples(x)` on the same
//!   array; `predict_proba`, the fitted parameters and the convergence flag
//!   are not used (a non-converged fit only emits a `ConvergenceWarning`; a
//!   `ValueError` from sklearn, see below, would abort training).
//! * `gmm_separation_scheme` (scheme (c) of the paper's Fig. 3): the
//!   candidates predicted as component 0 (the one initialised at the smallest
//!   cost) form `fgs`, kept in ascending-cost order. If there is none, the box
//!   gets no positive. Otherwise the one with the largest `score_samples`
//!   value among them is found (torch `topk(1)`; exact ties are resolved by
//!   torch, not specified) and the `fgs` candidates up to and including it are
//!   the positives. The ignore set is always empty. Note that component 0 need
//!   not be a prefix of the sorted costs: a wide component 0 can also claim the
//!   largest costs (fixture case `unimodal_20` predicts `0000111...1100`); the
//!   cut at the highest-density candidate is what drops such a tail.
//!
//! # What is reproduced
//!
//! sklearn's `GaussianMixture` with `n_components=2`, `covariance_type='diag'`,
//! one feature and user-given weights, means and precisions (checked against
//! scikit-learn 1.9.1 with numpy 2.4.6 by the fixture
//! `tests/fixtures/gmm/sklearn_gmm.json`, made by `tools/make_gmm_fixture.py`):
//!
//! * Initialisation: the given weights and means are used as they are and the
//!   precision Cholesky factors are `sqrt(precision)`; no k-means is run (older
//!   sklearn releases ran it and then discarded its result, which changes
//!   nothing).
//! * Each iteration is an E-step (log responsibilities and the mean
//!   log-likelihood of the *current* parameters), then an M-step, then the
//!   convergence test `|lower_bound - previous| < tol`, the previous bound of
//!   the first iteration being -inf. So the first step is an E-step on the
//!   initial parameters, `lower_bound` is the log-likelihood of the parameters
//!   *before* the last M-step, while the returned parameters are those *after*
//!   it, and `n_iter` counts E/M pairs (the first change is infinite, so
//!   `n_iter >= 2` whenever the fit converges).
//! * M-step: `nk = sum(resp) + 10 * f64::EPSILON`, `mean = sum(resp x) / nk`,
//!   `variance = sum(resp x^2) / nk - mean^2 + reg_covar`, weights `nk / sum(nk)`.
//!   A variance `<= 0` is sklearn's `ValueError` ("ill-defined empirical
//!   covariance"), returned here as [`GmmError::IllDefinedCovariance`].
//! * After `max_iter` iterations without convergence sklearn warns and keeps
//!   the parameters of the last M-step (with `n_init=1` the "best of the
//!   initialisations" is that single run), with `converged == false` and
//!   `n_iter == max_iter`.
//! * `predict` is the argmax of the weighted log-probabilities with ties going
//!   to component 0 (numpy `argmax`); `score_samples` is their log-sum-exp,
//!   computed the way sklearn's `_logsumexp` does (`log1p` of the smaller term
//!   relative to the maximum, `max + ln 2` on an exact tie).
//! * Degenerate inputs follow from the above: identical values (or two equal
//!   values) give two identical components with variance ~`reg_covar`, weights
//!   1/2 and every sample predicted 0; two distinct values give one component
//!   per value with variance ~`reg_covar`; a component left with a single point
//!   collapses onto it the same way.
//!
//! # Float32 input
//!
//! The dtype of the array matters: with a float32 `x` numpy squares samples in
//! float32 (`X * X` in the M-step, `X**2` in the log-probabilities), and PAAHead's
//! float32 `means_init` is squared in float32 in the first E-step; everything
//! else is float64. With costs of ~1 that float32 rounding (~1e-7 relative) is
//! far above the float64 noise (even the first-E-step rounding of `means_init`
//! alone moves the fitted parameters by up to ~3e-8 relative), and because the variance of a collapsed
//! component is the difference of two nearly equal terms plus `reg_covar`, it
//! can even make that variance non-positive: five equal float32 costs of 5.76
//! make sklearn raise `ValueError` (fixture case `all_equal_5p76`). The element
//! type of `x` ([`Sample`]: `f32` or `f64`) selects which of the two sklearn
//! behaviours is reproduced; pass the costs as `f32` to match PAAHead.
//!
//! # Arithmetic order
//!
//! Element-wise expressions follow sklearn's evaluation order, and the mean
//! log-likelihood uses numpy's pairwise summation, so most quantities agree
//! bit for bit. The two responsibility-weighted sums of the M-step
//! (`sum(resp x)`, `sum(resp x^2)`) are BLAS matrix products in sklearn, whose
//! summation order depends on the CPU; they are summed sequentially here, so results agree with sklearn to rounding
//! level: ~1e-13 relative or better in the fixture, up to ~2e-10 where a
//! variance comes from the cancellation of nearly equal terms (a tiny spread,
//! a collapsed component); the fixture test asserts 1e-9.
//! Older sklearn releases ran k-means before overriding its result with the
//! given values, wrote the variance as
//! `avg_x2 - 2 * avg_x_mean + mean^2 + reg_covar` and used scipy's
//! `logsumexp`; they differ only by rounding: scikit-learn 1.3.2 (numpy 1.26,
//! scipy 1.11) reproduces every fixture case's `n_iter`, `converged`,
//! `predict` and the float32 error, and its parameters and scores to 7e-10.

use std::fmt;

/// sklearn `GaussianMixture` default `tol` (the convergence threshold on the
/// change of the mean log-likelihood).
pub const DEFAULT_TOL: f64 = 1e-3;
/// sklearn `GaussianMixture` default `reg_covar` (added to every variance).
pub const DEFAULT_REG_COVAR: f64 = 1e-6;
/// sklearn `GaussianMixture` default `max_iter`.
pub const DEFAULT_MAX_ITER: usize = 100;

/// sklearn's M-step adds `10 * np.finfo(resp.dtype).eps` to each component's
/// responsibility mass so that an empty component does not divide by zero;
/// the responsibilities are always float64.
const NK_EPS: f64 = 10.0 * f64::EPSILON;

/// `math.log(2 * math.pi)`, the constant of the Gaussian log-density (one
/// feature). Checked against `(2.0 * PI).ln()` in the tests.
const LN_2PI: f64 = 1.8378770664093453;

/// sklearn's `_check_weights` accepts float64 weights whose sum is within this
/// of 1 (`np.allclose(|1 - sum|, 0, atol=1e-8)`).
const WEIGHTS_SUM_ATOL: f64 = 1e-8;

/// Initial parameters; sklearn's `weights_init`, `means_init` and
/// `precisions_init` (precision = 1 / variance).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GmmInit {
    /// Mixing weights; in [0, 1] and summing to 1 (within 1e-8).
    pub weights: [f64; 2],
    /// Component means.
    pub means: [f64; 2],
    /// Component precisions, positive.
    pub precisions: [f64; 2],
}

/// EM options; [`Default`] is sklearn's defaults (and PAAHead's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GmmOptions {
    /// Stop when the mean log-likelihood changes by less than this.
    pub tol: f64,
    /// Added to every variance in the M-step.
    pub reg_covar: f64,
    /// Maximum number of E/M iterations (at least 1, see [`fit`]).
    pub max_iter: usize,
}

impl Default for GmmOptions {
    fn default() -> Self {
        Self {
            tol: DEFAULT_TOL,
            reg_covar: DEFAULT_REG_COVAR,
            max_iter: DEFAULT_MAX_ITER,
        }
    }
}

/// A fitted mixture; the fields mirror sklearn's fitted attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Gmm1d {
    /// `weights_`.
    pub weights: [f64; 2],
    /// `means_`.
    pub means: [f64; 2],
    /// `covariances_` (variances, `reg_covar` included).
    pub variances: [f64; 2],
    /// `converged_`.
    pub converged: bool,
    /// `n_iter_`: the number of E/M iterations run.
    pub n_iter: usize,
    /// `lower_bound_`: the mean log-likelihood computed in the last E-step,
    /// i.e. of the parameters before the last M-step.
    pub lower_bound: f64,
    /// `lower_bounds_`: the mean log-likelihood of every iteration.
    pub lower_bounds: Vec<f64>,
}

/// Why sklearn would refuse the fit (it raises `ValueError` for all of these
/// but `max_iter == 0`, see [`fit`]).
#[derive(Debug, Clone, PartialEq)]
pub enum GmmError {
    /// `fit` needs at least 2 samples (sklearn's `ensure_min_samples=2`; PAAHead
    /// skips a box with fewer than 2 candidates before calling it).
    TooFewSamples(usize),
    /// A sample is NaN or infinite.
    NonFiniteSample(usize),
    /// An initial value is invalid (non-finite, weights outside [0, 1] or not
    /// summing to 1, precision not positive).
    InvalidInit(&'static str),
    /// An option is invalid (negative `tol` or `reg_covar`, `max_iter == 0`).
    InvalidOptions(&'static str),
    /// A variance came out `<= 0` in the M-step of this (1-based) iteration.
    IllDefinedCovariance { iteration: usize },
}

impl fmt::Display for GmmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooFewSamples(n) => write!(f, "GMM fit needs at least 2 samples, got {n}"),
            Self::NonFiniteSample(i) => write!(f, "GMM sample {i} is not finite"),
            Self::InvalidInit(why) => write!(f, "invalid GMM initialisation: {why}"),
            Self::InvalidOptions(why) => write!(f, "invalid GMM options: {why}"),
            Self::IllDefinedCovariance { iteration } => write!(
                f,
                "GMM component variance became non-positive in iteration {iteration} \
                 (ill-defined empirical covariance)"
            ),
        }
    }
}

impl std::error::Error for GmmError {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// The element type of the sample array, standing for the numpy dtype handed
/// to sklearn: `f32` reproduces a float32 array (what PAAHead passes), `f64`
/// a float64 one. Only the squares of samples (and of a float32 `means_init`)
/// are computed at this precision; all other arithmetic is float64, as in
/// sklearn.
pub trait Sample: Copy + sealed::Sealed {
    /// The value, widened exactly to f64.
    fn value(self) -> f64;
    /// `self * self` rounded to the sample's precision, widened to f64.
    fn square(self) -> f64;
    /// Rounds an f64 to the sample's precision (numpy's cast of `means_init`).
    fn from_f64(v: f64) -> Self;
}

impl Sample for f64 {
    fn value(self) -> f64 {
        self
    }
    fn square(self) -> f64 {
        self * self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

impl Sample for f32 {
    fn value(self) -> f64 {
        f64::from(self)
    }
    fn square(self) -> f64 {
        f64::from(self * self)
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

/// The initialisation PAAHead passes: weights 1/2, means at the smallest and
/// the largest score, precisions 1. `x` need not be sorted. For `f32` scores
/// the means are exact f32 values, like PAAHead's float32 `means_init`.
pub fn paa_init<T: Sample>(x: &[T]) -> GmmInit {
    let (lo, hi) = x
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            let v = v.value();
            (lo.min(v), hi.max(v))
        });
    GmmInit {
        weights: [0.5, 0.5],
        means: [lo, hi],
        precisions: [1.0, 1.0],
    }
}

/// PAAHead's whole call: [`fit`] with [`paa_init`] and sklearn's default
/// options. PAAHead sorts `x` ascending first; the result does not depend on
/// the order beyond rounding.
pub fn paa_fit<T: Sample>(x: &[T]) -> Result<Gmm1d, GmmError> {
    fit(x, &paa_init(x), &GmmOptions::default())
}

/// Fits the mixture to `x` by EM from `init`, as sklearn's
/// `GaussianMixture(2, covariance_type='diag', weights_init, means_init,
/// precisions_init, tol, reg_covar, max_iter).fit(x.reshape(-1, 1))`.
///
/// `init.means` are rounded to `T` first (for `f32`: sklearn given a float32
/// `means_init`, as PAAHead's is). `max_iter == 0` is rejected: sklearn 1.9.1
/// fails on it too when all three initial values are given, because it never
/// computes `covariances_`.
pub fn fit<T: Sample>(x: &[T], init: &GmmInit, opts: &GmmOptions) -> Result<Gmm1d, GmmError> {
    // The checks sklearn makes before fitting, in its order: options, data,
    // initial values.
    let negative_or_nan = |v: f64| v.is_nan() || v < 0.0;
    if negative_or_nan(opts.tol) || negative_or_nan(opts.reg_covar) {
        return Err(GmmError::InvalidOptions("tol and reg_covar must be >= 0"));
    }
    if x.len() < 2 {
        return Err(GmmError::TooFewSamples(x.len()));
    }
    if let Some(i) = x.iter().position(|v| !v.value().is_finite()) {
        return Err(GmmError::NonFiniteSample(i));
    }
    check_init(init)?;
    if opts.max_iter == 0 {
        return Err(GmmError::InvalidOptions("max_iter must be >= 1"));
    }

    let xs: Vec<f64> = x.iter().map(|v| v.value()).collect();
    let x2s: Vec<f64> = x.iter().map(|v| v.square()).collect();

    // Initial parameters: no k-means, the given values as they are.
    let m0 = T::from_f64(init.means[0]);
    let m1 = T::from_f64(init.means[1]);
    let mut params = Params {
        weights: init.weights,
        means: [m0.value(), m1.value()],
        means_sq: [m0.square(), m1.square()],
        prec_chol: [init.precisions[0].sqrt(), init.precisions[1].sqrt()],
        variances: [1.0 / init.precisions[0], 1.0 / init.precisions[1]],
    };

    let mut resp = vec![[0.0f64; 2]; xs.len()];
    let mut log_prob_norm = vec![0.0f64; xs.len()];
    let mut lower_bound = f64::NEG_INFINITY;
    let mut lower_bounds = Vec::new();
    let mut converged = false;
    let mut n_iter = 0;
    for iteration in 1..=opts.max_iter {
        let prev = lower_bound;
        // E-step on the current parameters; its mean log-likelihood is this
        // iteration's lower bound.
        for ((&xi, &x2i), (lpn, r)) in xs
            .iter()
            .zip(&x2s)
            .zip(log_prob_norm.iter_mut().zip(resp.iter_mut()))
        {
            let wlp = params.weighted_log_prob(xi, x2i);
            let norm = log_sum_exp2(wlp);
            *lpn = norm;
            // sklearn exponentiates the log responsibilities in the M-step.
            *r = [(wlp[0] - norm).exp(), (wlp[1] - norm).exp()];
        }
        lower_bound = numpy_sum(&log_prob_norm) / xs.len() as f64;
        params = m_step(&xs, &x2s, &resp, opts.reg_covar)
            .ok_or(GmmError::IllDefinedCovariance { iteration })?;
        lower_bounds.push(lower_bound);
        n_iter = iteration;
        if (lower_bound - prev).abs() < opts.tol {
            converged = true;
            break;
        }
    }
    // Not converged: sklearn warns and keeps the last M-step's parameters.
    Ok(Gmm1d {
        weights: params.weights,
        means: params.means,
        variances: params.variances,
        converged,
        n_iter,
        lower_bound,
        lower_bounds,
    })
}

impl Gmm1d {
    /// sklearn `predict`: the component with the larger weighted
    /// log-probability, ties (and NaN in component 0) going to 0 as numpy's
    /// `argmax` does.
    pub fn predict<T: Sample>(&self, x: &[T]) -> Vec<usize> {
        let p = self.params();
        x.iter()
            .map(|v| {
                let w = p.weighted_log_prob(v.value(), v.square());
                // numpy's argmax treats NaN as the maximum, first one wins.
                usize::from(!w[0].is_nan() && (w[1] > w[0] || w[1].is_nan()))
            })
            .collect()
    }

    /// sklearn `predict_proba`: the posterior probability of each component.
    pub fn predict_proba<T: Sample>(&self, x: &[T]) -> Vec<[f64; 2]> {
        let p = self.params();
        x.iter()
            .map(|v| {
                let w = p.weighted_log_prob(v.value(), v.square());
                let norm = log_sum_exp2(w);
                [(w[0] - norm).exp(), (w[1] - norm).exp()]
            })
            .collect()
    }

    /// sklearn `score_samples`: the log-density of each sample under the
    /// mixture (log-sum-exp of the weighted log-probabilities).
    pub fn score_samples<T: Sample>(&self, x: &[T]) -> Vec<f64> {
        let p = self.params();
        x.iter()
            .map(|v| log_sum_exp2(p.weighted_log_prob(v.value(), v.square())))
            .collect()
    }

    fn params(&self) -> Params {
        Params {
            weights: self.weights,
            means: self.means,
            means_sq: [self.means[0] * self.means[0], self.means[1] * self.means[1]],
            // As sklearn's M-step derives `precisions_cholesky_`.
            prec_chol: [
                1.0 / self.variances[0].sqrt(),
                1.0 / self.variances[1].sqrt(),
            ],
            variances: self.variances,
        }
    }
}

/// The state EM iterates on; `means_sq` and `prec_chol` are kept as sklearn
/// computes them (the first E-step squares a float32 `means_init` in float32,
/// and the initial precision factor is `sqrt(precision)`, not
/// `1 / sqrt(variance)`).
struct Params {
    weights: [f64; 2],
    means: [f64; 2],
    means_sq: [f64; 2],
    prec_chol: [f64; 2],
    variances: [f64; 2],
}

impl Params {
    /// log N(x | mean_k, 1/prec_k) + log weight_k, term by term in the order
    /// of sklearn's `_estimate_log_gaussian_prob` ('diag'), which expands
    /// (x - m)^2 prec into m^2 prec - 2 x (m prec) + x^2 prec.
    fn weighted_log_prob(&self, x: f64, x2: f64) -> [f64; 2] {
        std::array::from_fn(|k| {
            let pc = self.prec_chol[k];
            let prec = pc * pc;
            let maha = self.means_sq[k] * prec - 2.0 * (x * (self.means[k] * prec)) + x2 * prec;
            (-0.5 * (LN_2PI + maha) + pc.ln()) + self.weights[k].ln()
        })
    }
}

/// sklearn's M-step ('diag', one feature). `None` when a variance is `<= 0`
/// (NaN passes, as in sklearn).
fn m_step(xs: &[f64], x2s: &[f64], resp: &[[f64; 2]], reg_covar: f64) -> Option<Params> {
    // Sequential sums: numpy's column sum is sequential; the two weighted sums
    // are BLAS products in sklearn (order CPU-dependent, rounding-level).
    let mut nk = [0.0f64; 2];
    let mut sx = [0.0f64; 2];
    let mut sx2 = [0.0f64; 2];
    for ((r, &x), &x2) in resp.iter().zip(xs).zip(x2s) {
        for k in 0..2 {
            nk[k] += r[k];
            sx[k] += r[k] * x;
            sx2[k] += r[k] * x2;
        }
    }
    let nk = nk.map(|v| v + NK_EPS);
    let means = [sx[0] / nk[0], sx[1] / nk[1]];
    let means_sq = means.map(|m| m * m);
    let variances: [f64; 2] = std::array::from_fn(|k| sx2[k] / nk[k] - means_sq[k] + reg_covar);
    if variances.iter().any(|&v| v <= 0.0) {
        return None;
    }
    let total = nk[0] + nk[1];
    Some(Params {
        weights: [nk[0] / total, nk[1] / total],
        means,
        means_sq,
        prec_chol: variances.map(|v| 1.0 / v.sqrt()),
        variances,
    })
}

/// sklearn's `_logsumexp` of one row of two: the maxima are counted and
/// removed, and the rest enters through `log1p` relative to the maximum.
fn log_sum_exp2(a: [f64; 2]) -> f64 {
    let max = if a[0].is_nan() || a[1].is_nan() {
        f64::NAN
    } else {
        a[0].max(a[1])
    };
    let shift = if max.is_finite() { max } else { 0.0 };
    let mut count = 0.0f64;
    let mut s = -0.0f64;
    for v in a {
        if v == max {
            count += 1.0;
        } else {
            s += (v - shift).exp();
        }
    }
    if s != 0.0 {
        s /= count;
    }
    s.ln_1p() + count.ln() + max
}

/// numpy's `np.sum` of a contiguous float64 array (pairwise summation with
/// 8 accumulators on blocks of up to 128), so that the mean log-likelihood,
/// and with it the convergence test, matches sklearn bit for bit.
fn numpy_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        a.iter().fold(-0.0, |acc, &v| acc + v)
    } else if n <= BLOCK {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let full = n - n % 8;
        for chunk in a[8..full].chunks_exact(8) {
            for (acc, &v) in r.iter_mut().zip(chunk) {
                *acc += v;
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &a[full..] {
            res += v;
        }
        res
    } else {
        let half = n / 2;
        let half = half - half % 8;
        numpy_sum(&a[..half]) + numpy_sum(&a[half..])
    }
}

fn check_init(init: &GmmInit) -> Result<(), GmmError> {
    let all = init
        .weights
        .iter()
        .chain(&init.means)
        .chain(&init.precisions);
    if all.into_iter().any(|v| !v.is_finite()) {
        return Err(GmmError::InvalidInit("initial values must be finite"));
    }
    if init.weights.iter().any(|&w| !(0.0..=1.0).contains(&w)) {
        return Err(GmmError::InvalidInit("weights must lie in [0, 1]"));
    }
    if (1.0 - (init.weights[0] + init.weights[1])).abs() > WEIGHTS_SUM_ATOL {
        return Err(GmmError::InvalidInit("weights must sum to 1"));
    }
    if init.precisions.iter().any(|&p| p <= 0.0) {
        return Err(GmmError::InvalidInit("precisions must be positive"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use serde_json::Value;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gmm/sklearn_gmm.json"
    );

    /// Relative tolerance against sklearn. Differences come only from the
    /// BLAS summation order of the M-step sums, ~1e-16 relative, but the
    /// variance is a difference of two nearly equal terms and amplifies them:
    /// by ~1e5 when the spread is tiny (`unimodal_tight_9`, ~1e-11 observed).
    const REL_TOL: f64 = 1e-9;

    fn normal(rng: &mut ChaCha8Rng, mean: f64, sd: f64) -> f64 {
        // Box-Muller; 1 - u keeps the logarithm finite.
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        mean + sd * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    #[test]
    fn ln_2pi_constant() {
        assert_eq!(LN_2PI, (2.0 * std::f64::consts::PI).ln());
    }

    #[test]
    fn recovers_two_separated_gaussians() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut data: Vec<(f64, usize)> = (0..500)
            .map(|i| match i < 300 {
                true => (normal(&mut rng, 0.5, 0.1), 0),
                false => (normal(&mut rng, 2.0, 0.3), 1),
            })
            .collect();
        data.sort_by(|a, b| a.0.total_cmp(&b.0));
        let x: Vec<f64> = data.iter().map(|d| d.0).collect();
        let g = paa_fit(&x).unwrap();
        assert!(g.converged && g.n_iter < DEFAULT_MAX_ITER);
        assert!((g.weights[0] - 0.6).abs() < 0.03, "{g:?}");
        assert!((g.means[0] - 0.5).abs() < 0.02, "{g:?}");
        assert!((g.means[1] - 2.0).abs() < 0.06, "{g:?}");
        assert!((g.variances[0].sqrt() / 0.1 - 1.0).abs() < 0.15, "{g:?}");
        assert!((g.variances[1].sqrt() / 0.3 - 1.0).abs() < 0.15, "{g:?}");
        let pred = g.predict(&x);
        let right = pred.iter().zip(&data).filter(|(p, d)| **p == d.1).count();
        assert!(right >= 495, "{right} of 500 assigned correctly");
        // Probabilities are a normalised version of the same decision.
        for (p, &c) in g.predict_proba(&x).iter().zip(&pred) {
            assert!((p[0] + p[1] - 1.0).abs() < 1e-12);
            assert_eq!(usize::from(p[1] > p[0]), c);
        }
        // The same data as f32 fits to nearly the same mixture.
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let g32 = paa_fit(&x32).unwrap();
        assert!((g32.means[1] - g.means[1]).abs() < 1e-5);
    }

    fn floats(v: &Value) -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_f64().unwrap())
            .collect()
    }

    /// `|a - b| / max(|b|, floor)`: `floor` 1 for log-likelihoods (which
    /// cross zero), the smallest normal for parameters and probabilities.
    fn rel_diff(a: f64, b: f64, floor: f64) -> f64 {
        if a == b {
            return 0.0;
        }
        (a - b).abs() / b.abs().max(floor)
    }

    /// Names of the compared quantities, in the order of `check_case`'s result.
    const QUANTITIES: [&str; 8] = [
        "weights",
        "means",
        "variances",
        "precisions_cholesky",
        "lower_bound",
        "lower_bounds",
        "score_samples",
        "predict_proba",
    ];

    /// Checks one fixture entry; returns the largest relative difference of
    /// each quantity in `QUANTITIES` (printed with `--nocapture`).
    fn check_case(case: &Value) -> [f64; 8] {
        let name = format!("{} {}", case["name"], case["dtype"]);
        let x = floats(&case["x"]);
        let opts = GmmOptions {
            tol: case["tol"].as_f64().unwrap(),
            reg_covar: case["reg_covar"].as_f64().unwrap(),
            max_iter: case["max_iter"].as_u64().unwrap() as usize,
        };
        let f32_input = case["dtype"] == "f32";
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        if f32_input {
            // The fixture's float32 values are stored exactly.
            assert!(x32.iter().zip(&x).all(|(a, b)| f64::from(*a) == *b));
        }
        let init = if f32_input {
            paa_init(&x32)
        } else {
            paa_init(&x)
        };
        assert_eq!(init.means.to_vec(), floats(&case["means_init"]), "{name}");
        let fitted = if f32_input {
            fit(&x32, &init, &opts)
        } else {
            fit(&x, &init, &opts)
        };
        if case.get("error").is_some() {
            assert!(
                matches!(fitted, Err(GmmError::IllDefinedCovariance { .. })),
                "{name}: sklearn raised, we got {fitted:?}"
            );
            return [0.0; 8];
        }
        let g = fitted.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(g.n_iter as u64, case["n_iter"].as_u64().unwrap(), "{name}");
        assert_eq!(g.converged, case["converged"].as_bool().unwrap(), "{name}");
        assert_eq!(
            g.converged,
            !case["convergence_warning"].as_bool().unwrap(),
            "{name}"
        );
        let (pred, proba, scores) = if f32_input {
            (
                g.predict(&x32),
                g.predict_proba(&x32),
                g.score_samples(&x32),
            )
        } else {
            (g.predict(&x), g.predict_proba(&x), g.score_samples(&x))
        };
        let want_pred: Vec<usize> = case["predict"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(pred, want_pred, "{name}");

        let pc: Vec<f64> = g.variances.iter().map(|v| 1.0 / v.sqrt()).collect();
        let proba: Vec<f64> = proba.iter().flatten().copied().collect();
        let want_proba: Vec<f64> = case["predict_proba"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(floats)
            .collect();
        let got: [(&[f64], f64); 8] = [
            (&g.weights, f64::MIN_POSITIVE),
            (&g.means, f64::MIN_POSITIVE),
            (&g.variances, f64::MIN_POSITIVE),
            (&pc, f64::MIN_POSITIVE),
            (&[g.lower_bound], 1.0),
            (&g.lower_bounds, 1.0),
            (&scores, 1.0),
            (&proba, f64::MIN_POSITIVE),
        ];
        let mut worst = [0.0f64; 8];
        for (k, (what, (values, floor))) in QUANTITIES.iter().zip(got).enumerate() {
            let want = match *what {
                "predict_proba" => want_proba.clone(),
                "lower_bound" => vec![case["lower_bound"].as_f64().unwrap()],
                _ => floats(&case[*what]),
            };
            assert_eq!(values.len(), want.len(), "{name} {what}");
            for (a, b) in values.iter().zip(&want) {
                let d = rel_diff(*a, *b, floor);
                assert!(d <= REL_TOL, "{name} {what}: {a} vs {b} ({d:e})");
                worst[k] = worst[k].max(d);
            }
        }
        let max = worst.iter().fold(0.0f64, |m, &d| m.max(d));
        println!("{name}: n_iter {} max rel diff {max:.2e}", g.n_iter);
        worst
    }

    #[test]
    fn matches_sklearn_fixture() {
        let text = std::fs::read_to_string(FIXTURE).expect("read sklearn_gmm.json");
        let fixture: Value = serde_json::from_str(&text).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() >= 24);
        let mut worst = [0.0f64; 8];
        for case in cases {
            for (w, d) in worst.iter_mut().zip(check_case(case)) {
                *w = w.max(d);
            }
        }
        for (what, w) in QUANTITIES.iter().zip(worst) {
            println!("worst relative difference in {what}: {w:.2e}");
        }
    }

    #[test]
    fn identical_values_give_identical_components() {
        // sklearn: both components stay identical, weights 1/2, variance of
        // order reg_covar, every sample predicted 0 (argmax tie). Converged
        // after 3 iterations: the first M-step shrinks the variance from 1 to
        // ~reg_covar, the second leaves it, so the third bound repeats the
        // second.
        for n in [2, 7] {
            let x = vec![1.1f64; n];
            let g = paa_fit(&x).unwrap();
            assert_eq!(g.weights, [0.5, 0.5]);
            assert_eq!(g.means[0], g.means[1]);
            assert_eq!(g.variances[0], g.variances[1]);
            assert!((g.variances[0] / DEFAULT_REG_COVAR - 1.0).abs() < 1e-6);
            assert!(g.converged);
            assert_eq!(g.n_iter, 3);
            assert_eq!(g.predict(&x), vec![0; n]);
            let s = g.score_samples(&x);
            assert!(s.iter().all(|&v| v == s[0]));
        }
    }

    #[test]
    fn two_values_one_component_each() {
        let x = [0.31f64, 1.74];
        let g = paa_fit(&x).unwrap();
        assert!(g.converged);
        assert_eq!(g.predict(&x), vec![0, 1]);
        assert!((g.means[0] - 0.31).abs() < 1e-9 && (g.means[1] - 1.74).abs() < 1e-9);
        assert!(g
            .variances
            .iter()
            .all(|v| (v / DEFAULT_REG_COVAR - 1.0).abs() < 1e-3));
    }

    #[test]
    fn float32_square_rounding_can_break_the_fit() {
        // 5.76f32 squared in f32 is ~1.8e-6 below the exact square, more than
        // reg_covar: sklearn raises on the float32 array, not the float64 one.
        let x32 = [5.76f32; 5];
        assert_eq!(
            paa_fit(&x32),
            Err(GmmError::IllDefinedCovariance { iteration: 1 })
        );
        let x64: Vec<f64> = x32.iter().map(|&v| f64::from(v)).collect();
        assert!(paa_fit(&x64).is_ok());
    }

    #[test]
    fn max_iter_without_convergence_keeps_last_parameters() {
        let x = [0.4f64, 0.5, 0.55, 0.9, 1.4, 1.5, 1.8, 2.0];
        let init = paa_init(&x);
        let full = fit(&x, &init, &GmmOptions::default()).unwrap();
        let opts = GmmOptions {
            max_iter: 2,
            tol: 0.0,
            ..GmmOptions::default()
        };
        let short = fit(&x, &init, &opts).unwrap();
        assert!(!short.converged);
        assert_eq!(short.n_iter, 2);
        assert_eq!(short.lower_bounds.len(), 2);
        assert_eq!(short.lower_bounds[..], full.lower_bounds[..2]);
        assert_eq!(short.lower_bound, short.lower_bounds[1]);
    }

    #[test]
    fn rejects_what_sklearn_rejects() {
        let opts = GmmOptions::default();
        let init = paa_init(&[1.0f64]);
        assert_eq!(
            fit(&[1.0f64], &init, &opts),
            Err(GmmError::TooFewSamples(1))
        );
        assert_eq!(
            fit::<f64>(&[], &init, &opts),
            Err(GmmError::TooFewSamples(0))
        );
        let x = [0.5f64, f64::NAN, 1.0];
        assert_eq!(fit(&x, &init, &opts), Err(GmmError::NonFiniteSample(1)));
        let x = [0.5f64, 1.0];
        let init = paa_init(&x);
        let bad = |g: GmmInit| matches!(fit(&x, &g, &opts), Err(GmmError::InvalidInit(_)));
        assert!(bad(GmmInit {
            weights: [0.6, 0.5],
            ..init
        }));
        assert!(bad(GmmInit {
            weights: [1.5, -0.5],
            ..init
        }));
        assert!(bad(GmmInit {
            precisions: [1.0, 0.0],
            ..init
        }));
        assert!(bad(GmmInit {
            means: [f64::NAN, 1.0],
            ..init
        }));
        let zero_iter = GmmOptions {
            max_iter: 0,
            ..opts
        };
        assert!(matches!(
            fit(&x, &init, &zero_iter),
            Err(GmmError::InvalidOptions(_))
        ));
    }

    #[test]
    fn numpy_pairwise_sum_layout() {
        // Integers are summed exactly in any order; this checks coverage of
        // all three branches, and that tiny terms follow numpy's grouping.
        for n in [0usize, 1, 7, 8, 9, 45, 128, 129, 300] {
            let a: Vec<f64> = (0..n).map(|i| i as f64).collect();
            assert_eq!(numpy_sum(&a), (n * n.saturating_sub(1) / 2) as f64);
        }
        // Rounding shows the grouping: 1 followed by eight halves of an ulp.
        // Added one by one each half ulp is lost (ties to even); numpy puts
        // them in accumulators 0..7 and adds those pairwise, which gives
        // 1 + 3 ulp (checked with numpy 2.4.6).
        let mut a = vec![0.0f64; 16];
        a[0] = 1.0;
        for v in a.iter_mut().skip(8) {
            *v = f64::EPSILON / 2.0;
        }
        assert_eq!(a.iter().fold(0.0, |s, v| s + v), 1.0);
        assert_eq!(numpy_sum(&a), 1.0 + 3.0 * f64::EPSILON);
    }
}
