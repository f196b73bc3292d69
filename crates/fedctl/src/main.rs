//! `fedctl`: the operator's command line for Switchyard.
//!
//! Exit codes scripts can trust: 0 success; 1 the request was accepted but the operation
//! failed or needs attention; 2 bad input or a refused request (nothing changed); 3 the
//! federator could not be reached.

mod cell;
mod client;
mod dnsprobe;
mod local;
mod output;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use switchyard_proto::operator::v1 as pb;
use switchyard_tls::{CertAuthority, Identity, Role};

use crate::client::{ClientConfig, config_path, connect};
use crate::output::{Format, duration_ms, json, progress, table, time};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input or a request the federator refused; nothing changed.
    #[error("{0}")]
    Usage(String),
    /// Accepted, but the work did not succeed.
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Unavailable(String),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Unavailable(_) => 3,
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown => {
                CliError::Unavailable(format!("federator unavailable: {}", s.message()))
            }
            Code::PermissionDenied | Code::Unauthenticated => CliError::Usage(format!("denied: {}", s.message())),
            _ => CliError::Usage(format!("refused: {}", s.message())),
        }
    }
}

/// Operate a Switchyard federation.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Client configuration (default: $FEDCTL_CONFIG, then ./.switchyard/fedctl.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a complete local federation on loopback (federator, cells, nodes, DNS, sample apps).
    Up {
        #[arg(long, default_value = ".switchyard")]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        sites: u32,
        #[arg(long, default_value_t = 2)]
        nodes_per_site: u32,
        /// Give up (and stop everything) if not healthy within this many seconds.
        #[arg(long, default_value_t = 90)]
        timeout_s: u64,
        /// Do not start an HAProxy ingress per site (started only when haproxy is installed).
        #[arg(long)]
        no_ingress: bool,
        /// Federator replicas (a Raft cluster): 1, 3 or 5.
        #[arg(long, default_value_t = 1)]
        federators: u32,
        /// Run the app groups of this TOML file (`[[groups]]` tables, sample-app defaults)
        /// instead of the demo groups; see runbooks/site-evacuation.md.
        #[arg(long)]
        groups_file: Option<PathBuf>,
        /// Failure detection: how long both observers (federator, fed-dns) must see a site
        /// refused before it is declared down; see runbooks/dr-failover.md.
        #[arg(long, default_value_t = 10_000)]
        detect_window_ms: u64,
        /// How often each observer probes each site's ingress (50-60000).
        #[arg(long, default_value_t = 1_000)]
        probe_interval_ms: u64,
        /// An observer not heard from for this long is not evidence (above the probe interval).
        #[arg(long, default_value_t = 5_000)]
        detect_stale_ms: u64,
        /// Also run one fed-dns in each site (on the site's address, its own failure domain as
        /// an observer), which dies with its site.
        #[arg(long)]
        dns_per_site: bool,
    },
    /// Stop the local federation started with `fedctl up`.
    Down {
        #[arg(long, default_value = ".switchyard")]
        dir: PathBuf,
        /// Also delete its state, logs and certificates.
        #[arg(long)]
        purge: bool,
    },
    /// Stop one process of the local federation and start it again (e.g. `federator`).
    Restart {
        name: String,
        #[arg(long, default_value = ".switchyard")]
        dir: PathBuf,
    },
    /// Federation summary: leader, term, counts, audit head.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Sites with their cells' capacity and health.
    Sites {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// App groups with their placement, traffic weights and instance health.
    Groups {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// One group's spec: show it, or apply a changed one (a rolling upgrade on every site).
    #[command(subcommand)]
    Group(GroupCmd),
    /// Planned, make-before-break moves of an app group to another site.
    #[command(subcommand)]
    Switchover(SwitchoverCmd),
    /// Stop switchovers, spec changes and autoscaling in a scope (dr-admin, admin).
    #[command(subcommand)]
    Freeze(FreezeCmd),
    /// Drills: switchovers scheduled on purpose, with outcome and recovery time recorded.
    #[command(subcommand)]
    Drill(DrillCmd),
    /// Declare a site down by hand (you know it is gone before the detector does): its groups
    /// fail over to the survivors under the guard rails (dr-admin, admin).
    Failover {
        /// The site that is gone: all its groups.
        #[arg(long, required_unless_present = "group", conflicts_with = "group")]
        site: Option<String>,
        /// One group to move off its site, which stays in service for its other groups.
        #[arg(long)]
        group: Option<String>,
        /// Why; recorded in the audit history. Required.
        #[arg(long)]
        reason: String,
        /// Override the brake, cooldowns and rate limits for this site (named in the audit
        /// record); freezes and capacity still hold.
        #[arg(long)]
        break_glass: bool,
        /// Fail stateful groups over even when their replica is beyond the RPO budget (or its
        /// lag is unknown): you accept losing those writes. Recorded in the audit history.
        #[arg(long)]
        accept_data_loss: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// The automation brake.
    #[command(subcommand)]
    Brake(BrakeCmd),
    /// A site declared down.
    #[command(subcommand)]
    Site(SiteCmd),
    /// Disaster recovery: sites declared down, the brake, and what the guard rails hold back.
    #[command(subcommand)]
    Dr(DrCmd),
    /// The federator replicas: each one's view of the leader, term and applied index.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// The tamper-evident history.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Certificates for the local federation's CA.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// One site's cell master: nodes, apps, tasks, node maintenance.
    Cell {
        #[command(subcommand)]
        command: CellCmd,
        /// The site whose cell to talk to.
        #[arg(long, global = true, default_value = "site-1")]
        site: String,
        /// Cell admin address (https://HOST:PORT); default: from DIR/cluster.json.
        #[arg(long, global = true)]
        cell: Option<String>,
        #[arg(long, global = true, default_value = ".switchyard")]
        dir: PathBuf,
        #[arg(short, long, global = true, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Subcommand)]
enum CellCmd {
    /// Nodes with their state (up, draining, lost), tasks and allocation.
    Nodes,
    /// Apps with desired, running and healthy counts, and what each one waits for.
    Apps,
    /// Tasks with their node, address, pid, state and health.
    Tasks {
        /// Only tasks on this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Roles (tenants): what each holds, its DRF share, quota guarantee and limit, reservations.
    Roles,
    /// Kill tasks (drained from HAProxy first); the cell replaces them. A restart.
    Kill {
        /// Task ids (see `fedctl cell tasks`).
        tasks: Vec<String>,
        /// Instead of ids: every task of GROUP/APP on this site.
        #[arg(long)]
        app: Option<String>,
    },
    /// Put a node in maintenance: nothing new lands there and its tasks move off, make-before-break.
    Drain { node: String },
    /// End a node's maintenance.
    Undrain { node: String },
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Print the group's current spec as TOML, the form `group apply` takes.
    Show { group: String },
    /// Go back to the spec before the group's last change (cancels a rollout that cannot
    /// progress, or undoes a bad one).
    Rollback {
        group: String,
        #[arg(long)]
        reason: String,
    },
    /// Set an app's instance count where its group is active; `--instances 0` suspends it
    /// (the spec is kept; scale it up again to resume).
    Scale {
        group: String,
        app: String,
        #[arg(long)]
        instances: u32,
        /// Default: the group's single active site.
        #[arg(long, default_value = "")]
        site: String,
        #[arg(long)]
        reason: String,
    },
    /// Apply a group spec from a TOML file (`-` for stdin): changed apps are rolled out on every
    /// site running the group under their upgrade strategy; instance counts follow the file.
    Apply {
        file: PathBuf,
        /// Why (ticket, change id); recorded in the audit history. Required unless --dry-run.
        #[arg(long, default_value = "")]
        reason: String,
        /// Show what would change and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Asks every configured replica for its status; unreachable ones are listed as such.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// The committed voters and learners (a linearizable read).
    Members {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Add a replica (already running, with an empty data directory and a certificate naming
    /// fed-ID). It catches up from a snapshot and the log, then becomes a voter unless
    /// --learner. Admin only; audited.
    Add {
        #[arg(long)]
        id: u64,
        /// host:port of the new replica's gRPC port.
        #[arg(long)]
        address: String,
        /// Keep it a learner (it receives the log but does not vote).
        #[arg(long)]
        learner: bool,
        #[arg(long)]
        reason: String,
    },
    /// Remove a voter or learner. Stop its process afterwards; wipe its data directory before
    /// it ever joins again. Admin only; audited.
    Remove {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        reason: String,
    },
    /// Write a backup of the committed state to FILE (restore with `federator --restore-from`).
    /// Admin only; audited.
    Backup {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum FreezeCmd {
    /// Freeze SCOPE: global, group:NAME or site:NAME.
    Set {
        scope: String,
        /// Why (ticket, change window); recorded in the audit history.
        #[arg(long)]
        reason: String,
        /// End the freeze after this many seconds (default: until cleared).
        #[arg(long, default_value_t = 0)]
        for_s: u64,
    },
    /// End the freeze on SCOPE.
    Clear {
        scope: String,
        #[arg(long)]
        reason: String,
    },
    /// The freezes in force.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Subcommand)]
enum SiteCmd {
    /// Take a returned site back into service (dr-admin, admin): the fenced instances of the
    /// groups that failed over away from it are stopped; groups still served there stay.
    Reclaim {
        site: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum BrakeCmd {
    /// Let automation act again after a guard rail halted it (dr-admin, admin).
    Release {
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum DrCmd {
    /// Sites declared down (by whom, on what evidence), the brake, groups held and why.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Subcommand)]
enum DrillCmd {
    /// Schedule a drill: a switchover of GROUP to SITE at a time (default: at once).
    Schedule {
        #[arg(long)]
        group: String,
        #[arg(long)]
        to: String,
        /// When, in UTC: 2026-11-28T02:00:00Z.
        #[arg(long, conflicts_with = "in")]
        at: Option<String>,
        /// In how long: 90s, 30m, 2h, 1d.
        #[arg(long = "in")]
        r#in: Option<String>,
        #[arg(long)]
        reason: String,
    },
    /// Cancel a drill that has not started.
    Cancel {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// When each group was last exercised (outcome, recovery time) and what is scheduled.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Subcommand)]
enum SwitchoverCmd {
    /// Dry run: what moving groups (or every group of a site) to a site would do, step by step,
    /// with the capacity it needs, the time it should take, and go or no-go. Changes nothing.
    Plan {
        /// One group to move.
        #[arg(long, conflicts_with_all = ["groups", "site"])]
        group: Option<String>,
        /// Several groups, comma-separated, in the order to plan them.
        #[arg(long, value_delimiter = ',', conflicts_with = "site")]
        groups: Vec<String>,
        /// Evacuate this site: every group whose traffic is on it, most critical tier first.
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        to: String,
        /// Moves side by side the predicted duration assumes (as `start --concurrency`).
        #[arg(long, default_value_t = 4)]
        concurrency: u32,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Start moving GROUP to SITE: scale up there, verify, shift traffic in the group's ramp
    /// steps, drain, scale the source down. With --site (evacuate a whole site) or --groups,
    /// one evacuation moves them all: dependencies first, --concurrency at a time, and no new
    /// group once --failure-budget groups have failed.
    Start {
        #[arg(required_unless_present_any = ["site", "groups"], conflicts_with_all = ["site", "groups"])]
        group: Option<String>,
        /// Evacuate this site: every group whose traffic is on it.
        #[arg(long, conflicts_with = "groups")]
        site: Option<String>,
        /// Move these groups (comma-separated) as one evacuation.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Evacuation: groups moved side by side.
        #[arg(long, default_value_t = 4)]
        concurrency: u32,
        /// Evacuation: failed groups after which no new group starts.
        #[arg(long, default_value_t = 1)]
        failure_budget: u32,
        #[arg(long)]
        to: String,
        /// Start only if planning the move now gives this plan id (from `switchover plan`);
        /// refused, with the new id, if the federation changed the plan since.
        #[arg(long, default_value = "")]
        plan: String,
        /// Why (ticket, change id); recorded in the audit history.
        #[arg(long, default_value = "")]
        reason: String,
        /// Follow the operation until it finishes; exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
        /// With --wait: stop waiting after this many seconds (the operation continues).
        #[arg(long, default_value_t = 600)]
        wait_timeout_s: u64,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Stop taking steps until resumed; windows and timeouts do not run while paused.
    Pause {
        id: String,
        /// Why; recorded in the audit history. Required.
        #[arg(long)]
        reason: String,
    },
    /// Approve an operation waiting for a second person (its group's tier needs approval);
    /// refused for the person who started it.
    Approve {
        id: String,
        /// Why; recorded in the audit history. Required.
        #[arg(long)]
        reason: String,
    },
    /// Set which group tiers' moves wait for a second person's approval (empty: none).
    ApprovalPolicy {
        /// Comma-separated tiers, e.g. 0,1; an empty value turns approvals off.
        #[arg(long, value_delimiter = ',', num_args = 0..)]
        tiers: Vec<u32>,
        #[arg(long)]
        reason: String,
    },
    /// Set the weekly UTC windows in which planned moves may start; none: any time.
    /// Rollbacks are never held by them.
    Windows {
        /// A window like "sat,sun 01:00-05:00" (UTC); repeat for several. None clears them.
        #[arg(long = "window")]
        windows: Vec<String>,
        #[arg(long)]
        reason: String,
    },
    /// Set the largest DNS TTL a group may have for a planned move to start (0: no limit):
    /// with a longer one, clients keep answering the old site too long after the switch.
    TtlBudget {
        #[arg(long)]
        max_ttl_s: u32,
        #[arg(long)]
        reason: String,
    },
    /// Continue a paused operation where it stopped.
    Resume {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Stop safely where it is, every group left serving: before traffic moved the target is put
    /// back; after, the group stays on the target (the source keeps what it runs).
    Abort {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Put the group back where the operation found it: abort it if traffic never moved,
    /// otherwise start a switchover back to its source (aborting the operation first if needed).
    Rollback {
        id: String,
        #[arg(long)]
        reason: String,
        /// Follow the rollback switchover until it finishes.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 600)]
        wait_timeout_s: u64,
    },
    /// One operation in detail, or all operations.
    Status {
        id: Option<String>,
        /// Follow the operation: one progress line a second (phase time against its budget,
        /// total against the prediction, what it waits for) until it ends; exit 0 only if it
        /// succeeded. With `-o json`, one JSON object per line.
        #[arg(long, requires = "id")]
        watch: bool,
        /// With --watch: stop watching after this many seconds (the operation continues).
        #[arg(long, default_value_t = 3600)]
        watch_timeout_s: u64,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Every audit record: sequence, time, actor, action, subject, reason.
    List {
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 0)]
        limit: u32,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Issue a client certificate for an identity from the local CA in DIR/certs.
    Issue {
        /// viewer, operator, dr-admin, auditor or admin.
        role: String,
        name: String,
        #[arg(long, default_value = ".switchyard")]
        dir: PathBuf,
    },
    /// Issue a federator replica's certificate (identity federator:fed-ID, the node id it may
    /// speak for) from the local CA in DIR/certs, for the hosts it serves on.
    Replica {
        #[arg(long)]
        id: u64,
        /// Host names or addresses in the certificate (repeatable).
        #[arg(long = "host", default_values = ["127.0.0.1", "localhost"])]
        hosts: Vec<String>,
        #[arg(long, default_value = ".switchyard")]
        dir: PathBuf,
    },
}

/// A reader that stops early (`fedctl audit list | head`) closes the pipe: stop quietly, as
/// other command-line tools do, instead of reporting a panic.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info)
    }));
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let cfg_path = config_path(cli.config.as_deref());
    match cli.command {
        Cmd::Up {
            dir,
            sites,
            nodes_per_site,
            timeout_s,
            no_ingress,
            federators,
            groups_file,
            detect_window_ms,
            probe_interval_ms,
            detect_stale_ms,
            dns_per_site,
        } => {
            if ![1, 3, 5].contains(&federators) {
                return Err(CliError::Usage(format!("--federators {federators}: use 1, 3 or 5 replicas")));
            }
            local::up(local::UpArgs {
                dir,
                sites,
                nodes_per_site,
                timeout: Duration::from_secs(timeout_s),
                ingress: !no_ingress,
                federators,
                groups_file,
                detection: local::Detection {
                    window_ms: detect_window_ms,
                    probe_interval_ms,
                    stale_ms: detect_stale_ms,
                },
                dns_per_site,
            })
            .await
        }
        Cmd::Down { dir, purge } => {
            println!("{}", local::down(&dir, purge)?);
            Ok(())
        }
        Cmd::Restart { name, dir } => {
            println!("{}", local::restart(&dir, &name)?);
            Ok(())
        }
        Cmd::Certs(CertsCmd::Issue { role, name, dir }) => issue_cert(&dir, &role, &name),
        Cmd::Certs(CertsCmd::Replica { id, hosts, dir }) => issue_replica_cert(&dir, id, &hosts),
        Cmd::Status { output } => status(&cfg_path, output).await,
        Cmd::Cluster(ClusterCmd::Status { output }) => cluster_status(&cfg_path, output).await,
        Cmd::Cluster(ClusterCmd::Members { output }) => {
            let m = api(&cfg_path).await?.get_membership(pb::GetMembershipRequest {}).await?.into_inner();
            print_membership(&m, output);
            Ok(())
        }
        Cmd::Cluster(ClusterCmd::Add { id, address, learner, reason }) => {
            let change = if learner { pb::MembershipChange::AddLearner } else { pb::MembershipChange::AddVoter };
            let req = pb::ChangeMembershipRequest { change: change as i32, node_id: id, address, reason };
            let m = api(&cfg_path).await?.change_membership(req).await?.into_inner();
            println!("node {id} added as a {}", if learner { "learner" } else { "voter" });
            print_membership(&m, Format::Table);
            Ok(())
        }
        Cmd::Cluster(ClusterCmd::Remove { id, reason }) => {
            let change = pb::MembershipChange::Remove as i32;
            let req = pb::ChangeMembershipRequest { change, node_id: id, address: String::new(), reason };
            let m = api(&cfg_path).await?.change_membership(req).await?.into_inner();
            println!("node {id} removed; stop its process and wipe its data directory before it rejoins");
            print_membership(&m, Format::Table);
            Ok(())
        }
        Cmd::Cluster(ClusterCmd::Backup { out, reason }) => {
            let mut stream =
                api(&cfg_path).await?.take_snapshot(pb::TakeSnapshotRequest { reason }).await?.into_inner();
            let mut data = Vec::new();
            let mut first: Option<pb::SnapshotChunk> = None;
            while let Some(mut chunk) = stream.message().await? {
                data.append(&mut chunk.data);
                first.get_or_insert(chunk);
            }
            let first = first.ok_or_else(|| CliError::Failed("the federator sent no backup data".into()))?;
            if data.len() as u64 != first.total_bytes {
                return Err(CliError::Failed(format!(
                    "the backup arrived incomplete ({} of {} bytes); nothing was written",
                    data.len(),
                    first.total_bytes
                )));
            }
            let tmp = out.with_extension("partial");
            std::fs::write(&tmp, &data)
                .and_then(|()| std::fs::rename(&tmp, &out))
                .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", out.display())))?;
            println!(
                "backup {} written to {} ({} bytes, log index {}, term {})",
                first.snapshot_id,
                out.display(),
                data.len(),
                first.last_log_index,
                first.last_log_term
            );
            Ok(())
        }
        Cmd::Sites { output } => sites(&cfg_path, output).await,
        Cmd::Groups { output } => groups(&cfg_path, output).await,
        Cmd::Switchover(SwitchoverCmd::Start {
            group,
            site,
            groups,
            concurrency,
            failure_budget,
            to,
            plan,
            reason,
            wait,
            wait_timeout_s,
            output,
        }) => {
            let wait = wait.then(|| Duration::from_secs(wait_timeout_s));
            match group {
                Some(group) => {
                    let request = pb::StartSwitchoverRequest { group, to_site: to, reason, plan_id: plan };
                    switchover_start(&cfg_path, request, wait, output).await
                }
                None => {
                    let request = pb::StartEvacuationRequest {
                        from_site: site.unwrap_or_default(),
                        groups,
                        to_site: to,
                        reason,
                        plan_id: plan,
                        concurrency,
                        failure_budget,
                    };
                    let op = api(&cfg_path).await?.start_evacuation(request).await?.into_inner();
                    started(&cfg_path, op, wait, output).await
                }
            }
        }
        Cmd::Switchover(SwitchoverCmd::Plan { group, groups, site, to, concurrency, output }) => {
            let groups = match group {
                Some(g) => vec![g],
                None => groups,
            };
            if groups.is_empty() == site.is_none() {
                return Err(CliError::Usage(
                    "give --group, --groups or --site (an evacuation), and only one of them".into(),
                ));
            }
            let request =
                pb::PlanMovesRequest { groups, from_site: site.unwrap_or_default(), to_site: to, concurrency };
            switchover_plan(&cfg_path, request, output).await
        }
        Cmd::Switchover(SwitchoverCmd::Status { id: Some(id), watch: true, watch_timeout_s, output }) => {
            switchover_watch(&cfg_path, id, Duration::from_secs(watch_timeout_s), output).await
        }
        Cmd::Switchover(SwitchoverCmd::Status { id, output, .. }) => switchover_status(&cfg_path, id, output).await,
        Cmd::Switchover(SwitchoverCmd::Pause { id, reason }) => control(&cfg_path, id, "pause", reason).await,
        Cmd::Switchover(SwitchoverCmd::Resume { id, reason }) => control(&cfg_path, id, "resume", reason).await,
        Cmd::Switchover(SwitchoverCmd::Approve { id, reason }) => {
            let op = api(&cfg_path).await?.approve_operation(pb::ApproveOperationRequest { id, reason }).await?;
            let op = op.into_inner();
            println!("{}: approved; {} in {}", op.id, op.group, op.phase);
            Ok(())
        }
        Cmd::Switchover(SwitchoverCmd::TtlBudget { max_ttl_s, reason }) => {
            let request = pb::SetTtlBudgetRequest { max_ttl_s, reason };
            let set = api(&cfg_path).await?.set_ttl_budget(request).await?.into_inner();
            match set.max_ttl_s {
                0 => println!("no TTL budget: planned moves start whatever a group's TTL"),
                s => println!("planned moves start only for groups whose DNS TTL is at most {s}s"),
            }
            Ok(())
        }
        Cmd::Switchover(SwitchoverCmd::Windows { windows, reason }) => {
            let request = pb::SetChangeWindowsRequest { windows, reason };
            let set = api(&cfg_path).await?.set_change_windows(request).await?.into_inner();
            if set.windows.is_empty() {
                println!("no change windows: planned moves may start at any time");
            } else {
                println!("planned moves may start only inside: {}", set.windows.join("; "));
            }
            Ok(())
        }
        Cmd::Switchover(SwitchoverCmd::ApprovalPolicy { tiers, reason }) => {
            let request = pb::SetApprovalPolicyRequest { tiers, reason };
            let policy = api(&cfg_path).await?.set_approval_policy(request).await?.into_inner();
            if policy.tiers.is_empty() {
                println!("no tier needs approval");
            } else {
                let tiers: Vec<String> = policy.tiers.iter().map(u32::to_string).collect();
                println!("moves of tier {} groups wait for a second person's approval", tiers.join(", "));
            }
            Ok(())
        }
        Cmd::Switchover(SwitchoverCmd::Abort { id, reason }) => control(&cfg_path, id, "abort", reason).await,
        Cmd::Switchover(SwitchoverCmd::Rollback { id, reason, wait, wait_timeout_s }) => {
            let op = api(&cfg_path)
                .await?
                .rollback_operation(pb::RollbackOperationRequest { id: id.clone(), reason })
                .await?
                .into_inner();
            if op.id == id {
                println!("{id} aborted before traffic moved: {} is back where it was", op.group);
                return Ok(());
            }
            let from = if op.from_site.is_empty() { String::new() } else { format!(" {}", op.from_site) };
            println!("{id}: rolling back with {} ({}{from} -> {})", op.id, op.group, op.to_site);
            if !wait {
                println!("follow it with: fedctl switchover status {}", op.id);
                return Ok(());
            }
            follow_operation(&cfg_path, op, Duration::from_secs(wait_timeout_s), Format::Table).await
        }
        Cmd::Group(GroupCmd::Show { group }) => group_show(&cfg_path, group).await,
        Cmd::Group(GroupCmd::Rollback { group, reason }) => {
            let r =
                api(&cfg_path).await?.rollback_group(pb::RollbackGroupRequest { group, reason }).await?.into_inner();
            println!("{} (group epoch {})", if r.changed { "rolled back" } else { "nothing to change" }, r.epoch);
            for c in &r.changes {
                println!("  - {c}");
            }
            Ok(())
        }
        Cmd::Group(GroupCmd::Scale { group, app, instances, site, reason }) => {
            let r = api(&cfg_path)
                .await?
                .scale_app(pb::ScaleAppRequest { group: group.clone(), app: app.clone(), site, instances, reason })
                .await?
                .into_inner();
            let what = if instances == 0 { "suspended".to_string() } else { format!("scaled to {instances}") };
            if r.changed {
                println!("{group}/{app} {what} on {} (group epoch {})", r.site, r.epoch);
            } else {
                println!("{group}/{app} already at {instances} on {}", r.site);
            }
            Ok(())
        }
        Cmd::Drill(DrillCmd::Schedule { group, to, at, r#in, reason }) => {
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let at_ms = match (at, r#in) {
                (Some(at), _) => output::parse_time(&at).map_err(CliError::Usage)?,
                (None, Some(d)) => now + output::parse_duration(&d).map_err(CliError::Usage)?,
                (None, None) => 0,
            };
            let request = pb::ScheduleDrillRequest { group, to_site: to, at_ms, reason };
            let d = api(&cfg_path).await?.schedule_drill(request).await?.into_inner();
            println!("{} scheduled: {} to {} at {}", d.id, d.group, d.to_site, time(d.at_ms));
            Ok(())
        }
        Cmd::Drill(DrillCmd::Cancel { id, reason }) => {
            let d = api(&cfg_path).await?.cancel_drill(pb::CancelDrillRequest { id, reason }).await?.into_inner();
            println!("{}: {} ({})", d.id, d.status, d.detail);
            Ok(())
        }
        Cmd::Drill(DrillCmd::List { output }) => drill_list(&cfg_path, output).await,
        Cmd::Failover { site, group, reason, break_glass, accept_data_loss, output } => match (site, group) {
            (Some(site), _) => {
                let request = pb::DeclareSiteDownRequest { site, reason, break_glass, accept_data_loss };
                let status = api(&cfg_path).await?.declare_site_down(request).await?.into_inner();
                print_dr(&status, output);
                Ok(())
            }
            (None, Some(group)) => {
                let request = pb::FailoverGroupRequest { group, reason, break_glass, accept_data_loss };
                let op = api(&cfg_path).await?.failover_group(request).await?.into_inner();
                match output {
                    Format::Json => println!("{}", json(&op)),
                    Format::Table => println!(
                        "started {}: {} {} -> {}; follow it with: fedctl switchover status {}",
                        op.id, op.group, op.from_site, op.to_site, op.id
                    ),
                }
                Ok(())
            }
            (None, None) => Err(CliError::Usage("give --site or --group".into())),
        },
        Cmd::Site(SiteCmd::Reclaim { site, reason }) => {
            let status =
                api(&cfg_path).await?.reclaim_site(pb::ReclaimSiteRequest { site, reason }).await?.into_inner();
            print_dr(&status, Format::Table);
            Ok(())
        }
        Cmd::Brake(BrakeCmd::Release { reason }) => {
            let status = api(&cfg_path).await?.release_brake(pb::ReleaseBrakeRequest { reason }).await?.into_inner();
            print_dr(&status, Format::Table);
            Ok(())
        }
        Cmd::Dr(DrCmd::Status { output }) => {
            let status = api(&cfg_path).await?.get_dr_status(pb::GetDrStatusRequest {}).await?.into_inner();
            print_dr(&status, output);
            Ok(())
        }
        Cmd::Freeze(FreezeCmd::Set { scope, reason, for_s }) => {
            let f = api(&cfg_path)
                .await?
                .set_freeze(pb::SetFreezeRequest { scope, reason, duration_s: for_s })
                .await?
                .into_inner();
            let until =
                if f.until_ms == 0 { "until cleared".to_string() } else { format!("until {}", time(f.until_ms)) };
            println!("frozen: {} ({until}) by {}: {}", f.scope, f.actor, f.reason);
            Ok(())
        }
        Cmd::Freeze(FreezeCmd::Clear { scope, reason }) => {
            let r = api(&cfg_path).await?.clear_freeze(pb::ClearFreezeRequest { scope: scope.clone(), reason }).await?;
            println!(
                "{}",
                if r.into_inner().cleared { format!("cleared: {scope}") } else { format!("no freeze on {scope}") }
            );
            Ok(())
        }
        Cmd::Freeze(FreezeCmd::List { output }) => {
            let r = api(&cfg_path).await?.list_freezes(pb::ListFreezesRequest {}).await?.into_inner();
            match output {
                Format::Json => println!("{}", json(&r.freezes)),
                Format::Table => {
                    let mut t = table(&["scope", "since", "until", "by", "reason"]);
                    for f in &r.freezes {
                        let until = if f.until_ms == 0 { "cleared".to_string() } else { time(f.until_ms) };
                        t.add_row(vec![f.scope.clone(), time(f.since_ms), until, f.actor.clone(), f.reason.clone()]);
                    }
                    println!("{t}");
                }
            }
            Ok(())
        }
        Cmd::Group(GroupCmd::Apply { file, reason, dry_run, output }) => {
            group_apply(&cfg_path, &file, reason, dry_run, output).await
        }
        Cmd::Audit(AuditCmd::List { from, limit, output }) => audit_list(&cfg_path, from, limit, output).await,
        Cmd::Cell { command, site, cell: url, dir, output } => {
            let command = match command {
                CellCmd::Nodes => cell::CellCommand::Nodes,
                CellCmd::Apps => cell::CellCommand::Apps,
                CellCmd::Roles => cell::CellCommand::Roles,
                CellCmd::Kill { tasks, app } => cell::CellCommand::Kill { tasks, app },
                CellCmd::Tasks { node } => cell::CellCommand::Tasks { node },
                CellCmd::Drain { node } => cell::CellCommand::Drain { node, drain: true },
                CellCmd::Undrain { node } => cell::CellCommand::Drain { node, drain: false },
            };
            cell::run(&cfg_path, &site, url.as_deref(), &dir, command, output).await
        }
    }
}

async fn api(cfg_path: &Path) -> Result<pb::operator_client::OperatorClient<tonic::transport::Channel>, CliError> {
    connect(&ClientConfig::load(cfg_path)?).await
}

fn issue_replica_cert(dir: &Path, id: u64, hosts: &[String]) -> Result<(), CliError> {
    if id == 0 {
        return Err(CliError::Usage("node id 0 is reserved; use 1 or more".into()));
    }
    let name = format!("fed-{id}");
    let identity = Identity::new(Role::Federator, &name).map_err(|e| CliError::Usage(e.to_string()))?;
    let certs = dir.join("certs");
    let ca =
        CertAuthority::load(&certs).map_err(|e| CliError::Usage(format!("no local CA in {}: {e}", certs.display())))?;
    let files = ca
        .issue_to_dir(&certs, &format!("federator-{id}"), &identity, hosts)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    println!("issued {identity} for {}: {} and {}", hosts.join(", "), files.cert.display(), files.key.display());
    Ok(())
}

fn issue_cert(dir: &Path, role: &str, name: &str) -> Result<(), CliError> {
    let role: Role = role.parse().map_err(|e: switchyard_tls::IdentityError| CliError::Usage(e.to_string()))?;
    if !role.can_view() {
        return Err(CliError::Usage(format!(
            "{role} is a daemon role; issue viewer, operator, dr-admin, auditor or admin"
        )));
    }
    let id = Identity::new(role, name).map_err(|e| CliError::Usage(e.to_string()))?;
    let certs = dir.join("certs");
    let ca =
        CertAuthority::load(&certs).map_err(|e| CliError::Usage(format!("no local CA in {}: {e}", certs.display())))?;
    let stem = format!("{role}-{name}");
    let files = ca.issue_to_dir(&certs, &stem, &id, &[]).map_err(|e| CliError::Failed(e.to_string()))?;
    println!("issued {id}: {} and {}", files.cert.display(), files.key.display());
    Ok(())
}

async fn status(cfg: &Path, output: Format) -> Result<(), CliError> {
    let s = api(cfg).await?.get_status(pb::GetStatusRequest {}).await?.into_inner();
    match output {
        Format::Json => println!("{}", json(&s)),
        Format::Table => {
            let mut t = table(&["field", "value"]);
            t.add_row(vec!["this node".to_string(), s.node_id.to_string()]);
            t.add_row(vec![
                "leader".to_string(),
                if s.leader_id == 0 { "none".into() } else { s.leader_id.to_string() },
            ]);
            t.add_row(vec!["term".to_string(), s.term.to_string()]);
            t.add_row(vec!["last applied".to_string(), s.last_applied_index.to_string()]);
            t.add_row(vec!["zone".to_string(), s.zone.clone()]);
            t.add_row(vec!["sites".to_string(), s.sites.to_string()]);
            t.add_row(vec!["groups".to_string(), s.groups.to_string()]);
            t.add_row(vec!["operations in flight".to_string(), s.operations_in_flight.to_string()]);
            t.add_row(vec!["routing version".to_string(), s.routing_version.to_string()]);
            t.add_row(vec!["audit records".to_string(), s.audit_records.to_string()]);
            t.add_row(vec!["audit head".to_string(), s.audit_head_hash.clone()]);
            t.add_row(vec!["you are".to_string(), s.caller.clone()]);
            println!("{t}");
        }
    }
    Ok(())
}

/// One replica as `fedctl cluster status` shows it.
#[derive(serde::Serialize)]
struct ReplicaStatus {
    endpoint: String,
    reachable: bool,
    node_id: u64,
    leader_id: u64,
    term: u64,
    last_applied_index: u64,
    audit_head_hash: String,
    error: String,
}

async fn cluster_status(cfg_path: &Path, output: Format) -> Result<(), CliError> {
    let cfg = ClientConfig::load(cfg_path)?;
    let mut replicas = Vec::new();
    for endpoint in client::all_endpoints(&cfg) {
        let status = match client::connect_one(&cfg, &endpoint).await {
            Ok(mut api) => api
                .get_status(pb::GetStatusRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_string()),
            Err(e) => Err(e.to_string()),
        };
        replicas.push(match status {
            Ok(s) => ReplicaStatus {
                endpoint,
                reachable: true,
                node_id: s.node_id,
                leader_id: s.leader_id,
                term: s.term,
                last_applied_index: s.last_applied_index,
                audit_head_hash: s.audit_head_hash,
                error: String::new(),
            },
            Err(error) => ReplicaStatus {
                endpoint,
                reachable: false,
                node_id: 0,
                leader_id: 0,
                term: 0,
                last_applied_index: 0,
                audit_head_hash: String::new(),
                error,
            },
        });
    }
    match output {
        Format::Json => println!("{}", json(&replicas)),
        Format::Table => {
            let mut t = table(&["endpoint", "node", "leader", "term", "applied", "audit head", "note"]);
            for r in &replicas {
                t.add_row(vec![
                    r.endpoint.clone(),
                    if r.reachable { r.node_id.to_string() } else { "-".into() },
                    if r.leader_id == 0 { "-".into() } else { r.leader_id.to_string() },
                    r.term.to_string(),
                    r.last_applied_index.to_string(),
                    r.audit_head_hash.chars().take(12).collect(),
                    if r.reachable { String::new() } else { format!("unreachable: {}", r.error) },
                ]);
            }
            println!("{t}");
        }
    }
    if replicas.iter().any(|r| r.reachable) { Ok(()) } else { Err(CliError::Unavailable("no replica answered".into())) }
}

fn print_membership(m: &pb::Membership, output: Format) {
    match output {
        Format::Json => println!("{}", json(m)),
        Format::Table => {
            let mut t = table(&["node", "address", "role"]);
            for (members, role) in [(&m.voters, "voter"), (&m.learners, "learner")] {
                for v in members {
                    let role = if v.node_id == m.leader_id { "voter (leader)" } else { role };
                    t.add_row(vec![v.node_id.to_string(), v.address.clone(), role.to_string()]);
                }
            }
            println!("{t}");
            println!("term {}, membership committed at log index {}", m.term, m.log_index);
        }
    }
}

async fn sites(cfg: &Path, output: Format) -> Result<(), CliError> {
    let r = api(cfg).await?.list_sites(pb::ListSitesRequest {}).await?.into_inner();
    match output {
        Format::Json => println!("{}", json(&r.sites)),
        Format::Table => {
            let mut t = table(&[
                "site",
                "state",
                "ingress",
                "cell",
                "nodes",
                "cpu (alloc/cap)",
                "mem MiB (alloc/cap)",
                "epoch",
            ]);
            for s in &r.sites {
                let cap = s.capacity.unwrap_or_default();
                let alloc = s.allocated.unwrap_or_default();
                t.add_row(vec![
                    s.name.clone(),
                    s.state.clone(),
                    s.ingress.join(","),
                    if s.cell_connected {
                        format!("ok ({} ago)", duration_ms(s.report_age_ms as u64))
                    } else if s.report_age_ms < 0 {
                        "never reported".into()
                    } else {
                        format!("unknown (last {} ago)", duration_ms(s.report_age_ms as u64))
                    },
                    format!("{}/{}", s.nodes_healthy, s.nodes),
                    format!("{}/{}", alloc.cpu_millis, cap.cpu_millis),
                    format!("{}/{}", alloc.mem_mib, cap.mem_mib),
                    s.applied_epoch.to_string(),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(())
}

async fn group_show(cfg: &Path, group: String) -> Result<(), CliError> {
    let r = api(cfg).await?.get_group_spec(pb::GetGroupSpecRequest { group }).await?.into_inner();
    print!("{}", r.spec_toml);
    Ok(())
}

async fn group_apply(cfg: &Path, file: &Path, reason: String, dry_run: bool, output: Format) -> Result<(), CliError> {
    let spec_toml = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| CliError::Usage(format!("cannot read stdin: {e}")))?
    } else {
        std::fs::read_to_string(file).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?
    };
    let r = api(cfg).await?.update_group(pb::UpdateGroupRequest { spec_toml, reason, dry_run }).await?.into_inner();
    match output {
        Format::Json => println!("{}", json(&r)),
        Format::Table => {
            let verb = match (r.dry_run, r.changed) {
                (true, true) => "would change",
                (true, false) | (false, false) => "nothing to change",
                (false, true) => "changed",
            };
            println!("{verb} (group epoch {})", r.epoch);
            for c in &r.changes {
                println!("  - {c}");
            }
        }
    }
    Ok(())
}

async fn groups(cfg: &Path, output: Format) -> Result<(), CliError> {
    let r = api(cfg).await?.list_groups(pb::ListGroupsRequest {}).await?.into_inner();
    match output {
        Format::Json => println!("{}", json(&r.groups)),
        Format::Table => {
            let mut t = table(&[
                "group",
                "dns name",
                "ttl",
                "active",
                "placement (site: health, healthy/running of desired, weight)",
                "epoch",
                "operation",
            ]);
            for g in &r.groups {
                let placement: Vec<String> = g
                    .placement
                    .iter()
                    .map(|p| {
                        let want: u32 = p.instances.values().sum();
                        format!("{}: {}, {}/{} of {want}, w{}", p.site, p.health, p.healthy, p.running, p.weight)
                    })
                    .collect();
                t.add_row(vec![
                    g.name.clone(),
                    g.dns_name.clone(),
                    format!("{}s", g.ttl_s),
                    g.active_sites.join(","),
                    placement.join("\n"),
                    g.epoch.to_string(),
                    if g.operation.is_empty() { "-".into() } else { g.operation.clone() },
                ]);
            }
            println!("{t}");
        }
    }
    Ok(())
}

fn print_operation(o: &pb::Operation) {
    println!("operation {} ({} of {} from {} to {})", o.id, o.kind, o.group, o.from_site, o.to_site);
    println!("  outcome  {}   phase {}", o.outcome, o.phase);
    println!("  actor    {}   reason {:?}", o.actor, o.reason);
    println!("  started  {}   updated {}", time(o.created_at_ms), time(o.updated_at_ms));
    if o.finished_at_ms > 0 {
        println!("  finished {} (took {})", time(o.finished_at_ms), duration_ms(o.finished_at_ms - o.created_at_ms));
    }
    if !o.blocker.is_empty() {
        println!("  waiting  {}", o.blocker);
    }
    if !o.error.is_empty() {
        println!("  error    {}", o.error);
    }
    if !o.groups.is_empty() {
        println!("  concurrency {}   failure budget {}", o.concurrency, o.failure_budget);
        let mut t = table(&["group", "status", "operation", "phase", "traffic on target", "detail"]);
        for g in &o.groups {
            t.add_row(vec![
                g.group.clone(),
                g.status.clone(),
                g.operation_id.clone(),
                g.phase.clone(),
                format!("{}%", g.target_percent),
                g.detail.clone(),
            ]);
        }
        println!("{t}");
        return;
    }
    if o.ramp.len() > 1 {
        let steps: Vec<String> = o.ramp.iter().map(|p| format!("{p}%")).collect();
        println!("  ramp     {} (step {} of {})", steps.join(" → "), o.ramp_step, o.ramp.len());
    }
    let mut t = table(&["phase", "started", "took", "detail"]);
    for s in &o.steps {
        let took = if s.finished_at_ms > 0 { duration_ms(s.finished_at_ms - s.started_at_ms) } else { "…".into() };
        t.add_row(vec![s.phase.clone(), time(s.started_at_ms), took, s.detail.clone()]);
    }
    println!("{t}");
}

async fn control(cfg: &Path, id: String, control: &str, reason: String) -> Result<(), CliError> {
    let op = api(cfg)
        .await?
        .control_operation(pb::ControlOperationRequest { id, control: control.to_string(), reason })
        .await?
        .into_inner();
    let state = if op.outcome == "running" { op.blocker.clone() } else { op.outcome.clone() };
    let done = match control {
        "pause" => "paused",
        "resume" => "resumed",
        _ => "aborted",
    };
    println!("{}: {done}; {} in {} ({state})", op.id, op.group, op.phase);
    Ok(())
}

async fn switchover_plan(cfg: &Path, request: pb::PlanMovesRequest, output: Format) -> Result<(), CliError> {
    let reply = api(cfg).await?.plan_moves(request).await?.into_inner();
    if output == Format::Json {
        println!("{}", reply.plan_json);
        return Ok(());
    }
    let plan: switchyard_core::plan::MovePlan = serde_json::from_str(&reply.plan_json)
        .map_err(|e| CliError::Failed(format!("the federator sent a plan this fedctl cannot read: {e}")))?;
    let secs = |ms: u64| format!("{:.0}s", ms as f64 / 1000.0);
    println!(
        "plan {} → {}: {} group(s), needs {} of {} free; about {} ({} side by side, dependencies first)",
        plan.id,
        plan.to,
        plan.groups.len(),
        plan.needed,
        plan.target_free,
        secs(plan.predicted_ms),
        plan.concurrency
    );
    for g in &plan.groups {
        let from = g.from.as_deref().unwrap_or("?");
        match &g.refusal {
            Some(r) => println!("\n  {} (tier {}, {from} → {}): NO-GO: {r}", g.group, g.tier, plan.to),
            None => {
                println!(
                    "\n  {} (tier {}, {from} → {}): {} , about {}",
                    g.group,
                    g.tier,
                    plan.to,
                    g.needed,
                    secs(g.predicted_ms)
                );
                for (i, step) in g.steps.iter().enumerate() {
                    println!("    {}. {:<12} {:>5}  {}", i + 1, step.phase, secs(step.expected_ms), step.detail);
                }
            }
        }
    }
    if plan.go {
        println!("\nGO. Start with --plan {} to refuse if the plan changes first.", plan.id);
        Ok(())
    } else {
        println!("\nNO-GO:");
        for r in &plan.reasons {
            println!("  - {r}");
        }
        Err(CliError::Failed("the plan is no-go; nothing was started".into()))
    }
}

async fn switchover_start(
    cfg: &Path,
    request: pb::StartSwitchoverRequest,
    wait: Option<Duration>,
    output: Format,
) -> Result<(), CliError> {
    let op = api(cfg).await?.start_switchover(request).await?.into_inner();
    started(cfg, op, wait, output).await
}

/// Reports a started operation, then follows it with `--wait`.
async fn started(cfg: &Path, op: pb::Operation, wait: Option<Duration>, output: Format) -> Result<(), CliError> {
    let Some(wait) = wait else {
        match output {
            Format::Json => println!("{}", json(&op)),
            Format::Table => {
                println!("started {}; follow it with: fedctl switchover status {}", op.id, op.id);
            }
        }
        return Ok(());
    };
    if output == Format::Table {
        println!("started {}: {} {} -> {}", op.id, op.group, op.from_site, op.to_site);
    }
    follow_operation(cfg, op, wait, output).await
}

/// Follows `op` until it finishes (or `wait` passes), printing each phase and what it waits
/// for; Ok only if it succeeded.
async fn follow_operation(cfg: &Path, op: pb::Operation, wait: Duration, output: Format) -> Result<(), CliError> {
    let mut client = api(cfg).await?;
    let started = Instant::now();
    let mut last_phase = String::new();
    let mut last_blocker = String::new();
    let mut last_print = Instant::now();
    let op = loop {
        let op = match client.get_operation(pb::GetOperationRequest { id: op.id.clone() }).await {
            Ok(r) => r.into_inner(),
            // A restarting federator is expected during long operations; keep following.
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                client = api(cfg).await.unwrap_or(client);
                continue;
            }
            Err(s) => return Err(s.into()),
        };
        // Every phase change at once; a changing blocker (progress counters) at most every 2 s.
        let blocker_due = op.blocker != last_blocker && last_print.elapsed() >= Duration::from_secs(2);
        if output == Format::Table && (op.phase != last_phase || blocker_due) {
            last_print = Instant::now();
            let elapsed = duration_ms(started.elapsed().as_millis() as u64);
            if op.blocker.is_empty() {
                println!("  [{elapsed:>6}] {}", op.phase);
            } else {
                println!("  [{elapsed:>6}] {}: {}", op.phase, op.blocker);
            }
            last_phase = op.phase.clone();
            last_blocker = op.blocker.clone();
        }
        if op.outcome != "running" {
            break op;
        }
        if started.elapsed() > wait {
            return Err(CliError::Failed(format!(
                "{} still running after {}s (phase {}); it continues: fedctl switchover status {}",
                op.id,
                wait.as_secs(),
                op.phase,
                op.id
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    match output {
        Format::Json => println!("{}", json(&op)),
        Format::Table => print_operation(&op),
    }
    if op.outcome == "succeeded" {
        Ok(())
    } else {
        Err(CliError::Failed(format!("{} ended {}: {}", op.id, op.outcome, op.error)))
    }
}

async fn switchover_watch(cfg: &Path, id: String, limit: Duration, output: Format) -> Result<(), CliError> {
    let mut client = api(cfg).await?;
    let started = Instant::now();
    loop {
        let op = match client.get_operation(pb::GetOperationRequest { id: id.clone() }).await {
            Ok(r) => r.into_inner(),
            // A federator restarting or failing over: keep watching.
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                client = api(cfg).await.unwrap_or(client);
                continue;
            }
            Err(s) => return Err(s.into()),
        };
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        match output {
            Format::Json => println!("{}", serde_json::to_string(&op).expect("API messages serialize")),
            Format::Table if op.outcome == "running" => println!("{}", progress(&op, now)),
            Format::Table => print_operation(&op),
        }
        if op.outcome != "running" {
            return if op.outcome == "succeeded" {
                Ok(())
            } else {
                Err(CliError::Failed(format!("{} ended {}: {}", op.id, op.outcome, op.error)))
            };
        }
        if started.elapsed() > limit {
            return Err(CliError::Failed(format!("{id} still running after {}s; it continues", limit.as_secs())));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn switchover_status(cfg: &Path, id: Option<String>, output: Format) -> Result<(), CliError> {
    let mut client = api(cfg).await?;
    match id {
        Some(id) => {
            let op = client.get_operation(pb::GetOperationRequest { id }).await?.into_inner();
            match output {
                Format::Json => println!("{}", json(&op)),
                Format::Table => print_operation(&op),
            }
        }
        None => {
            let ops = client.list_operations(pb::ListOperationsRequest {}).await?.into_inner().operations;
            match output {
                Format::Json => println!("{}", json(&ops)),
                Format::Table => {
                    let mut t =
                        table(&["id", "group", "from", "to", "phase", "outcome", "actor", "started", "waiting for"]);
                    for o in &ops {
                        t.add_row(vec![
                            o.id.clone(),
                            o.group.clone(),
                            o.from_site.clone(),
                            o.to_site.clone(),
                            o.phase.clone(),
                            o.outcome.clone(),
                            o.actor.clone(),
                            time(o.created_at_ms),
                            o.blocker.clone(),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
    }
    Ok(())
}

fn print_dr(s: &pb::DrStatus, output: Format) {
    if output == Format::Json {
        println!("{}", json(s));
        return;
    }
    if s.brake.is_empty() {
        println!("automation: running ({} automatic failovers in the last 10 min)", s.recent_failovers);
    } else {
        println!("automation: BRAKED by {} at {}: {}", s.brake_by, time(s.brake_at_ms), s.brake);
        println!("  release it with: fedctl brake release --reason \"...\"");
    }
    if s.down_sites.is_empty() {
        println!("no site is declared down");
    }
    for d in &s.down_sites {
        let how = if d.manual_reason.is_empty() {
            format!("on the evidence of {}", d.observers.join(", "))
        } else {
            format!("by hand: {}", d.manual_reason)
        };
        let glass = if d.break_glass.is_empty() {
            String::new()
        } else {
            format!(" [break-glass: {}]", d.break_glass.join(", "))
        };
        println!("site {} declared down at {} by {} {how}{glass}", d.site, time(d.at_ms), d.actor);
    }
    for g in &s.down_groups {
        println!(
            "group {} declared down at {} at {} on the evidence of {}",
            g.group,
            g.site,
            time(g.at_ms),
            g.observers.join(", ")
        );
    }
    if !s.held.is_empty() {
        let mut t = table(&["site", "group", "held by", "detail"]);
        for h in &s.held {
            t.add_row(vec![h.site.clone(), h.group.clone(), h.rule.clone(), h.detail.clone()]);
        }
        println!("{t}");
    }
    if !s.fenced.is_empty() {
        println!("failed over, old site fenced (nothing deleted):");
        let mut t = table(&["group", "fenced on", "since", "failback"]);
        for f in &s.fenced {
            t.add_row(vec![f.group.clone(), f.site.clone(), time(f.since_ms), f.failback.clone()]);
        }
        println!("{t}");
    }
}

async fn drill_list(cfg: &Path, output: Format) -> Result<(), CliError> {
    let mut client = api(cfg).await?;
    let drills = client.list_drills(pb::ListDrillsRequest {}).await?.into_inner().drills;
    if output == Format::Json {
        println!("{}", json(&drills));
        return Ok(());
    }
    let groups = client.list_groups(pb::ListGroupsRequest {}).await?.into_inner().groups;
    // Per group (every group, drilled or not): the last drill that ran, and the next one.
    let mut by_group: std::collections::BTreeMap<&str, (Option<&pb::Drill>, Option<&pb::Drill>)> =
        groups.iter().map(|g| (g.name.as_str(), (None, None))).collect();
    for d in &drills {
        let entry = by_group.entry(d.group.as_str()).or_default();
        if d.status == "scheduled" {
            if entry.1.is_none_or(|n| d.at_ms < n.at_ms) {
                entry.1 = Some(d);
            }
        } else if !d.operation_id.is_empty() && entry.0.is_none_or(|l| d.at_ms >= l.at_ms) {
            entry.0 = Some(d);
        }
    }
    let mut t = table(&["group", "last exercised", "outcome", "RTO", "drill", "next scheduled"]);
    for (group, (last, next)) in &by_group {
        t.add_row(vec![
            group.to_string(),
            last.map_or("never".into(), |d| time(d.at_ms)),
            last.map_or("-".into(), |d| d.status.clone()),
            last.filter(|d| d.rto_ms > 0).map_or("-".into(), |d| duration_ms(d.rto_ms)),
            last.map_or("-".into(), |d| d.id.clone()),
            next.map_or("-".into(), |d| format!("{} ({})", time(d.at_ms), d.id)),
        ]);
    }
    println!("{t}");
    Ok(())
}

async fn audit_list(cfg: &Path, from: u64, limit: u32, output: Format) -> Result<(), CliError> {
    let records =
        api(cfg).await?.list_audit(pb::ListAuditRequest { from_sequence: from, limit }).await?.into_inner().records;
    match output {
        Format::Json => println!("{}", json(&records)),
        Format::Table => {
            let mut t = table(&["seq", "time", "actor", "action", "subject", "reason", "detail"]);
            for r in &records {
                let detail: serde_json::Value = serde_json::from_str(&r.detail_json).unwrap_or_default();
                let summary = ["step", "operation", "error"]
                    .iter()
                    .filter_map(|k| detail.get(*k).and_then(|v| v.as_str()).map(|v| format!("{k}: {v}")))
                    .collect::<Vec<_>>()
                    .join("; ");
                t.add_row(vec![
                    r.sequence.to_string(),
                    time(r.time_ms),
                    r.actor.clone(),
                    r.action.clone(),
                    r.subject.clone(),
                    r.reason.clone(),
                    summary,
                ]);
            }
            println!("{t}");
        }
    }
    Ok(())
}
