//! `prompting-fuzz TARGET SECONDS [--execs N] [--seed S] [--python PATH] [--findings DIR]`:
//! fuzzes one target (or `all`, each for SECONDS) and prints what it ran and found. Exits 1
//! when something was found.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use prompting_fuzz::targets::{NAMES, by_name};
use prompting_fuzz::{Budget, fuzz};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        bail!(
            "usage: prompting-fuzz TARGET SECONDS [--execs N] [--seed S] [--python PATH] [--findings DIR]\ntargets: all {}",
            NAMES.join(" ")
        );
    }
    let seconds: f64 = args[1].parse().context("SECONDS")?;
    let mut execs = u64::MAX;
    let mut seed = 0x5eed_u64;
    let mut python = "python3".to_owned();
    let mut findings = PathBuf::from("target/fuzz/findings");
    let mut rest = args[2..].iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--execs" => execs = value.parse().context("--execs")?,
            "--seed" => seed = value.parse().context("--seed")?,
            "--python" => python = value.clone(),
            "--findings" => findings = PathBuf::from(value),
            _ => bail!("unknown flag {flag}"),
        }
    }
    let names: Vec<&str> = if args[0] == "all" {
        NAMES.to_vec()
    } else {
        vec![args[0].as_str()]
    };
    let budget = Budget {
        time: Duration::try_from_secs_f64(seconds).context("SECONDS")?,
        execs,
    };
    let mut found = 0;
    for name in names {
        let mut target =
            by_name(name, &python).with_context(|| format!("unknown target {name}"))?;
        let report = fuzz(target.as_mut(), budget, seed, Some(&findings));
        let secs = report.elapsed.as_secs_f64();
        println!(
            "{}: {} executions in {:.1} s ({:.0}/s), {} outcomes, corpus {}, {} findings",
            report.target,
            report.execs,
            secs,
            report.execs as f64 / secs.max(1e-9),
            report.outcomes,
            report.corpus,
            report.findings.len()
        );
        for note in &report.notes {
            println!("  {note}");
        }
        for finding in &report.findings {
            println!(
                "  FINDING {} (input {} bytes{})",
                finding.message,
                finding.input.len(),
                finding
                    .saved
                    .as_ref()
                    .map(|p| format!(", saved to {}", p.display()))
                    .unwrap_or_default()
            );
        }
        found += report.findings.len();
    }
    if found > 0 {
        std::process::exit(1);
    }
    Ok(())
}
