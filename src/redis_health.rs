//! A circuit breaker for Redis: after repeated failures, stop calling Redis for a moment, then let one
//! probe through; every request path that uses Redis asks it first, so a Redis outage costs one short
//! timeout now and then instead of one per request.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::telemetry::metrics::{REDIS_BREAKER_STATE, REDIS_BREAKER_TRANSITIONS};

/// What a caller may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Call Redis.
    Go,
    /// Redis is considered down: do without it.
    Skip,
    /// Redis was down and the cool-down is over: this caller probes (and repairs what the outage left).
    Probe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// The breaker's state, shared by every Redis user of the process.
#[derive(Debug)]
pub struct RedisHealth {
    state: Mutex<State>,
    failures_to_open: u32,
    cool_down: Duration,
}

impl RedisHealth {
    pub fn new(failures_to_open: u32, cool_down: Duration) -> Self {
        ::metrics::gauge!(REDIS_BREAKER_STATE).set(0.0);
        // Every transition's series from the start (at zero unless counting already), for `increase()`.
        let states = [
            State::Closed { failures: 0 },
            State::Open {
                until: Instant::now(),
            },
            State::HalfOpen,
        ];
        for state in states {
            ::metrics::counter!(REDIS_BREAKER_TRANSITIONS, "to" => label(state).0).increment(0);
        }
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            failures_to_open: failures_to_open.max(1),
            cool_down,
        }
    }

    /// Asks whether to call Redis now.
    pub fn permit(&self) -> Permit {
        let Ok(mut state) = self.state.lock() else {
            return Permit::Go;
        };
        match *state {
            State::Closed { .. } => Permit::Go,
            State::Open { until } if Instant::now() < until => Permit::Skip,
            State::Open { .. } => {
                transition(&mut state, State::HalfOpen);
                Permit::Probe
            }
            State::HalfOpen => Permit::Skip,
        }
    }

    /// Whether the breaker lets calls through (closed).
    pub fn is_closed(&self) -> bool {
        self.state
            .lock()
            .map(|s| matches!(*s, State::Closed { .. }))
            .unwrap_or(true)
    }

    /// A call (or the probe) succeeded.
    pub fn success(&self) {
        if let Ok(mut state) = self.state.lock() {
            match *state {
                State::Closed { failures: 0 } => {}
                State::Closed { .. } => *state = State::Closed { failures: 0 },
                _ => transition(&mut state, State::Closed { failures: 0 }),
            }
        }
    }

    /// A call (or the probe) failed or timed out.
    pub fn failure(&self) {
        if let Ok(mut state) = self.state.lock() {
            let open = State::Open {
                until: Instant::now() + self.cool_down,
            };
            match *state {
                State::Closed { failures } if failures + 1 >= self.failures_to_open => {
                    transition(&mut state, open)
                }
                State::Closed { failures } => {
                    *state = State::Closed {
                        failures: failures + 1,
                    }
                }
                State::HalfOpen => transition(&mut state, open),
                State::Open { .. } => {}
            }
        }
    }
}

/// A state's `to` label and gauge value.
fn label(state: State) -> (&'static str, f64) {
    match state {
        State::Closed { .. } => ("closed", 0.0),
        State::Open { .. } => ("open", 1.0),
        State::HalfOpen => ("half_open", 0.5),
    }
}

fn transition(state: &mut State, to: State) {
    let (name, gauge) = label(to);
    if matches!(to, State::Open { .. }) && !matches!(state, State::Open { .. }) {
        tracing::warn!("Redis keeps failing: not calling it for a moment (circuit open)");
    } else if matches!(to, State::Closed { .. }) {
        tracing::info!("Redis answers again (circuit closed)");
    }
    ::metrics::counter!(REDIS_BREAKER_TRANSITIONS, "to" => name).increment(1);
    ::metrics::gauge!(REDIS_BREAKER_STATE).set(gauge);
    *state = to;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_repeated_failures_then_probes_once() {
        let health = RedisHealth::new(3, Duration::from_millis(20));
        health.failure();
        health.failure();
        assert_eq!(health.permit(), Permit::Go, "two failures keep it closed");
        health.failure();
        assert_eq!(health.permit(), Permit::Skip, "open");
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(
            health.permit(),
            Permit::Probe,
            "one probe after the cool-down"
        );
        assert_eq!(health.permit(), Permit::Skip, "only one probe at a time");
        health.failure();
        assert_eq!(
            health.permit(),
            Permit::Skip,
            "a failed probe opens it again"
        );
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(health.permit(), Permit::Probe);
        health.success();
        assert_eq!(health.permit(), Permit::Go, "a good probe closes it");
        assert!(health.is_closed());
    }
}
