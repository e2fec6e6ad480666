//! `omnirouter simulate`: a profile's day through the routing engine, printed as a table (and
//! written as CSV), or the smallest roster that meets the profile's target.

use omni_sim::search::smallest_roster;
use omni_sim::{simulate, Profile};
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

/// What to simulate and where the results go.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The day to simulate (TOML; see config/simulate.example.toml for every key).
    pub profile: std::path::PathBuf,
    /// Also write the report as CSV to this file (`-`: standard output, instead of the table).
    #[arg(long)]
    pub csv: Option<std::path::PathBuf>,
    /// Search the smallest roster, up to this many agents in all, that meets the profile's
    /// target (each group keeps its share of the agents).
    #[arg(long, value_name = "MAX_AGENTS")]
    pub search: Option<u32>,
}

/// Runs the subcommand: 0 when done (for a search: when a roster was found), 1 when no roster
/// up to the limit meets the target or the CSV cannot be written, 2 for a bad profile.
pub fn run(args: &SimulateArgs) -> ExitCode {
    let profile = match Profile::load(&args.profile) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: profile {}: {e}", args.profile.display());
            return ExitCode::from(2);
        }
    };
    let started = std::time::Instant::now();
    let mut out = String::new();
    let report = match args.search {
        None => simulate(&profile),
        Some(limit) => match smallest_roster(&profile, limit) {
            Some(found) => {
                out.push_str("smallest roster meeting the target:\n");
                for (group, count) in profile.roster.iter().zip(&found.counts) {
                    out.push_str(&format!(
                        "  {:<16} {count} agents (profile: {})\n",
                        group.name, group.count
                    ));
                }
                found.report
            }
            None => {
                eprintln!(
                    "no roster of up to {limit} agents meets {:.0}% within {}s",
                    profile.target.service_level * 100.0,
                    profile.target.within_secs
                );
                return ExitCode::FAILURE;
            }
        },
    };
    let to_stdout = args.csv.as_deref() == Some(Path::new("-"));
    out.push_str(&if to_stdout {
        report.csv()
    } else {
        report.table()
    });
    if let Err(e) = std::io::stdout().lock().write_all(out.as_bytes()) {
        eprintln!("error: writing the report: {e}");
        return ExitCode::FAILURE;
    }
    let offered: u64 = report.queues.iter().map(|q| q.total().offered).sum();
    eprintln!(
        "simulated {offered} conversations in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = args.csv.as_deref().filter(|_| !to_stdout) {
        if let Err(e) = std::fs::write(path, report.csv()) {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
