//! A short run of every fuzz target (CI: about two seconds each, in the test profile); the
//! long runs are `scripts/fuzz.sh TARGET SECONDS`, their figures in docs/security.md.

use std::time::Duration;

use prompting_fuzz::targets::{NAMES, by_name};
use prompting_fuzz::{Budget, fuzz};

#[test]
fn every_target_survives_a_short_run() {
    for name in NAMES {
        let mut target = by_name(name, "python3").expect("known target");
        let report = fuzz(
            target.as_mut(),
            Budget {
                time: Duration::from_secs(2),
                execs: 200_000,
            },
            0x5eed,
            None,
        );
        assert!(report.execs > 100, "{name}: {report:?}");
        assert!(report.findings.is_empty(), "{name}: {:?}", report.findings);
    }
}
