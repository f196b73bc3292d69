//! The pure difference between what a backend has and what the cell wants.

use std::collections::BTreeMap;

use super::{Endpoint, LbError, MAX_WEIGHT, ServerState};

/// One runtime change to a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LbCommand {
    /// Adds a server; it starts in maintenance and gets traffic only once enabled.
    Add {
        backend: String,
        server: String,
        addr: std::net::IpAddr,
        port: u16,
        weight: u16,
    },
    SetWeight {
        backend: String,
        server: String,
        weight: u16,
    },
    /// Takes traffic (state ready).
    Enable {
        backend: String,
        server: String,
    },
    /// Keeps its sessions, takes no new ones (state drain).
    Drain {
        backend: String,
        server: String,
    },
    /// No traffic at all (state maint); required before removal.
    Maintenance {
        backend: String,
        server: String,
    },
    /// Removes a server that is in maintenance.
    Remove {
        backend: String,
        server: String,
    },
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 100 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Commands that turn `current` into `desired`, in an order that never sends traffic to an
/// endpoint before it is ready: additions arrive in maintenance and are enabled only when
/// ready; changed addresses are replaced (maintenance, remove, add); servers no longer wanted
/// go to maintenance and are removed. Deterministic (ordered by server name).
pub fn plan_backend(backend: &str, current: &[ServerState], desired: &[Endpoint]) -> Result<Vec<LbCommand>, LbError> {
    if !valid_name(backend) {
        return Err(LbError::Invalid(format!("backend name {backend:?} must be 1-100 characters of [A-Za-z0-9._-]")));
    }
    let mut want = BTreeMap::new();
    for e in desired {
        if !valid_name(&e.name) {
            return Err(LbError::Invalid(format!(
                "server name {:?} must be 1-100 characters of [A-Za-z0-9._-]",
                e.name
            )));
        }
        if e.weight > MAX_WEIGHT {
            return Err(LbError::Invalid(format!("server {}: weight {} exceeds {MAX_WEIGHT}", e.name, e.weight)));
        }
        if e.port == 0 {
            return Err(LbError::Invalid(format!("server {}: port 0", e.name)));
        }
        if want.insert(e.name.as_str(), e).is_some() {
            return Err(LbError::Invalid(format!("server {} is listed twice", e.name)));
        }
    }
    let have: BTreeMap<&str, &ServerState> = current.iter().map(|s| (s.name.as_str(), s)).collect();
    let b = || backend.to_string();
    let mut out = Vec::new();
    for (name, s) in &have {
        let server = name.to_string();
        match want.get(name) {
            Some(e) if e.addr == s.addr && e.port == s.port => {
                if e.weight != s.weight {
                    out.push(LbCommand::SetWeight { backend: b(), server: server.clone(), weight: e.weight });
                }
                if e.ready && (s.maintenance || s.draining) {
                    out.push(LbCommand::Enable { backend: b(), server });
                } else if !e.ready && !s.maintenance && !s.draining {
                    out.push(LbCommand::Drain { backend: b(), server });
                }
            }
            // Gone, or moved to another address: take it out of rotation, then remove it.
            _ => {
                if !s.maintenance {
                    out.push(LbCommand::Maintenance { backend: b(), server: server.clone() });
                }
                out.push(LbCommand::Remove { backend: b(), server });
            }
        }
    }
    for (name, e) in &want {
        let replaced = have.get(name).is_some_and(|s| s.addr != e.addr || s.port != e.port);
        if have.contains_key(name) && !replaced {
            continue;
        }
        let server = name.to_string();
        out.push(LbCommand::Add { backend: b(), server: server.clone(), addr: e.addr, port: e.port, weight: e.weight });
        if e.ready {
            out.push(LbCommand::Enable { backend: b(), server });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(name: &str, port: u16, weight: u16, ready: bool) -> Endpoint {
        Endpoint { name: name.into(), addr: "127.0.0.1".parse().unwrap(), port, weight, ready }
    }

    fn st(name: &str, port: u16, weight: u16, maintenance: bool) -> ServerState {
        ServerState {
            name: name.into(),
            addr: "127.0.0.1".parse().unwrap(),
            port,
            weight,
            maintenance,
            draining: false,
        }
    }

    fn cmd_names(cmds: &[LbCommand]) -> Vec<String> {
        cmds.iter()
            .map(|c| match c {
                LbCommand::Add { server, .. } => format!("add {server}"),
                LbCommand::SetWeight { server, weight, .. } => format!("weight {server} {weight}"),
                LbCommand::Enable { server, .. } => format!("enable {server}"),
                LbCommand::Drain { server, .. } => format!("drain {server}"),
                LbCommand::Maintenance { server, .. } => format!("maint {server}"),
                LbCommand::Remove { server, .. } => format!("remove {server}"),
            })
            .collect()
    }

    #[test]
    fn new_ready_endpoints_are_added_then_enabled() {
        let cmds = plan_backend("be", &[], &[ep("a", 1, 10, true), ep("b", 2, 10, false)]).unwrap();
        assert_eq!(cmd_names(&cmds), ["add a", "enable a", "add b"]);
    }

    #[test]
    fn converged_backend_needs_nothing() {
        let cmds = plan_backend("be", &[st("a", 1, 10, false)], &[ep("a", 1, 10, true)]).unwrap();
        assert!(cmds.is_empty(), "{cmds:?}");
    }

    #[test]
    fn removed_and_moved_servers_leave_rotation_before_removal() {
        let current = [st("a", 1, 10, false), st("b", 2, 10, true), st("c", 3, 10, false)];
        let cmds = plan_backend("be", &current, &[ep("c", 4, 10, true)]).unwrap();
        assert_eq!(cmd_names(&cmds), ["maint a", "remove a", "remove b", "maint c", "remove c", "add c", "enable c"]);
    }

    #[test]
    fn weight_and_readiness_changes() {
        let current = [st("a", 1, 10, false), st("b", 2, 10, true)];
        let cmds = plan_backend("be", &current, &[ep("a", 1, 0, false), ep("b", 2, 20, true)]).unwrap();
        assert_eq!(cmd_names(&cmds), ["weight a 0", "drain a", "weight b 20", "enable b"]);
    }

    #[test]
    fn bad_input_is_refused_whole() {
        assert!(plan_backend("be web", &[], &[]).is_err());
        let err = plan_backend("be", &[], &[ep("a;del", 1, 1, true)]).unwrap_err();
        assert!(err.to_string().contains("a;del"), "{err}");
        assert!(plan_backend("be", &[], &[ep("a", 1, 257, true)]).is_err());
        assert!(plan_backend("be", &[], &[ep("a", 1, 1, true), ep("a", 2, 1, true)]).is_err());
    }
}
