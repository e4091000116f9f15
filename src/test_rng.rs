//! One seeded generator for the unit tests' model-based tests (integration tests have
//! their own in `tests/common`): xorshift64*, small, and the same sequence everywhere for
//! one seed.

/// xorshift64*.
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub(crate) fn chance(&mut self) -> bool {
        self.next() & 1 == 1
    }

    /// `f`'s value half of the time, `None` otherwise.
    pub(crate) fn maybe<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        if self.chance() {
            Some(f(self))
        } else {
            None
        }
    }
}

/// The seed in environment variable `var` (decimal or `0x` hex), else `default`.
pub(crate) fn seed_from_env(var: &str, default: u64) -> u64 {
    match std::env::var(var) {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{var} is a decimal or 0x hex number"))
        }
        Err(_) => default,
    }
}
