//! HAProxy's runtime API over its admin socket (`stats socket ... level admin`): one
//! connection per command, non-interactive mode, bounded by a timeout.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{LbCommand, LbError, LoadBalancer, ServerState};

const TIMEOUT: Duration = Duration::from_secs(3);
/// Answers are small; anything larger is a protocol error.
const MAX_ANSWER_BYTES: u64 = 4 * 1024 * 1024;

// srv_admin_state bits (HAProxy's SRV_ADMF_*): forced, inherited, config, resolution and
// hostname-resolution maintenance; forced and inherited drain.
const ADMIN_MAINT: u32 = 0x01 | 0x02 | 0x04 | 0x20 | 0x40;
const ADMIN_DRAIN: u32 = 0x08 | 0x10;

pub struct HaproxyRuntime {
    socket: PathBuf,
}

impl HaproxyRuntime {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into() }
    }

    /// Sends one command line and returns HAProxy's whole answer.
    pub async fn command(&self, line: &str) -> Result<String, LbError> {
        let unreachable = |reason: String| LbError::Unreachable { target: self.socket.display().to_string(), reason };
        let exchange = async {
            let mut stream =
                tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| unreachable(e.to_string()))?;
            stream.write_all(format!("{line}\n").as_bytes()).await.map_err(|e| unreachable(e.to_string()))?;
            let mut answer = String::new();
            (&mut stream)
                .take(MAX_ANSWER_BYTES)
                .read_to_string(&mut answer)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            Ok(answer)
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))?
    }

    async fn expect_ok(&self, line: String, success: &[&str]) -> Result<(), LbError> {
        let answer = self.command(&line).await?;
        let text = answer.trim();
        if text.is_empty() || success.iter().any(|s| text.starts_with(s)) {
            Ok(())
        } else {
            Err(LbError::Rejected { command: line, response: text.to_string() })
        }
    }
}

fn address(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("ipv6@{a}:{port}"),
    }
}

/// Parses `show servers state <backend>` (format version 1): a version line, a `#` header naming
/// the columns, then one line per server.
pub(crate) fn parse_servers_state(command: &str, text: &str) -> Result<Vec<ServerState>, LbError> {
    let protocol = |why: &str| LbError::Protocol { command: command.to_string(), response: format!("{why}: {text:?}") };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    match lines.next().map(str::trim) {
        Some("1") => {}
        Some(other) if other.starts_with("Can't find") || other.starts_with("No such") => {
            return Err(LbError::Rejected { command: command.to_string(), response: other.to_string() });
        }
        _ => return Err(protocol("expected format version 1")),
    }
    let header: Vec<&str> =
        lines.next().ok_or_else(|| protocol("no header"))?.trim_start_matches('#').split_whitespace().collect();
    let col = |name: &str| header.iter().position(|h| *h == name).ok_or_else(|| protocol(&format!("no column {name}")));
    let (name_i, addr_i, admin_i, weight_i, port_i) =
        (col("srv_name")?, col("srv_addr")?, col("srv_admin_state")?, col("srv_uweight")?, col("srv_port")?);
    let mut out = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        let get = |i: usize| f.get(i).copied().ok_or_else(|| protocol("short line"));
        let admin: u32 = get(admin_i)?.parse().map_err(|_| protocol("bad srv_admin_state"))?;
        out.push(ServerState {
            name: get(name_i)?.to_string(),
            addr: get(addr_i)?.parse().map_err(|_| protocol("bad srv_addr"))?,
            port: get(port_i)?.parse().map_err(|_| protocol("bad srv_port"))?,
            weight: get(weight_i)?.parse().map_err(|_| protocol("bad srv_uweight"))?,
            maintenance: admin & ADMIN_MAINT != 0,
            draining: admin & ADMIN_DRAIN != 0,
        });
    }
    Ok(out)
}

impl LoadBalancer for HaproxyRuntime {
    async fn servers(&self, backend: &str) -> Result<Vec<ServerState>, LbError> {
        let command = format!("show servers state {backend}");
        let text = self.command(&command).await?;
        parse_servers_state(&command, &text)
    }

    async fn execute(&self, command: &LbCommand) -> Result<(), LbError> {
        match command {
            LbCommand::Add { backend, server, addr, port, weight } => {
                self.expect_ok(
                    format!("add server {backend}/{server} {} weight {weight}", address(*addr, *port)),
                    &["New server registered."],
                )
                .await
            }
            LbCommand::SetWeight { backend, server, weight } => {
                self.expect_ok(format!("set server {backend}/{server} weight {weight}"), &[]).await
            }
            LbCommand::Enable { backend, server } => {
                self.expect_ok(format!("set server {backend}/{server} state ready"), &[]).await
            }
            LbCommand::Drain { backend, server } => {
                self.expect_ok(format!("set server {backend}/{server} state drain"), &[]).await
            }
            LbCommand::Maintenance { backend, server } => {
                self.expect_ok(format!("set server {backend}/{server} state maint"), &[]).await
            }
            LbCommand::Remove { backend, server } => {
                self.expect_ok(format!("del server {backend}/{server}"), &["Server deleted."]).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_servers_state() {
        let text = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 be_web 1 t1 127.0.0.1 0 1 10 10 0 1 0 0 0 0 0 0 - 18101 - 0 0 - - 0\n3 be_web 2 t2 127.0.0.2 2 8 20 20 1 6 3 4 6 0 0 0 - 18102 - 0 0 - - 0\n";
        let s = parse_servers_state("show", text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].name.as_str(), s[0].port, s[0].weight, s[0].maintenance, s[0].draining),
            ("t1", 18101, 10, true, false)
        );
        assert_eq!((s[1].addr.to_string().as_str(), s[1].maintenance, s[1].draining), ("127.0.0.2", false, true));
        assert!(parse_servers_state("show", "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port\n").unwrap().is_empty());
        assert!(matches!(parse_servers_state("show", "Can't find backend.\n"), Err(LbError::Rejected { .. })));
        assert!(matches!(parse_servers_state("show", "garbage"), Err(LbError::Protocol { .. })));
    }
}
