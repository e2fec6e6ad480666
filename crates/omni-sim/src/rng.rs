//! A seeded generator (SplitMix64) and the few distributions a contact-centre day needs.
//! Reproducible by design: the same profile and seed give the same day, so two rosters are
//! compared on the same customers (common random numbers).

use serde::Deserialize;

/// SplitMix64: small, fast, and good enough for simulation (it passes BigCrush).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so its logarithm is finite.
    pub fn unit(&mut self) -> f64 {
        // 53 random bits, shifted off zero.
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Exponential with `mean`.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * self.unit().ln()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// A duration distribution in seconds, as a profile writes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "distribution", rename_all = "snake_case", deny_unknown_fields)]
pub enum Distribution {
    /// Always the same.
    Fixed {
        /// Seconds.
        secs: f64,
    },
    /// Memoryless: what Erlang C and Erlang A assume.
    Exponential {
        /// Mean seconds.
        mean_secs: f64,
    },
    /// Long-tailed, as handling times usually are: mean and standard deviation in seconds.
    Lognormal {
        /// Mean seconds.
        mean_secs: f64,
        /// Standard deviation in seconds.
        sd_secs: f64,
    },
}

impl Distribution {
    /// One draw, in seconds (never negative).
    pub fn sample(&self, rng: &mut Rng) -> f64 {
        match *self {
            Self::Fixed { secs } => secs.max(0.0),
            Self::Exponential { mean_secs } => rng.exponential(mean_secs.max(0.0)),
            Self::Lognormal { mean_secs, sd_secs } => {
                // The underlying normal's parameters for the wanted mean and deviation.
                let variance = (1.0 + (sd_secs / mean_secs).powi(2)).ln();
                let mu = mean_secs.ln() - variance / 2.0;
                (mu + variance.sqrt() * rng.normal()).exp()
            }
        }
    }

    /// Why the distribution cannot be used, if it cannot.
    pub fn problem(&self) -> Option<&'static str> {
        let ok = |x: f64| x.is_finite() && x > 0.0;
        match *self {
            Self::Fixed { secs } if !(secs.is_finite() && secs >= 0.0) => {
                Some("secs must be a number of seconds, 0 or more")
            }
            Self::Exponential { mean_secs } if !ok(mean_secs) => Some("mean_secs must be above 0"),
            Self::Lognormal { mean_secs, sd_secs } if !ok(mean_secs) || !ok(sd_secs) => {
                Some("mean_secs and sd_secs must be above 0")
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_and_sd(d: &Distribution, n: usize) -> (f64, f64) {
        let mut rng = Rng::new(42);
        let xs: Vec<f64> = (0..n).map(|_| d.sample(&mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        (mean, var.sqrt())
    }

    #[test]
    fn the_same_seed_gives_the_same_draws() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let draws: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        assert_eq!(draws, (0..5).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(Rng::new(8).next_u64(), draws[0]);
    }

    #[test]
    fn draws_have_the_mean_and_deviation_asked_for() {
        let (m, sd) = mean_and_sd(&Distribution::Exponential { mean_secs: 300.0 }, 200_000);
        assert!(
            (m - 300.0).abs() < 3.0 && (sd - 300.0).abs() < 6.0,
            "{m} {sd}"
        );
        let lognormal = Distribution::Lognormal {
            mean_secs: 240.0,
            sd_secs: 180.0,
        };
        let (m, sd) = mean_and_sd(&lognormal, 200_000);
        assert!(
            (m - 240.0).abs() < 3.0 && (sd - 180.0).abs() < 8.0,
            "{m} {sd}"
        );
        assert_eq!(
            mean_and_sd(&Distribution::Fixed { secs: 5.0 }, 10),
            (5.0, 0.0)
        );
    }

    #[test]
    fn unusable_parameters_are_named() {
        assert!(Distribution::Exponential { mean_secs: 0.0 }
            .problem()
            .is_some());
        assert!(Distribution::Fixed { secs: f64::NAN }.problem().is_some());
        assert!(Distribution::Exponential { mean_secs: 1.0 }
            .problem()
            .is_none());
    }
}
