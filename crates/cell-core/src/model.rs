//! Types every part of the resource manager shares: resources, nodes and roles.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type NodeId = String;
pub type RoleName = String;

/// Scalar resources; units are in the field names. Ports are tracked separately (`PortRange`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub mem_mib: u64,
    pub disk_mib: u64,
}

impl Resources {
    pub const ZERO: Resources = Resources { cpu_millis: 0, mem_mib: 0, disk_mib: 0 };

    pub const fn new(cpu_millis: u64, mem_mib: u64, disk_mib: u64) -> Self {
        Self { cpu_millis, mem_mib, disk_mib }
    }

    pub fn plus(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            mem_mib: self.mem_mib.saturating_add(o.mem_mib),
            disk_mib: self.disk_mib.saturating_add(o.disk_mib),
        }
    }

    /// `self - o`, floored at zero in every dimension.
    pub fn minus(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            mem_mib: self.mem_mib.saturating_sub(o.mem_mib),
            disk_mib: self.disk_mib.saturating_sub(o.disk_mib),
        }
    }

    /// `self - o` if `o` fits inside `self`.
    pub fn checked_minus(self, o: Resources) -> Option<Resources> {
        o.fits_in(self).then(|| self.minus(o))
    }

    pub fn times(self, n: u64) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_mul(n),
            mem_mib: self.mem_mib.saturating_mul(n),
            disk_mib: self.disk_mib.saturating_mul(n),
        }
    }

    /// Whether `self` fits inside `available` in every dimension.
    pub fn fits_in(self, available: Resources) -> bool {
        self.cpu_millis <= available.cpu_millis
            && self.mem_mib <= available.mem_mib
            && self.disk_mib <= available.disk_mib
    }

    pub fn is_zero(self) -> bool {
        self == Resources::ZERO
    }

    /// The largest share of `total` this amount represents over all dimensions `total` has
    /// (the dominant share of DRF). Dimensions where `total` is zero are ignored.
    pub fn dominant_share(self, total: Resources) -> f64 {
        let share = |used: u64, all: u64| if all == 0 { 0.0 } else { used as f64 / all as f64 };
        share(self.cpu_millis, total.cpu_millis)
            .max(share(self.mem_mib, total.mem_mib))
            .max(share(self.disk_mib, total.disk_mib))
    }
}

impl std::fmt::Display for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cpu_millis={} mem_mib={} disk_mib={}", self.cpu_millis, self.mem_mib, self.disk_mib)
    }
}

/// An inclusive range of ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    pub fn len(self) -> u32 {
        if self.max < self.min { 0 } else { u32::from(self.max - self.min) + 1 }
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    pub fn contains(self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Accepts new tasks.
    #[default]
    Up,
    /// Maintenance: nothing new lands here; running tasks are moved off gracefully.
    Draining,
    /// Missed its heartbeats; its tasks are rescheduled elsewhere.
    Lost,
}

/// A host of the site as the resource manager sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    /// Attributes constraints match on: `hostname`, `rack`, `zone` and custom labels.
    pub attributes: BTreeMap<String, String>,
    pub total: Resources,
    pub ports: Vec<PortRange>,
    /// Static reservations: part of `total` that only the named role may use.
    pub reserved: BTreeMap<RoleName, Resources>,
    pub state: NodeState,
}

impl Node {
    /// Attribute value, where `hostname` falls back to the node id.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        match self.attributes.get(name) {
            Some(v) => Some(v.as_str()),
            None if name == "hostname" => Some(self.id.as_str()),
            None => None,
        }
    }

    /// Resources not reserved for any role.
    pub fn unreserved(&self) -> Resources {
        self.reserved.values().fold(self.total, |acc, r| acc.minus(*r))
    }

    pub fn accepts_new_tasks(&self) -> bool {
        self.state == NodeState::Up
    }
}

/// A tenant of the site. Weights scale its fair share; the guarantee is allocated before any
/// fair sharing; the limit caps what it may hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Role {
    pub name: RoleName,
    /// Relative share; must be > 0. A role with weight 2 gets twice the dominant share.
    pub weight: f64,
    /// Quota guarantee: resources the role gets before fair sharing, if it asks for them.
    pub guarantee: Resources,
    /// Quota limit: the most the role may hold; `None` is unlimited.
    pub limit: Option<Resources>,
}

impl Role {
    pub fn new(name: impl Into<RoleName>) -> Self {
        Role { name: name.into(), weight: 1.0, guarantee: Resources::ZERO, limit: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dominant_share_is_the_largest_fraction() {
        let total = Resources::new(9_000, 18_432, 0);
        // DRF paper: user A's task <1 CPU, 4 GB> on <9 CPU, 18 GB> has dominant share 4/18 (memory).
        let a = Resources::new(1_000, 4_096, 0);
        assert!((a.dominant_share(total) - 4.0 / 18.0).abs() < 1e-9);
        assert_eq!(Resources::ZERO.dominant_share(total), 0.0);
    }

    #[test]
    fn unreserved_subtracts_every_reservation() {
        let node = Node {
            id: "n1".into(),
            attributes: BTreeMap::new(),
            total: Resources::new(4_000, 8_192, 0),
            ports: vec![PortRange { min: 31_000, max: 31_009 }],
            reserved: BTreeMap::from([("db".to_string(), Resources::new(1_000, 1_024, 0))]),
            state: NodeState::Up,
        };
        assert_eq!(node.unreserved(), Resources::new(3_000, 7_168, 0));
        assert_eq!(node.attribute("hostname"), Some("n1"));
        assert_eq!(node.ports[0].len(), 10);
    }
}
