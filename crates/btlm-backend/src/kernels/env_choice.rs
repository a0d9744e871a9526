//! A kernel choice made once per process from this CPU, which an environment variable may
//! override (`BTLM_PREFETCH`, `BTLM_Q4K_SCALES`, `BTLM_KV_PAGES`).

/// The choice the environment variable `var` names if `parse` reads its value, else
/// `detect()`; a value that `parse` does not read is ignored with a warning that lists
/// `expected`.
pub(crate) fn env_or<T>(
    var: &str,
    expected: &str,
    parse: impl Fn(&str) -> Option<T>,
    detect: impl FnOnce() -> T,
) -> T {
    choose(
        std::env::var(var).ok().as_deref(),
        var,
        expected,
        parse,
        detect,
    )
}

/// The choice `value` names in `names` (`(name, choice)` pairs), spaces around it and case
/// ignored; `None` when it names none: the `parse` of [`env_or`] for a fixed set of names.
pub(crate) fn named<T: Copy>(value: &str, names: &[(&str, T)]) -> Option<T> {
    let value = value.trim();
    names
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(value))
        .map(|&(_, choice)| choice)
}

/// [`env_or`] with the variable's value `set` given.
fn choose<T>(
    set: Option<&str>,
    var: &str,
    expected: &str,
    parse: impl Fn(&str) -> Option<T>,
    detect: impl FnOnce() -> T,
) -> T {
    set.and_then(&parse).unwrap_or_else(|| {
        if let Some(value) = set {
            tracing::warn!(value, "{var} is none of {expected}; ignored");
        }
        detect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digit(s: &str) -> Option<u8> {
        s.parse().ok().filter(|d| *d < 10)
    }

    #[test]
    fn a_readable_value_wins_and_anything_else_falls_back_to_detection() {
        assert_eq!(choose(Some("7"), "V", "0-9", digit, || 3), 7);
        assert_eq!(choose(None, "V", "0-9", digit, || 3), 3);
        assert_eq!(choose(Some("12"), "V", "0-9", digit, || 3), 3);
        assert_eq!(choose(Some(""), "V", "0-9", digit, || 3), 3);
    }

    #[test]
    fn a_name_is_read_whatever_its_case_and_surrounding_spaces() {
        let names = [("one", 1), ("two", 2)];
        assert_eq!(named("one", &names), Some(1));
        assert_eq!(named(" TWO ", &names), Some(2));
        assert_eq!(named("three", &names), None);
        assert_eq!(named("", &names), None);
    }

    #[test]
    fn detection_runs_only_without_a_readable_value() {
        let detect = || -> u8 { panic!("detected although the value was readable") };
        assert_eq!(choose(Some("4"), "V", "0-9", digit, detect), 4);
    }
}
