//! Warn / critical thresholds: a measured value against two limits gives healthy, degraded or
//! unhealthy. Most values are bad when high (latency, backlog); certificate days are bad when low.

use fleetwatch_common::model::CheckStatus;
use serde::Deserialize;

/// Two limits on one value. Either may be left out.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Past this the check is degraded.
    pub warn: Option<f64>,
    /// Past this the check is unhealthy.
    pub critical: Option<f64>,
}

/// Which side of a threshold is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Values above the limit are bad (latency, queue length, memory).
    Above,
    /// Values below the limit are bad (certificate days left).
    Below,
}

impl Threshold {
    /// The status `value` earns. A limit is crossed when the value is strictly past it.
    pub fn judge(&self, value: f64, direction: Direction) -> CheckStatus {
        let past = |limit: f64| match direction {
            Direction::Above => value > limit,
            Direction::Below => value < limit,
        };
        if self.critical.is_some_and(past) {
            CheckStatus::Unhealthy
        } else if self.warn.is_some_and(past) {
            CheckStatus::Degraded
        } else {
            CheckStatus::Healthy
        }
    }

    /// Checks that the limits are finite and in order (`warn` before `critical` on the way from
    /// good to bad). `what` names the setting in the message.
    pub fn validate(&self, what: &str, direction: Direction) -> Result<(), String> {
        for (name, v) in [("warn", self.warn), ("critical", self.critical)] {
            if let Some(v) = v {
                if !v.is_finite() || v < 0.0 {
                    return Err(format!(
                        "{what}.{name} must be a non-negative number, got {v}"
                    ));
                }
            }
        }
        if let (Some(w), Some(c)) = (self.warn, self.critical) {
            let ordered = match direction {
                Direction::Above => w <= c,
                Direction::Below => w >= c,
            };
            if !ordered {
                let (rel, why) = match direction {
                    Direction::Above => ("at most", "higher values are worse"),
                    Direction::Below => ("at least", "lower values are worse"),
                };
                return Err(format!(
                    "{what}.warn ({w}) must be {rel} {what}.critical ({c}): {why}"
                ));
            }
        }
        Ok(())
    }
}

/// The worse of two statuses.
pub fn worst(a: CheckStatus, b: CheckStatus) -> CheckStatus {
    a.max(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_of_600_against_500_and_1000_is_degraded() {
        let t = Threshold {
            warn: Some(500.0),
            critical: Some(1000.0),
        };
        assert_eq!(t.judge(600.0, Direction::Above), CheckStatus::Degraded);
        assert_eq!(t.judge(500.0, Direction::Above), CheckStatus::Healthy);
        assert_eq!(t.judge(1001.0, Direction::Above), CheckStatus::Unhealthy);
        let crit_only = Threshold {
            warn: None,
            critical: Some(500.0),
        };
        assert_eq!(
            crit_only.judge(600.0, Direction::Above),
            CheckStatus::Unhealthy
        );
    }

    #[test]
    fn certificate_days_are_bad_when_low() {
        let t = Threshold {
            warn: Some(21.0),
            critical: Some(7.0),
        };
        assert_eq!(t.judge(30.0, Direction::Below), CheckStatus::Healthy);
        assert_eq!(t.judge(10.0, Direction::Below), CheckStatus::Degraded);
        assert_eq!(t.judge(3.0, Direction::Below), CheckStatus::Unhealthy);
        assert!(t.validate("cert_days", Direction::Below).is_ok());
        let err = t.validate("latency_seconds", Direction::Above).unwrap_err();
        assert!(err.contains("latency_seconds.warn (21)"), "{err}");
    }

    #[test]
    fn nonsense_limits_are_refused() {
        let t = Threshold {
            warn: Some(f64::NAN),
            critical: None,
        };
        assert!(t
            .validate("x", Direction::Above)
            .unwrap_err()
            .contains("x.warn"));
        assert_eq!(
            worst(CheckStatus::Degraded, CheckStatus::Unhealthy),
            CheckStatus::Unhealthy
        );
    }
}
