//! `fedctl cell ...`: talk to one site's cell master directly (its admin API), to see nodes,
//! apps and tasks, read why an app waits, and put nodes in or out of maintenance.

use std::path::Path;
use std::time::Duration;

use switchyard_proto::cell::v1 as pb;
use switchyard_proto::cell::v1::cell_admin_client::CellAdminClient;
use tonic::transport::{Channel, Endpoint};

use crate::CliError;
use crate::client::{ClientConfig, source_chain};
use crate::local::ClusterFile;
use crate::output::{Format, json, table};

/// Where the cell of `site` listens: `--cell` if given, else the local federation's
/// `cluster.json` in `dir`.
fn cell_url(site: &str, cell: Option<&str>, dir: &Path) -> Result<String, CliError> {
    if let Some(url) = cell {
        return Ok(url.to_string());
    }
    let cluster = ClusterFile::load(dir)?.ok_or_else(|| {
        CliError::Usage(format!("no local federation in {}; pass --cell https://HOST:PORT", dir.display()))
    })?;
    let known: Vec<&str> = cluster.sites.iter().map(|s| s.name.as_str()).collect();
    cluster
        .sites
        .iter()
        .find(|s| s.name == site)
        .map(|s| format!("https://{}", s.cell))
        .ok_or_else(|| CliError::Usage(format!("unknown site {site:?}; known: {}", known.join(", "))))
}

