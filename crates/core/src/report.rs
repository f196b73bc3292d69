//! What a cell reports about its site: nodes, capacity, and the instances of every group.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{AppName, GroupName, Resources, SiteName};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node_id: String,
    pub address: String,
    pub capacity: Resources,
    pub allocated: Resources,
    pub healthy: bool,
    /// Takes no new tasks (in maintenance); absent means schedulable.
    #[serde(default)]
    pub unschedulable: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub task_id: String,
    pub node_id: String,
    pub address: String,
    pub port: u32,
    pub pid: i64,
    pub running: bool,
    pub healthy: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppReport {
    pub desired: u32,
    pub instances: Vec<InstanceReport>,
    pub blocker: String,
}

impl AppReport {
    pub fn healthy(&self) -> u32 {
        self.instances.iter().filter(|i| i.running && i.healthy).count() as u32
    }
    pub fn running(&self) -> u32 {
        self.instances.iter().filter(|i| i.running).count() as u32
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReport {
    pub applied_epoch: u64,
    pub apps: BTreeMap<AppName, AppReport>,
    /// A stateful group's replica here: how far (ms of writes) it is behind the primary, as
    /// the replica last said. None: no replica here, or it could not tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_lag_ms: Option<u64>,
}

impl GroupReport {
    pub fn healthy(&self) -> u32 {
        self.apps.values().map(AppReport::healthy).sum()
    }
    pub fn running(&self) -> u32 {
        self.apps.values().map(AppReport::running).sum()
    }
    /// Instances present in any state (running, starting, backing off).
    pub fn present(&self) -> u32 {
        self.apps.values().map(|a| a.instances.len() as u32).sum()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellReport {
    pub site: SiteName,
    pub applied_epoch: u64,
    pub nodes: Vec<NodeReport>,
    pub groups: BTreeMap<GroupName, GroupReport>,
}

impl CellReport {
    /// What new tasks can use: capacity minus allocation of nodes that accept new tasks (a
    /// node in maintenance is healthy but takes nothing new).
    pub fn free(&self) -> Resources {
        self.nodes
            .iter()
            .filter(|n| n.healthy && !n.unschedulable)
            .map(|n| n.capacity.saturating_sub(n.allocated))
            .fold(Resources::default(), Resources::plus)
    }

    pub fn capacity(&self) -> Resources {
        self.nodes.iter().filter(|n| n.healthy).map(|n| n.capacity).fold(Resources::default(), Resources::plus)
    }

    pub fn allocated(&self) -> Resources {
        self.nodes.iter().filter(|n| n.healthy).map(|n| n.allocated).fold(Resources::default(), Resources::plus)
    }
}

/// A committed cell report and the leader-stamped time it was received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRecord {
    pub report: CellReport,
    pub received_at_ms: u64,
}

impl ReportRecord {
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.received_at_ms)
    }
}
