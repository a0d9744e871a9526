//! The one deadline rule of every protocol, server and client side: how long a request may
//! take, from the `timeout` it asks for.
//!
//! A request names its timeout in seconds (the legacy synapse's `timeout`, the btauth/1 and
//! OpenAI JSON `timeout`, gRPC's `timeout` field, 0 there meaning unset); one that names none
//! gets [`DEFAULT_TIMEOUT_S`], bittensor's synapse default. The timeout must be a finite,
//! positive number. A server caps it at `--axon.max_request_timeout`, and gRPC also at the
//! call's `grpc-timeout` header; the deadline counts from the request's arrival.

use std::time::Duration;

use tokio::time::Instant;

/// The timeout, in seconds, of a request that names none (bittensor's synapse default,
/// `prompting_synapse::DEFAULT_TIMEOUT`).
pub const DEFAULT_TIMEOUT_S: f64 = 12.0;

/// A timeout that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimeoutError {
    /// Zero, negative, or not a number.
    #[error("timeout must be a positive number of seconds, got {0}")]
    NotPositive(f64),
    /// A `grpc-timeout` header that is not one.
    #[error("grpc-timeout {0:?} is not a valid timeout")]
    InvalidGrpcTimeout(String),
}

/// The time a request gets: `requested` seconds (`None`: [`DEFAULT_TIMEOUT_S`]), at most
/// `cap_s` seconds. A timeout too long for a [`Duration`] is [`Duration::MAX`].
pub fn budget(requested: Option<f64>, cap_s: f64) -> Result<Duration, TimeoutError> {
    let seconds = requested.unwrap_or(DEFAULT_TIMEOUT_S);
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(TimeoutError::NotPositive(seconds));
    }
    let seconds = seconds.min(cap_s.max(0.0));
    Ok(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
}

/// `start + budget`, or a year from `start` when that is not representable.
pub fn deadline(start: Instant, budget: Duration) -> Instant {
    start
        .checked_add(budget)
        .unwrap_or_else(|| start + Duration::from_secs(365 * 86_400))
}

/// Parses a `grpc-timeout` header value: at most 8 digits followed by a unit, `H` (hours),
/// `M` (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds) or `n` (nanoseconds).
pub fn parse_grpc_timeout(value: &str) -> Result<Duration, TimeoutError> {
    let invalid = || TimeoutError::InvalidGrpcTimeout(value.to_owned());
    let unit = value.chars().last().ok_or_else(invalid)?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let amount: u64 = digits.parse().map_err(|_| invalid())?;
    Ok(match unit {
        'H' => Duration::from_secs(amount * 3600),
        'M' => Duration::from_secs(amount * 60),
        'S' => Duration::from_secs(amount),
        'm' => Duration::from_millis(amount),
        'u' => Duration::from_micros(amount),
        'n' => Duration::from_nanos(amount),
        _ => return Err(invalid()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let parse = |value| parse_grpc_timeout(value).ok();
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse("7n"), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn malformed_grpc_timeouts_are_refused() {
        for value in ["", "S", "5", "5s", "123456789S", "-5S", "1.5S", "5é", " 5S"] {
            assert_eq!(
                parse_grpc_timeout(value),
                Err(TimeoutError::InvalidGrpcTimeout(value.to_owned())),
                "{value:?}"
            );
        }
    }

    #[test]
    fn the_default_applies_and_the_cap_wins() {
        assert_eq!(budget(None, 60.0), Ok(Duration::from_secs(12)));
        assert_eq!(budget(Some(3.0), 60.0), Ok(Duration::from_secs(3)));
        assert_eq!(budget(Some(30.0), 20.0), Ok(Duration::from_secs(20)));
        assert_eq!(budget(Some(1e300), f64::INFINITY), Ok(Duration::MAX));
    }

    #[test]
    fn unusable_timeouts_are_refused() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(
                matches!(budget(Some(bad), 60.0), Err(TimeoutError::NotPositive(_))),
                "{bad}"
            );
        }
        assert_eq!(
            TimeoutError::NotPositive(-1.0).to_string(),
            "timeout must be a positive number of seconds, got -1"
        );
    }

    #[test]
    fn deadlines_saturate() {
        let now = Instant::now();
        assert_eq!(
            deadline(now, Duration::from_secs(2)),
            now + Duration::from_secs(2)
        );
        assert!(deadline(now, Duration::MAX) > now + Duration::from_secs(86_400));
    }
}
