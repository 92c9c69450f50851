//! `skein-load`: Skein's load harness.
//!
//! - `skein-load run --profile quick --out DIR` starts provider simulators and a cluster of its
//!   own (or drives one with `--target`), submits an open-loop load with the leader, the
//!   sender and the edge killed part-way, and writes `DIR/report.json` and `DIR/report.html`: rates, latencies, and the
//!   verdicts the simulators count (lost, duplicates, limit violations). Exits 1 when anything
//!   was lost or a limit was exceeded.
//! - `skein-load blast SERVER` submits as fast as the server answers and prints the rate and
//!   final-dot-to-250 latency: the bench scripts compare Skein with Postfix by it.

use clap::Parser;
use skein_load::{blast, run};

#[derive(Parser)]
#[command(about = "Skein's load harness")]
enum Cli {
    /// Run a profile against simulated providers; write report.json and report.html.
    Run(Box<run::Args>),
    /// Submit as fast as the server answers; print rate and latency.
    Blast(blast::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse() {
        Cli::Run(a) => {
            if !run::run(*a).await? {
                std::process::exit(1);
            }
            Ok(())
        }
        Cli::Blast(a) => blast::run(a).await,
    }
}
