//! Dividing a training split among M clients, as FedNTD's `datasetter.py` does (the Dirichlet
//! draw is FedML's and MOON's `partition_class_samples_with_dirichlet_distribution`, which
//! FedX's `partition_data` repeats): Dirichlet over labels, sharding, or IID. A partition is a
//! pure function of the labels, the settings and a seed (ChaCha8), so a run and its `--resume`
//! (and a Flower client given the same file) see the same clients.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

use super::config::Partition;
use crate::error::{invalid, Invalid};

/// How many times the Dirichlet draw may be repeated to reach `min_size` before giving up.
const MAX_DRAWS: usize = 1000;

/// The clients' images: for each client, indices into `labels` (0-based classes of the
/// training images, `classes` of them), in the client's order.
pub fn partition(
    labels: &[usize],
    classes: usize,
    clients: usize,
    p: &Partition,
    seed: u64,
) -> Result<Vec<Vec<usize>>, Invalid> {
    let n = labels.len();
    if clients > n {
        return Err(invalid(
            "federated.clients",
            format!(
                "{clients} clients for {n} training images: every client needs images; at most {n}"
            ),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    match p {
        Partition::Iid => {
            let mut idx: Vec<usize> = (0..n).collect();
            idx.shuffle(&mut rng);
            let len = n / clients;
            Ok((0..clients)
                .map(|k| idx[k * len..(k + 1) * len].to_vec())
                .collect())
        }
        Partition::Shards { classes_per_client } => {
            shards(labels, classes, clients, *classes_per_client, &mut rng)
        }
        Partition::Dirichlet { alpha, min_size } => {
            dirichlet(labels, classes, clients, *alpha, *min_size, &mut rng)
        }
    }
}

/// Indices of each class, in order.
fn by_class(labels: &[usize], classes: usize) -> Vec<Vec<usize>> {
    let mut v = vec![vec![]; classes];
    for (i, &l) in labels.iter().enumerate() {
        v[l].push(i);
    }
    v
}

/// `sharding_partition`: `s·M/K` shards per class, `s` random shards per client.
fn shards(
    labels: &[usize],
    classes: usize,
    clients: usize,
    s: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<usize>>, Invalid> {
    let key = "federated.partition.classes_per_client";
    if s > classes {
        return Err(invalid(
            key,
            format!("{s} classes per client, but the training data has {classes} classes"),
        ));
    }
    if !(s * clients).is_multiple_of(classes) {
        return Err(invalid(
            key,
            format!(
                "{s} shards per client × {clients} clients = {} shards do not divide among the \
                 {classes} classes (each class is cut into s·M/K shards): make s·M a multiple of K",
                s * clients
            ),
        ));
    }
    let per_class = s * clients / classes;
    let mut pool: Vec<Vec<Vec<usize>>> = Vec::with_capacity(classes);
    for (c, idx) in by_class(labels, classes).into_iter().enumerate() {
        if idx.len() < per_class {
            return Err(invalid(
                key,
                format!(
                    "class {} has {} training images, fewer than its {per_class} shards \
                     (s·M/K): use fewer clients or classes per client",
                    c + 1,
                    idx.len()
                ),
            ));
        }
        // Equal shards; the remainder goes one image each to the first shards.
        let size = idx.len() / per_class;
        let (even, rest) = idx.split_at(size * per_class);
        let mut sh: Vec<Vec<usize>> = even.chunks(size).map(<[usize]>::to_vec).collect();
        for (i, &r) in rest.iter().enumerate() {
            sh[i].push(r);
        }
        pool.push(sh);
    }
    let mut labels_drawn: Vec<usize> = (0..classes)
        .flat_map(|c| std::iter::repeat_n(c, per_class))
        .collect();
    labels_drawn.shuffle(rng);
    Ok(labels_drawn
        .chunks(s)
        .map(|set| {
            set.iter()
                .flat_map(|&c| {
                    let k = rng.random_range(0..pool[c].len());
                    pool[c].remove(k)
                })
                .collect()
        })
        .collect())
}

/// `lda_partition`: per class, Dirichlet proportions over the clients (those at N/M images
/// excluded), redrawn until every client has `min_size` images; each client's images shuffled.
fn dirichlet(
    labels: &[usize],
    classes: usize,
    clients: usize,
    alpha: f64,
    min_size: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<usize>>, Invalid> {
    let n = labels.len();
    if min_size * clients > n {
        return Err(invalid(
            "federated.partition.min_size",
            format!(
                "{min_size} images for each of {clients} clients is more than the {n} training images"
            ),
        ));
    }
    let gamma = Gamma::new(alpha, 1.0).map_err(|e| {
        invalid(
            "federated.partition.alpha",
            format!("{alpha}: not a Dirichlet concentration ({e})"),
        )
    })?;
    let per_class = by_class(labels, classes);
    let cap = n as f64 / clients as f64;
    for _ in 0..MAX_DRAWS {
        let mut held: Vec<Vec<usize>> = vec![vec![]; clients];
        for idx in &per_class {
            let mut idx = idx.clone();
            idx.shuffle(rng);
            let mut p: Vec<f64> = (0..clients).map(|_| gamma.sample(rng)).collect();
            for (pk, h) in p.iter_mut().zip(&held) {
                if h.len() as f64 >= cap {
                    *pk = 0.0;
                }
            }
            let sum: f64 = p.iter().sum();
            if sum <= 0.0 || !sum.is_finite() {
                // Every open client drew 0 (α tiny, underflow): this draw fails, as its
                // proportions are undefined (NumPy gives NaN); draw again.
                break;
            }
            // Cut points ⌊cumsum(p) · len⌋ of all but the last client (NumPy's
            // `(np.cumsum(p) * len).astype(int)[:-1]` and `np.split`).
            let mut acc = 0.0;
            let mut start = 0;
            for (k, pk) in p.iter().enumerate() {
                acc += pk / sum;
                let end = if k + 1 == clients {
                    idx.len()
                } else {
                    ((acc * idx.len() as f64) as usize).min(idx.len())
                };
                held[k].extend_from_slice(&idx[start..end.max(start)]);
                start = end.max(start);
            }
        }
        if held.iter().map(Vec::len).sum::<usize>() == n && held.iter().all(|h| h.len() >= min_size)
        {
            for h in &mut held {
                h.shuffle(rng);
            }
            return Ok(held);
        }
    }
    Err(invalid(
        "federated.partition.alpha",
        format!(
            "{MAX_DRAWS} Dirichlet draws with α = {alpha} gave no partition with at least \
             {min_size} images on each of the {clients} clients ({n} images): raise α, lower \
             partition.min_size or use fewer clients"
        ),
    ))
}

/// Images per class of each client (rows: clients; columns: classes).
pub fn histogram(parts: &[Vec<usize>], labels: &[usize], classes: usize) -> Vec<Vec<usize>> {
    parts
        .iter()
        .map(|p| {
            let mut h = vec![0; classes];
            for &i in p {
                h[labels[i]] += 1;
            }
            h
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 classes × 100 images, like a tenth of CIFAR-10.
    fn labels() -> Vec<usize> {
        (0..1000).map(|i| i % 10).collect()
    }

    fn assert_disjoint_cover(parts: &[Vec<usize>], n: usize, all: bool) {
        let mut seen = vec![false; n];
        for p in parts {
            for &i in p {
                assert!(!seen[i], "image {i} given twice");
                seen[i] = true;
            }
        }
        if all {
            assert!(seen.iter().all(|s| *s), "an image was left out");
        }
    }

    #[test]
    fn shards_give_each_client_its_classes() {
        let l = labels();
        let p = Partition::Shards {
            classes_per_client: 2,
        };
        let parts = partition(&l, 10, 10, &p, 3).unwrap();
        assert_disjoint_cover(&parts, l.len(), true);
        let h = histogram(&parts, &l, 10);
        for row in &h {
            // Two shards of 50 images: one or two classes (a client may draw one class twice).
            assert_eq!(row.iter().sum::<usize>(), 100, "{row:?}");
            let classes = row.iter().filter(|&&c| c > 0).count();
            assert!((1..=2).contains(&classes), "{row:?}");
            assert!(
                row.iter().all(|&c| c == 0 || c == 50 || c == 100),
                "{row:?}"
            );
        }
        // Same seed, same partition; another seed, another.
        assert_eq!(parts, partition(&l, 10, 10, &p, 3).unwrap());
        assert_ne!(parts, partition(&l, 10, 10, &p, 4).unwrap());
        // The remainder of a class spreads over its first shards: 103 images of class 0 in 2
        // shards of 51 and 52.
        let mut l2 = l.clone();
        l2.extend([0, 0, 0]);
        let parts = partition(&l2, 10, 10, &p, 0).unwrap();
        assert_disjoint_cover(&parts, l2.len(), true);
        let sizes: Vec<usize> = histogram(&parts, &l2, 10).iter().map(|r| r[0]).collect();
        let mut nz: Vec<usize> = sizes.into_iter().filter(|&s| s > 0).collect();
        nz.sort();
        assert!(nz == [51, 52] || nz == [103], "{nz:?}");
    }

    #[test]
    fn shards_refuse_what_cannot_be_cut() {
        let l = labels();
        let key = "federated.partition.classes_per_client";
        let e = partition(
            &l,
            10,
            10,
            &Partition::Shards {
                classes_per_client: 11,
            },
            0,
        )
        .unwrap_err();
        assert_eq!(e.path, key);
        assert!(e.msg.contains("has 10 classes"), "{}", e.msg);
        let e = partition(
            &l,
            10,
            7,
            &Partition::Shards {
                classes_per_client: 2,
            },
            0,
        )
        .unwrap_err();
        assert!(e.msg.contains("multiple of K"), "{}", e.msg);
        // 20 images of 10 classes, 10 clients × 10 classes: 10 shards per class of 2 images.
        let few: Vec<usize> = (0..20).map(|i| i % 10).collect();
        let e = partition(
            &few,
            10,
            20,
            &Partition::Shards {
                classes_per_client: 10,
            },
            0,
        )
        .unwrap_err();
        assert!(e.msg.contains("fewer than its 20 shards"), "{}", e.msg);
        let e = partition(&few, 10, 21, &Partition::Iid, 0).unwrap_err();
        assert_eq!(e.path, "federated.clients");
        assert!(
            e.msg.contains("21 clients for 20 training images"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn dirichlet_skews_labels_by_alpha() {
        let l = labels();
        // Mean over clients of the largest class share: α = 0.1 concentrates each client on
        // few classes, α = 100 approaches the uniform 1/10.
        let skew = |alpha: f64| {
            let p = Partition::Dirichlet {
                alpha,
                min_size: 10,
            };
            let parts = partition(&l, 10, 10, &p, 1).unwrap();
            assert_disjoint_cover(&parts, l.len(), true);
            assert!(parts.iter().all(|c| c.len() >= 10));
            assert_eq!(parts, partition(&l, 10, 10, &p, 1).unwrap(), "seeded");
            let h = histogram(&parts, &l, 10);
            h.iter()
                .map(|r| *r.iter().max().unwrap() as f64 / r.iter().sum::<usize>() as f64)
                .sum::<f64>()
                / 10.0
        };
        let (s01, s05, s100) = (skew(0.1), skew(0.5), skew(100.0));
        assert!(s01 > 0.6, "α = 0.1: {s01}");
        assert!(s01 > s05 && s05 > s100, "{s01} {s05} {s100}");
        assert!(s100 < 0.25, "α = 100: {s100}");
    }

    #[test]
    fn dirichlet_refuses_unreachable_sizes() {
        let l: Vec<usize> = (0..50).map(|i| i % 5).collect();
        let p = Partition::Dirichlet {
            alpha: 0.5,
            min_size: 10,
        };
        let e = partition(&l, 5, 6, &p, 0).unwrap_err();
        assert_eq!(e.path, "federated.partition.min_size");
        // Two classes of 25 images among 5 clients at a tiny α: each class goes (almost) all
        // to one client, so 10 images on every client is never drawn — said, not looped on.
        let two: Vec<usize> = (0..50).map(|i| i % 2).collect();
        let p = Partition::Dirichlet {
            alpha: 1e-3,
            min_size: 10,
        };
        let e = partition(&two, 2, 5, &p, 0).unwrap_err();
        assert_eq!(e.path, "federated.partition.alpha");
        assert!(e.msg.contains("raise α"), "{}", e.msg);
    }

    #[test]
    fn iid_gives_equal_shares() {
        let l = labels();
        let parts = partition(&l, 10, 3, &Partition::Iid, 0).unwrap();
        assert!(parts.iter().all(|p| p.len() == 333));
        assert_disjoint_cover(&parts, l.len(), false);
    }
}
