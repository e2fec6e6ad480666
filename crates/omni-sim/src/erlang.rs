//! The queueing theory a simulated queue is checked against. One queue, Poisson arrivals
//! (`rate` per second), exponential handling (`mean_handling` seconds), `agents` agents of
//! capacity 1, first come first served:
//!
//! - **Erlang C** (M/M/n): nobody leaves. The chance to wait is Erlang's C formula;
//!   waits beyond zero are exponential with rate `n·μ − λ`.
//! - **Erlang A** (M/M/n+M): customers leave after an exponential patience. Solved exactly as
//!   the birth–death chain it is (truncated where its tail is negligible), and, for the wait of
//!   a customer who finds `q` others queued ahead, as the small absorbing chain of "how many are
//!   still ahead", integrated in time for the service level.
//!
//! Service level is the share of all arrivals answered within `t`, as [`crate::report`]
//! counts it.

/// A queue's steady-state figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Share of arrivals answered within the target.
    pub service_level: f64,
    /// Mean wait of the answered customers (average speed of answer), seconds.
    pub asa: f64,
    /// Share of arrivals who leave before being answered.
    pub abandonment: f64,
}

/// One queue's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Queue {
    /// Arrivals per second.
    pub rate: f64,
    /// Mean handling time, seconds.
    pub mean_handling: f64,
    /// Agents (capacity 1 each).
    pub agents: u32,
}

impl Queue {
    /// Offered load in erlangs: `λ / μ`.
    pub fn load(&self) -> f64 {
        self.rate * self.mean_handling
    }
}

/// Erlang's C formula: the chance an arrival waits, for `agents` and `load` erlangs (below
/// `agents`: otherwise the queue grows without end and this is 1).
pub fn erlang_c(agents: u32, load: f64) -> f64 {
    let n = f64::from(agents);
    if load >= n {
        return 1.0;
    }
    // Erlang B by its stable recurrence, then C from B.
    let mut b = 1.0;
    for k in 1..=agents {
        b = load * b / (f64::from(k) + load * b);
    }
    n * b / (n - load * (1.0 - b))
}

/// Erlang C's service level (answered within `within` seconds) and ASA.
pub fn erlang_c_prediction(queue: Queue, within: f64) -> Prediction {
    let mu = 1.0 / queue.mean_handling;
    let c = erlang_c(queue.agents, queue.load());
    let drain = f64::from(queue.agents) * mu - queue.rate;
    Prediction {
        service_level: 1.0 - c * (-drain * within).exp(),
        asa: c / drain,
        abandonment: 0.0,
    }
}

/// Erlang A's service level, ASA and abandonment, with exponential patience of mean
/// `mean_patience` seconds.
pub fn erlang_a_prediction(queue: Queue, mean_patience: f64, within: f64) -> Prediction {
    let (lambda, mu, theta) = (queue.rate, 1.0 / queue.mean_handling, 1.0 / mean_patience);
    let n = queue.agents as usize;
    // Stationary distribution of the number in system (PASTA: what arrivals see).
    let mut p = vec![1.0_f64];
    loop {
        let k = p.len();
        let out = mu * k.min(n) as f64 + theta * k.saturating_sub(n) as f64;
        let next = p[k - 1] * lambda / out;
        p.push(next);
        let total: f64 = p.iter().sum();
        if k > n && next / total < 1e-14 {
            break;
        }
    }
    let total: f64 = p.iter().sum();
    let queued_max = p.len().saturating_sub(n);
    // For a customer finding `q` ahead: the chance to be answered at all, within `within`,
    // and the mean wait counted over those answered.
    let served = served_chance(n, mu, theta, queued_max);
    let in_time = served_within(n, mu, theta, queued_max, within);
    let wait_if_served = served_wait(n, mu, theta, queued_max);
    let (mut sl, mut answered, mut wait) = (0.0, 0.0, 0.0);
    for (k, pk) in p.iter().enumerate() {
        let pk = pk / total;
        if k < n {
            sl += pk;
            answered += pk;
        } else {
            let q = k - n;
            sl += pk * in_time[q];
            answered += pk * served[q];
            wait += pk * wait_if_served[q];
        }
    }
    Prediction {
        service_level: sl,
        asa: wait / answered,
        abandonment: 1.0 - answered,
    }
}

