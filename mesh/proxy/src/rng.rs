//! The proxy's source of randomness: weighted splits, fault percentages,
//! least-request's two random choices, retry jitter.
//!
//! By default every draw uses the thread-local generator of `fastrand`, which
//! takes no lock. For tests and reproducible labs the proxy can be given a
//! seed (`MESH_SEED`): then every draw comes from one seeded generator behind
//! a mutex, so a run of requests makes the same choices every time. Envoy has
//! no such switch; its randomness always comes from the OS.

use std::sync::{Arc, Mutex};

/// A cheap, cloneable handle to the proxy's random numbers.
#[derive(Clone, Debug, Default)]
pub struct Rng {
    seeded: Option<Arc<Mutex<fastrand::Rng>>>,
}

impl Rng {
    /// Draw from the thread-local generator (the normal mode).
    pub fn thread() -> Self {
        Rng { seeded: None }
    }

    /// Every draw comes from one generator seeded with `seed`.
    pub fn seeded(seed: u64) -> Self {
        Rng {
            seeded: Some(Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)))),
        }
    }

    /// From an optional seed: seeded when given, thread-local otherwise.
    pub fn from_seed(seed: Option<u64>) -> Self {
        seed.map(Rng::seeded).unwrap_or_default()
    }

    /// A float in `0.0..1.0`.
    pub fn f64(&self) -> f64 {
        match &self.seeded {
            // A poisoned lock only means another thread panicked mid-draw;
            // the generator's state is still a valid generator state.
            Some(rng) => rng.lock().unwrap_or_else(|e| e.into_inner()).f64(),
            None => fastrand::f64(),
        }
    }

    /// An integer in `0..n` (`n` must be > 0).
    pub fn below(&self, n: u64) -> u64 {
        match &self.seeded {
            Some(rng) => rng.lock().unwrap_or_else(|e| e.into_inner()).u64(0..n),
            None => fastrand::u64(0..n),
        }
    }

    /// True for `percent`% of calls (`percent` in 0..=100, as Istio writes it).
    pub fn chance(&self, percent: f64) -> bool {
        if percent <= 0.0 {
            return false;
        }
        if percent >= 100.0 {
            return true;
        }
        self.f64() * 100.0 < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_generators_repeat_themselves() {
        let a = Rng::seeded(7);
        let b = Rng::seeded(7);
        let xs: Vec<u64> = (0..20).map(|_| a.below(1000)).collect();
        let ys: Vec<u64> = (0..20).map(|_| b.below(1000)).collect();
        assert_eq!(xs, ys);
    }

    #[test]
    fn chance_honours_the_edges() {
        let rng = Rng::seeded(1);
        assert!((0..1000).all(|_| !rng.chance(0.0)));
        assert!((0..1000).all(|_| rng.chance(100.0)));
    }
}