async fn connect(cfg: &ClientConfig, url: &str) -> Result<CellAdminClient<Channel>, CliError> {
    let bundle = cfg.tls.load().map_err(|e| CliError::Usage(format!("client certificate: {e}")))?;
    let uri: tonic::transport::Uri = url.parse().map_err(|e| CliError::Usage(format!("{url:?} is not a URL: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(CliError::Usage(format!("cell address {url:?} must use https://")));
    }
    let host = uri.host().unwrap_or("localhost").trim_start_matches('[').trim_end_matches(']').to_string();
    let channel = Endpoint::from(uri)
        .tls_config(bundle.client_tls(&host))
        .map_err(|e| CliError::Usage(format!("TLS configuration: {e}")))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| CliError::Unavailable(format!("cannot reach the cell at {url}: {}", source_chain(&e))))?;
    Ok(CellAdminClient::new(channel))
}

pub enum CellCommand {
    Nodes,
    Apps,
    Tasks { node: Option<String> },
    Roles,
    Kill { tasks: Vec<String>, app: Option<String> },
    Drain { node: String, drain: bool },
}

pub async fn run(
    cfg_path: &Path,
    site: &str,
    cell: Option<&str>,
    dir: &Path,
    command: CellCommand,
    output: Format,
) -> Result<(), CliError> {
    let url = cell_url(site, cell, dir)?;
    let mut client = connect(&ClientConfig::load(cfg_path)?, &url).await?;
    match command {
        CellCommand::Nodes => {
            let r = client.list_nodes(pb::ListNodesRequest {}).await?.into_inner();
            if output == Format::Json {
                println!("{}", json(&r));
                return Ok(());
            }
            let mut t = table(&["node", "address", "state", "tasks", "cpu (alloc/cap)", "mem MiB (alloc/cap)"]);
            for n in &r.nodes {
                let (cap, alloc) = (n.capacity.unwrap_or_default(), n.allocated.unwrap_or_default());
                t.add_row(vec![
                    n.node_id.clone(),
                    n.address.clone(),
                    n.state.clone(),
                    n.tasks.to_string(),
                    format!("{}/{}", alloc.cpu_millis, cap.cpu_millis),
                    format!("{}/{}", alloc.mem_mib, cap.mem_mib),
                ]);
            }
            println!("site {}\n{t}", r.site);
        }
        CellCommand::Apps => {
            let r = client.list_apps(pb::ListAppsRequest {}).await?.into_inner();
            if output == Format::Json {
                println!("{}", json(&r));
                return Ok(());
            }
            let mut t =
                table(&["group", "app", "desired", "running", "healthy", "current version", "epoch", "waiting for"]);
            for a in &r.apps {
                t.add_row(vec![
                    a.group.clone(),
                    a.app.clone(),
                    a.desired.to_string(),
                    a.running.to_string(),
                    a.healthy.to_string(),
                    format!("{} ({})", a.current, a.version),
                    a.epoch.to_string(),
                    if a.waiting_for.is_empty() { "-".into() } else { a.waiting_for.clone() },
                ]);
            }
            println!("site {}\n{t}", r.site);
        }
        CellCommand::Kill { tasks, app } => {
            let (group, app) = match app.as_deref().map(|a| a.split_once('/')) {
                None => (String::new(), String::new()),
                Some(Some((g, a))) => (g.to_string(), a.to_string()),
                Some(None) => return Err(CliError::Usage("--app takes GROUP/APP".into())),
            };
            let r = client.kill_tasks(pb::KillTasksRequest { task_ids: tasks, group, app }).await?.into_inner();
            if output == Format::Json {
                println!("{}", json(&r));
                return Ok(());
            }
            println!("killed (each is replaced): {}", r.killed.join(", "));
        }
        CellCommand::Roles => {
            let r = client.list_roles(pb::ListRolesRequest {}).await?.into_inner();
            if output == Format::Json {
                println!("{}", json(&r));
                return Ok(());
            }
            let amount = |r: Option<&switchyard_proto::common::v1::Resources>| {
                r.map_or_else(|| "-".to_string(), |r| format!("{} cpu / {} MiB", r.cpu_millis, r.mem_mib))
            };
            let mut t =
                table(&["role", "weight", "holds", "share", "guarantee", "limit", "reserved", "pending", "at limit"]);
            for role in &r.roles {
                t.add_row(vec![
                    role.name.clone(),
                    format!("{}", role.weight),
                    amount(role.held.as_ref()),
                    format!("{:.1}%", role.dominant_share * 100.0),
                    amount(role.guarantee.as_ref()),
                    role.limit.as_ref().map_or_else(|| "none".to_string(), |l| amount(Some(l))),
                    amount(role.reserved.as_ref()),
                    role.pending.to_string(),
                    if role.at_limit { "yes".into() } else { "no".into() },
                ]);
            }
            println!("site {}\n{t}", r.site);
            if !r.quota_error.is_empty() {
                println!("quota file refused (the quotas above stay in force): {}", r.quota_error);
            }
        }
        CellCommand::Tasks { node } => {
            let r = client.list_tasks(pb::ListTasksRequest { node_id: node.unwrap_or_default() }).await?.into_inner();
            if output == Format::Json {
                println!("{}", json(&r));
                return Ok(());
            }
            let mut t = table(&["task", "node", "address", "pid", "state", "healthy", "restarts", "message"]);
            for k in &r.tasks {
                let state = switchyard_proto::common::v1::TaskState::try_from(k.state)
                    .map_or("?".to_string(), |s| s.as_str_name().trim_start_matches("TASK_STATE_").to_lowercase());
                t.add_row(vec![
                    k.task_id.clone(),
                    k.node_id.clone(),
                    format!("{}:{}", k.address, k.port),
                    k.pid.to_string(),
                    state,
                    k.healthy.to_string(),
                    k.restarts.to_string(),
                    k.message.clone(),
                ]);
            }
            println!("site {}\n{t}", r.site);
        }
        CellCommand::Drain { node, drain } => {
            let r = client.drain_node(pb::DrainNodeRequest { node_id: node.clone(), drain }).await?.into_inner();
            if output == Format::Json {
                println!("{}", json(&r));
                return Ok(());
            }
            let state = r.node.map(|n| n.state).unwrap_or_default();
            let verb = if drain { "draining" } else { "back in service" };
            match (r.changed, drain) {
                (true, true) => println!(
                    "{node} is {verb}: nothing new lands there; each task stops once its replacement is ready \
                     (fedctl cell apps --site {site} shows what waits)"
                ),
                (true, false) => println!("{node} is {verb} (state {state})"),
                (false, _) => println!("{node} was already {verb} (state {state}); nothing changed"),
            }
        }
    }
    Ok(())
}