/// With `j` customers ahead, the next change (one of them answered or gone) comes at rate
/// `n·μ + j·θ`; the tagged customer's own patience runs out at rate `θ`.
fn ahead_rate(n: usize, mu: f64, theta: f64, j: usize) -> f64 {
    n as f64 * mu + j as f64 * theta
}

/// The chance to be answered, for each number of customers found ahead.
fn served_chance(n: usize, mu: f64, theta: f64, up_to: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(up_to);
    let mut chance = 1.0;
    for j in 0..up_to {
        let r = ahead_rate(n, mu, theta, j);
        chance *= r / (r + theta);
        out.push(chance);
    }
    out
}

/// E[wait · 1{answered}] for each number found ahead: every stage passed on the way to an
/// answer adds its mean duration.
fn served_wait(n: usize, mu: f64, theta: f64, up_to: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(up_to);
    let (mut chance, mut mean) = (1.0, 0.0);
    for j in 0..up_to {
        let r = ahead_rate(n, mu, theta, j);
        let leave = r + theta;
        // Passing this stage: the chance multiplies, and the stage's mean time adds.
        mean += 1.0 / leave;
        chance *= r / leave;
        out.push(chance * mean);
    }
    out
}

/// The chance to be answered within `t` seconds, for each number found ahead: the backward
/// equations of the "still ahead" chain, integrated with RK4.
fn served_within(n: usize, mu: f64, theta: f64, up_to: usize, t: f64) -> Vec<f64> {
    // u[j](s): answered within s from "j ahead"; u[-1] = 1 (in service).
    let derivative = |u: &[f64]| -> Vec<f64> {
        (0..u.len())
            .map(|j| {
                let r = ahead_rate(n, mu, theta, j);
                let next = if j == 0 { 1.0 } else { u[j - 1] };
                r * (next - u[j]) - theta * u[j]
            })
            .collect()
    };
    let fastest = ahead_rate(n, mu, theta, up_to) + theta;
    let steps = ((t * fastest * 4.0).ceil() as usize).max(200);
    let h = t / steps as f64;
    let mut u = vec![0.0; up_to];
    let add = |a: &[f64], b: &[f64], k: f64| -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| x + k * y).collect()
    };
    for _ in 0..steps {
        let k1 = derivative(&u);
        let k2 = derivative(&add(&u, &k1, h / 2.0));
        let k3 = derivative(&add(&u, &k2, h / 2.0));
        let k4 = derivative(&add(&u, &k3, h));
        for j in 0..up_to {
            u[j] += h / 6.0 * (k1[j] + 2.0 * k2[j] + 2.0 * k3[j] + k4[j]);
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erlang_c_matches_published_values() {
        // 10 agents, 8 erlangs: C ≈ 0.4092 (standard Erlang C tables).
        assert!(
            (erlang_c(10, 8.0) - 0.4092).abs() < 1e-3,
            "{}",
            erlang_c(10, 8.0)
        );
        // One agent: C equals the utilisation.
        assert!((erlang_c(1, 0.7) - 0.7).abs() < 1e-12);
        assert_eq!(erlang_c(5, 6.0), 1.0);
    }

    #[test]
    fn erlang_a_tends_to_erlang_c_as_patience_grows() {
        let q = Queue {
            rate: 8.0 / 300.0,
            mean_handling: 300.0,
            agents: 10,
        };
        let c = erlang_c_prediction(q, 60.0);
        let a = erlang_a_prediction(q, 1e7, 60.0);
        assert!(
            (a.service_level - c.service_level).abs() < 2e-3,
            "{a:?} {c:?}"
        );
        assert!((a.asa - c.asa).abs() / c.asa < 0.01, "{a:?} {c:?}");
        assert!(a.abandonment < 1e-3);
    }

    #[test]
    fn impatience_shortens_waits_and_costs_customers() {
        let q = Queue {
            rate: 9.5 / 300.0,
            mean_handling: 300.0,
            agents: 10,
        };
        let patient = erlang_a_prediction(q, 3600.0, 60.0);
        let impatient = erlang_a_prediction(q, 60.0, 60.0);
        assert!(impatient.asa < patient.asa);
        assert!(impatient.abandonment > patient.abandonment);
        assert!(impatient.abandonment > 0.0 && impatient.abandonment < 1.0);
    }
}
