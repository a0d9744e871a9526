//! When to try again: exponential backoff and the upstream's `Retry-After`.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

/// Longest backoff between two attempts on the same upstream.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Longest `Retry-After` honoured; larger values are clamped (the request deadline is
/// usually far shorter anyway).
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The wait before the `n`-th backoff (0-based): `initial * 2^n`, at most [`MAX_BACKOFF`].
pub(crate) fn backoff(initial: Duration, n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
    initial
        .checked_mul(factor)
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF)
}

/// How long the upstream asks us to wait, from `retry-after-ms` (milliseconds, sent by
/// OpenAI) or `Retry-After` (seconds or an HTTP date), clamped to [`MAX_RETRY_AFTER`].
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    };
    let from_number = |text: &str, unit: f64| {
        text.parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .and_then(|n| Duration::try_from_secs_f64(n * unit).ok())
    };
    let wait = header("retry-after-ms")
        .and_then(|ms| from_number(ms, 0.001))
        .or_else(|| {
            let value = header("retry-after")?;
            from_number(value, 1.0).or_else(|| {
                let date = httpdate::parse_http_date(value).ok()?;
                Some(date.duration_since(now).unwrap_or(Duration::ZERO))
            })
        })?;
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let initial = Duration::from_millis(100);
        assert_eq!(backoff(initial, 0), Duration::from_millis(100));
        assert_eq!(backoff(initial, 1), Duration::from_millis(200));
        assert_eq!(backoff(initial, 3), Duration::from_millis(800));
        assert_eq!(backoff(initial, 10), MAX_BACKOFF);
        assert_eq!(backoff(initial, u32::MAX), MAX_BACKOFF);
        assert_eq!(backoff(Duration::ZERO, 5), Duration::ZERO);
    }

    #[test]
    fn retry_after_in_seconds_milliseconds_or_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2")]), now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", " 1.5 ")]), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(
                &headers(&[("retry-after", "9"), ("retry-after-ms", "250")]),
                now
            ),
            Some(Duration::from_millis(250))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let mut map = HeaderMap::new();
        map.insert(
            "retry-after",
            HeaderValue::from_str(&date).expect("header value"),
        );
        assert_eq!(retry_after(&map, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        map.insert(
            "retry-after",
            HeaderValue::from_str(&past).expect("header value"),
        );
        assert_eq!(retry_after(&map, now), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_absent_garbage_or_huge() {
        let now = SystemTime::now();
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-3")]), now), None);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "86400")]), now),
            Some(MAX_RETRY_AFTER)
        );
    }
}
