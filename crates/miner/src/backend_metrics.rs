//! Metrics a backend reports of itself ([`Miner::metrics`](crate::Miner::metrics)), read
//! at every scrape of the transport's `/metrics` and rendered there in the Prometheus text
//! format next to the pipeline's own figures.
//!
//! A backend names its families `prompting_<backend>_...` with the unit in the name
//! (`_seconds`, `_bytes`). A counter's family name has no `_total`: its samples get it when
//! rendered (`# TYPE prompting_btlm_passes counter` then `prompting_btlm_passes_total 12`),
//! as the transport's other counters do.

/// Whether a metric only grows (since the backend started) or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only grows; rendered with `_total` after the family name.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl MetricKind {
    /// The word of the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        }
    }
}

/// One value of a [`BackendMetric`], with its labels (name, value).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    /// Label names and values; empty for a family of one unlabelled value.
    pub labels: Vec<(&'static str, String)>,
    /// The value read now (a counter's: finite and never below an earlier reading).
    pub value: f64,
}

/// A metric family a backend reports: its name, help text, kind and values.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendMetric {
    /// The family name (`[a-zA-Z_:][a-zA-Z0-9_:]*`), without `_total` for a counter.
    pub name: &'static str,
    /// What it shows, one line.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// Its values; label values are escaped when rendered.
    pub samples: Vec<MetricSample>,
}

impl BackendMetric {
    /// A counter family of one unlabelled value.
    pub fn counter(name: &'static str, help: &'static str, value: f64) -> Self {
        Self::single(name, help, MetricKind::Counter, value)
    }

    /// A gauge family of one unlabelled value.
    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Self {
        Self::single(name, help, MetricKind::Gauge, value)
    }

    /// A family of values that differ by the one label `label`.
    pub fn labelled(
        name: &'static str,
        help: &'static str,
        kind: MetricKind,
        label: &'static str,
        values: impl IntoIterator<Item = (String, f64)>,
    ) -> Self {
        BackendMetric {
            name,
            help,
            kind,
            samples: values
                .into_iter()
                .map(|(label_value, value)| MetricSample {
                    labels: vec![(label, label_value)],
                    value,
                })
                .collect(),
        }
    }

    fn single(name: &'static str, help: &'static str, kind: MetricKind, value: f64) -> Self {
        BackendMetric {
            name,
            help,
            kind,
            samples: vec![MetricSample {
                labels: Vec::new(),
                value,
            }],
        }
    }

    /// Whether the family and label names are valid Prometheus names (the transport skips
    /// a family that is not, rather than serve text scrapers reject).
    pub fn is_valid(&self) -> bool {
        is_metric_name(self.name)
            && self
                .samples
                .iter()
                .all(|s| s.labels.iter().all(|(name, _)| is_label_name(name)))
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(BackendMetric::counter("prompting_x_passes", "h", 1.0).is_valid());
        assert!(BackendMetric::gauge("a:b_c9", "h", 1.0).is_valid());
        for bad in ["", "9lives", "has-dash", "space d", "é"] {
            assert!(!BackendMetric::gauge(bad, "h", 1.0).is_valid(), "{bad:?}");
        }
        for bad in ["", "__reserved", "1st", "a-b"] {
            let m = BackendMetric::labelled(
                "ok",
                "h",
                MetricKind::Gauge,
                bad,
                [("v".to_string(), 1.0)],
            );
            assert!(!m.is_valid(), "{bad:?}");
        }
    }

    #[test]
    fn labelled_families_carry_one_sample_per_value() {
        let m = BackendMetric::labelled(
            "rows",
            "h",
            MetricKind::Counter,
            "kind",
            [("decode".to_string(), 3.0), ("prompt".to_string(), 5.0)],
        );
        assert_eq!(m.samples.len(), 2);
        assert_eq!(m.samples[1].labels, [("kind", "prompt".to_string())]);
        assert_eq!(m.kind.as_str(), "counter");
    }
}
