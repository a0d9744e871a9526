//! Logging set-up: `tracing` events to stderr.

use tracing_subscriber::EnvFilter;

use crate::args::LoggingArgs;

/// The filter directives in effect: `trace` with `--logging.trace`, else `debug` with
/// `--logging.debug`; without either flag, `RUST_LOG` when it is set and not empty, else
/// `info`.
pub fn filter_directives(args: &LoggingArgs, rust_log: Option<&str>) -> String {
    if args.trace {
        "trace".into()
    } else if args.debug {
        "debug".into()
    } else {
        match rust_log.map(str::trim) {
            Some(directives) if !directives.is_empty() => directives.into(),
            _ => "info".into(),
        }
    }
}

/// Installs the global subscriber (see [`filter_directives`]; invalid `RUST_LOG` directives
/// are ignored). Does nothing if one is already installed.
pub fn init_logging(args: &LoggingArgs) {
    let rust_log = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let filter = EnvFilter::builder().parse_lossy(filter_directives(args, rust_log.as_deref()));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_rust_log_which_wins_over_info() {
        let none = LoggingArgs::default();
        let debug = LoggingArgs {
            debug: true,
            trace: false,
        };
        let both = LoggingArgs {
            debug: true,
            trace: true,
        };
        assert_eq!(filter_directives(&none, None), "info");
        assert_eq!(filter_directives(&none, Some("  ")), "info");
        assert_eq!(
            filter_directives(&none, Some("prompting_transport=debug")),
            "prompting_transport=debug"
        );
        assert_eq!(filter_directives(&debug, Some("warn")), "debug");
        assert_eq!(filter_directives(&both, Some("warn")), "trace");
    }
}
