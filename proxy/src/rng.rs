//! The proxy's random numbers: a small, fast generator per thread. Every
//! draw here picks an endpoint, a weighted route, a sampling decision or a
//! request id, none of which is a secret; the ChaCha thread generator would
//! cost a block refill every few requests for nothing.

use std::cell::RefCell;

use rand::distr::{Distribution, StandardUniform};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

thread_local! {
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

/// A uniformly random value, as `crate::rng::random` gives.
pub fn random<T>() -> T
where
    StandardUniform: Distribution<T>,
{
    RNG.with(|r| r.borrow_mut().random())
}
