//! A tiny seeded generator (splitmix64) for property tests and benchmark clusters: the same seed
//! gives the same sequence on every run and machine. Decisions never use it; randomness is an
//! input of tests and benchmarks only.

/// splitmix64 state; construct with the seed, `SeededRng(seed)`.
pub struct SeededRng(pub u64);

impl SeededRng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[cfg(test)]
mod tests {
    use super::SeededRng;

    #[test]
    fn same_seed_same_sequence_and_bounds_hold() {
        let (mut a, mut b) = (SeededRng(42), SeededRng(42));
        let xs: Vec<u64> = (0..100).map(|_| a.below(7)).collect();
        assert_eq!(xs, (0..100).map(|_| b.below(7)).collect::<Vec<_>>());
        assert!(xs.iter().all(|x| *x < 7));
        assert!(xs.iter().any(|x| *x != xs[0]), "not constant");
        assert_eq!(SeededRng(1).below(0), 0);
    }
}
