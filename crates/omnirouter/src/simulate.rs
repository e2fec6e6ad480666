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
    #[arg(long, value_name = "MAX_AGENTS", conflicts_with = "replay")]
    pub search: Option<u32>,
    /// Replay a recorded day instead of the profile's arrivals and roster: the records of
    /// omni.inbound.v1, omni.commands.v1 and omni.routing.v1 as JSON lines (a CloudEvent per
    /// line, or kcat -J output), through the profile's routing.
    #[arg(long, value_name = "RECORDS", requires = "tenant")]
    pub replay: Option<std::path::PathBuf>,
    /// The tenant whose records are replayed.
    #[arg(long)]
    pub tenant: Option<String>,
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
    if let (Some(path), Some(tenant)) = (&args.replay, &args.tenant) {
        let recorded = match omni_sim::recorded::read(path, tenant) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: records {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        out.push_str(&format!(
            "replayed {} customers and {} agent commands of tenant {tenant} ({} records skipped)\n",
            recorded.arrivals.len(),
            recorded.agents.len(),
            recorded.skipped
        ));
        return print_report(args, out, &omni_sim::replay(&profile, &recorded), started);
    }
    if profile.arrivals.is_empty() || profile.roster.is_empty() {
        eprintln!(
            "error: profile {}: arrivals and roster: needs at least one of each (or --replay a recorded day)",
            args.profile.display()
        );
        return ExitCode::from(2);
    }
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
    print_report(args, out, &report, started)
}

/// Prints `out` and the report (or its CSV, for `--csv -`), and writes the CSV file.
fn print_report(
    args: &SimulateArgs,
    mut out: String,
    report: &omni_sim::Report,
    started: std::time::Instant,
) -> ExitCode {
    let to_stdout = args.csv.as_deref() == Some(Path::new("-"));
    if to_stdout {
        // Standard output holds the CSV alone; what comes before it goes to standard error.
        eprint!("{out}");
        out = report.csv();
    } else {
        out.push_str(&report.table());
    }
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
