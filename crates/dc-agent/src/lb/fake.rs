//! An in-memory load balancer that behaves like HAProxy's runtime API where callers can tell:
//! servers arrive in maintenance, removal requires maintenance, unknown servers are refused.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{LbCommand, LbError, LoadBalancer, ServerState};

#[derive(Default)]
pub struct FakeLoadBalancer {
    backends: Mutex<BTreeMap<String, BTreeMap<String, ServerState>>>,
}

impl FakeLoadBalancer {
    /// A fake with these (empty) backends; other backends do not exist.
    pub fn with_backends(names: &[&str]) -> Self {
        let backends = names.iter().map(|n| (n.to_string(), BTreeMap::new())).collect();
        Self { backends: Mutex::new(backends) }
    }
}

impl LoadBalancer for FakeLoadBalancer {
    async fn servers(&self, backend: &str) -> Result<Vec<ServerState>, LbError> {
        let backends = self.backends.lock().expect("fake lb lock");
        let b = backends.get(backend).ok_or_else(|| LbError::Rejected {
            command: format!("show servers state {backend}"),
            response: "Can't find backend.".into(),
        })?;
        Ok(b.values().cloned().collect())
    }

    async fn execute(&self, command: &LbCommand) -> Result<(), LbError> {
        let mut backends = self.backends.lock().expect("fake lb lock");
        let rejected =
            |response: &str| LbError::Rejected { command: format!("{command:?}"), response: response.into() };
        let (backend, server) = match command {
            LbCommand::Add { backend, server, .. }
            | LbCommand::SetWeight { backend, server, .. }
            | LbCommand::Enable { backend, server }
            | LbCommand::Drain { backend, server }
            | LbCommand::Maintenance { backend, server }
            | LbCommand::Remove { backend, server } => (backend, server),
        };
        let b = backends.get_mut(backend).ok_or_else(|| rejected("No such backend."))?;
        if let LbCommand::Add { addr, port, weight, .. } = command {
            if b.contains_key(server) {
                return Err(rejected("Already exists a server with the same name in backend."));
            }
            let s = ServerState {
                name: server.clone(),
                addr: *addr,
                port: *port,
                weight: *weight,
                maintenance: true,
                draining: false,
            };
            b.insert(server.clone(), s);
            return Ok(());
        }
        let s = b.get_mut(server).ok_or_else(|| rejected("No such server."))?;
        match command {
            LbCommand::SetWeight { weight, .. } => s.weight = *weight,
            LbCommand::Enable { .. } => (s.maintenance, s.draining) = (false, false),
            LbCommand::Drain { .. } => (s.maintenance, s.draining) = (false, true),
            LbCommand::Maintenance { .. } => (s.maintenance, s.draining) = (true, false),
            LbCommand::Remove { .. } => {
                if !s.maintenance {
                    return Err(rejected("Only servers in maintenance mode can be deleted."));
                }
                b.remove(server);
            }
            LbCommand::Add { .. } => unreachable!("handled above"),
        }
        Ok(())
    }
}
