//! How long a call may take: the request's `timeout`, the `grpc-timeout` header and the
//! axon's cap.

use std::time::Duration;

/// The timeout, in seconds, of a request whose `timeout` field is 0 (unset).
pub const DEFAULT_TIMEOUT_S: f64 = 12.0;

/// Parses a `grpc-timeout` header value: at most 8 digits followed by a unit, `H` (hours),
/// `M` (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds) or `n` (nanoseconds).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(amount * 3600),
        'M' => Duration::from_secs(amount * 60),
        'S' => Duration::from_secs(amount),
        'm' => Duration::from_millis(amount),
        'u' => Duration::from_micros(amount),
        'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The time a call gets: the request's `timeout` seconds (0 → [`DEFAULT_TIMEOUT_S`]), or the
/// `grpc-timeout` header if shorter, at most `max_s` seconds. Refuses a negative or
/// non-finite `timeout` and an unparseable header, with a message for the caller.
pub(crate) fn budget(
    timeout_s: f64,
    grpc_timeout: Option<&str>,
    max_s: f64,
) -> Result<Duration, String> {
    if !timeout_s.is_finite() || timeout_s < 0.0 {
        return Err(format!(
            "timeout must be a non-negative number of seconds, got {timeout_s}"
        ));
    }
    let requested = if timeout_s == 0.0 {
        DEFAULT_TIMEOUT_S
    } else {
        timeout_s
    };
    let mut budget = Duration::from_secs_f64(requested.min(max_s.max(0.0)));
    if let Some(header) = grpc_timeout {
        let header = parse_grpc_timeout(header)
            .ok_or_else(|| format!("grpc-timeout {header:?} is not a valid timeout"))?;
        budget = budget.min(header);
    }
    Ok(budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn malformed_grpc_timeouts_are_refused() {
        for value in ["", "S", "5", "5s", "123456789S", "-5S", "1.5S", "5é", " 5S"] {
            assert_eq!(parse_grpc_timeout(value), None, "{value:?}");
        }
    }

    #[test]
    fn zero_means_the_default_and_the_shortest_limit_wins() {
        assert_eq!(budget(0.0, None, 60.0), Ok(Duration::from_secs(12)));
        assert_eq!(budget(3.0, None, 60.0), Ok(Duration::from_secs(3)));
        assert_eq!(budget(30.0, None, 20.0), Ok(Duration::from_secs(20)));
        assert_eq!(
            budget(3.0, Some("500m"), 60.0),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            budget(0.5, Some("10S"), 60.0),
            Ok(Duration::from_millis(500))
        );
    }

    #[test]
    fn unusable_timeouts_are_refused() {
        assert!(budget(-1.0, None, 60.0).is_err());
        assert!(budget(f64::NAN, None, 60.0).is_err());
        assert!(budget(f64::INFINITY, None, 60.0).is_err());
        assert!(budget(1.0, Some("soon"), 60.0).is_err());
    }
}
