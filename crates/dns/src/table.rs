//! The validated routing table, its conversion from the protocol, the fencing rule that decides
//! whether an offered table may replace the served one, and its last-known-good file.
//!
//! A [`Table`] can only be built through [`Table::from_doc`] (or [`Table::from_proto`], which
//! goes through it), so every table the server answers from has passed validation.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use hickory_proto::rr::Name;
use serde::{Deserialize, Serialize};
use switchyard_proto::routing::v1 as pb;

use crate::names::{parse_relative, parse_zone};

/// File name of the last-known-good table inside the state directory.
pub const ROUTING_FILE: &str = "routing.json";
/// Version marker of [`ROUTING_FILE`]; bump it when the layout changes incompatibly.
pub const ROUTING_FILE_FORMAT: u32 = 1;
/// Largest record TTL accepted: a routing answer cached for longer than a day defeats failover.
pub const TTL_S_MAX: u32 = 86_400;

/// Serialisable mirror of the protocol's `RoutingTable`: what is persisted and what is validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableDoc {
    pub version: u64,
    pub epoch: u64,
    pub zone: String,
    pub entries: Vec<EntryDoc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryDoc {
    pub name: String,
    pub group: String,
    pub ttl_s: u32,
    pub targets: Vec<TargetDoc>,
    /// SRV records; absent in files written before service discovery existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceDoc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub txt: Vec<String>,
    /// Alias target (relative to the zone, or absolute with a trailing dot); empty for none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cname: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDoc {
    pub priority: u32,
    pub weight: u32,
    pub port: u32,
    pub target: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetDoc {
    pub site: String,
    pub addresses: Vec<String>,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "is_false")]
    pub unhealthy: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl From<pb::RoutingTable> for TableDoc {
    fn from(t: pb::RoutingTable) -> Self {
        Self {
            version: t.version,
            epoch: t.epoch,
            zone: t.zone,
            entries: t
                .entries
                .into_iter()
                .map(|e| EntryDoc {
                    name: e.name,
                    group: e.group,
                    ttl_s: e.ttl_s,
                    targets: e
                        .targets
                        .into_iter()
                        .map(|t| TargetDoc {
                            site: t.site,
                            addresses: t.addresses,
                            weight: t.weight,
                            unhealthy: t.unhealthy,
                        })
                        .collect(),
                    services: e
                        .services
                        .into_iter()
                        .map(|s| ServiceDoc { priority: s.priority, weight: s.weight, port: s.port, target: s.target })
                        .collect(),
                    txt: e.txt,
                    cname: e.cname,
                })
                .collect(),
        }
    }
}

/// Why a table failed validation. The whole table is refused; nothing of it is served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("zone {zone:?} {reason}")]
    Zone { zone: String, reason: String },
    #[error("entry name {name:?} {reason}")]
    Name { name: String, reason: String },
    #[error("entry name {name:?} appears more than once (names compare case-insensitively)")]
    DuplicateName { name: String },
    #[error("entry {name:?}, site {site:?}: {address:?} is not an IPv4 or IPv6 address")]
    Address { name: String, site: String, address: String },
    #[error("entry {name:?} has TTL {ttl_s}s; it must be between 1 and {TTL_S_MAX}")]
    Ttl { name: String, ttl_s: u32 },
    #[error("entry {name:?}: SRV record {detail}")]
    Service { name: String, detail: String },
    #[error("entry {name:?}: TXT string {index} is {len} bytes; at most 255 fit in one string")]
    Txt { name: String, index: usize, len: usize },
    #[error("entry {name:?}: CNAME {detail}")]
    Cname { name: String, detail: String },
}

/// One SRV record of a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Lower-case absolute host name.
    pub target: Name,
    /// As the federator sent it, relative to the zone.
    pub relative: String,
}

/// One site's share of a routed name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub site: String,
    /// Parsed addresses in the order the federator sent them.
    pub addresses: Vec<IpAddr>,
    /// Share of traffic; 0 means the site gets none.
    pub weight: u32,
    /// Whether the site can serve the name now, as the federator sees it.
    pub healthy: bool,
}

/// One routed name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Lower-case absolute owner name, e.g. `crm-web.fed.local.`.
    pub name: Name,
    /// The name as the federator sent it, relative to the zone (kept for persistence).
    pub relative: String,
    pub group: String,
    pub ttl_s: u32,
    pub targets: Vec<Target>,
    pub services: Vec<Service>,
    pub txt: Vec<String>,
    /// Alias target (lower-case absolute); an alias owns nothing else.
    pub cname: Option<Name>,
    /// The alias target as the federator sent it (kept for persistence).
    pub cname_text: String,
}

/// A validated routing table at one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    version: u64,
    epoch: u64,
    zone: Name,
    entries: BTreeMap<Name, Entry>,
    /// Names that own no entry but have entries below them (RFC 8020: those exist, so a query
    /// for them is NODATA, never NXDOMAIN).
    empty_non_terminals: BTreeSet<Name>,
}

impl Table {
    /// Validates a protocol table.
    pub fn from_proto(table: pb::RoutingTable) -> Result<Self, TableError> {
        Self::from_doc(&TableDoc::from(table))
    }

    /// Validates a table: the zone and every entry name are valid DNS names, names are unique,
    /// every address parses and every TTL is in `1..=TTL_S_MAX`.
    pub fn from_doc(doc: &TableDoc) -> Result<Self, TableError> {
        let zone = parse_zone(&doc.zone).map_err(|reason| TableError::Zone { zone: doc.zone.clone(), reason })?;
        let mut entries = BTreeMap::new();
        for e in &doc.entries {
            let name =
                parse_relative(&e.name, &zone).map_err(|reason| TableError::Name { name: e.name.clone(), reason })?;
            if e.ttl_s == 0 || e.ttl_s > TTL_S_MAX {
                return Err(TableError::Ttl { name: e.name.clone(), ttl_s: e.ttl_s });
            }
            let mut targets = Vec::with_capacity(e.targets.len());
            for t in &e.targets {
                let addresses = t
                    .addresses
                    .iter()
                    .map(|a| {
                        a.trim().parse::<IpAddr>().map_err(|_| TableError::Address {
                            name: e.name.clone(),
                            site: t.site.clone(),
                            address: a.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                targets.push(Target { site: t.site.clone(), addresses, weight: t.weight, healthy: !t.unhealthy });
            }
            let mut services = Vec::with_capacity(e.services.len());
            for s in &e.services {
                let bad = |detail: String| TableError::Service { name: e.name.clone(), detail };
                let port = u16::try_from(s.port)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad(format!("port {} is outside 1-65535", s.port)))?;
                let priority =
                    u16::try_from(s.priority).map_err(|_| bad(format!("priority {} is above 65535", s.priority)))?;
                let weight = u16::try_from(s.weight).map_err(|_| bad(format!("weight {} is above 65535", s.weight)))?;
                let target = parse_relative(&s.target, &zone).map_err(|r| bad(format!("target {:?} {r}", s.target)))?;
                services.push(Service { priority, weight, port, target, relative: s.target.to_ascii_lowercase() });
            }
            if let Some((index, t)) = e.txt.iter().enumerate().find(|(_, t)| t.len() > 255) {
                return Err(TableError::Txt { name: e.name.clone(), index, len: t.len() });
            }
            let cname = if e.cname.is_empty() {
                None
            } else {
                let bad = |detail: String| TableError::Cname { name: e.name.clone(), detail };
                if !e.targets.is_empty() || !e.services.is_empty() || !e.txt.is_empty() {
                    return Err(bad("must be the only data of its name (no targets, SRV or TXT)".into()));
                }
                let target = if e.cname.ends_with('.') {
                    Name::from_ascii(&e.cname).map(|n| n.to_lowercase()).map_err(|r| r.to_string())
                } else {
                    parse_relative(&e.cname, &zone)
                }
                .map_err(|r| bad(format!("target {:?} {r}", e.cname)))?;
                if target == name {
                    return Err(bad("points at itself".into()));
                }
                Some(target)
            };
            let entry = Entry {
                name: name.clone(),
                relative: e.name.to_ascii_lowercase(),
                group: e.group.clone(),
                ttl_s: e.ttl_s,
                targets,
                services,
                txt: e.txt.clone(),
                cname,
                cname_text: e.cname.clone(),
            };
            if entries.insert(name, entry).is_some() {
                return Err(TableError::DuplicateName { name: e.name.clone() });
            }
        }
        let mut empty_non_terminals = BTreeSet::new();
        for name in entries.keys() {
            let mut parent = name.base_name();
            while parent.num_labels() > zone.num_labels() {
                if !entries.contains_key(&parent) {
                    empty_non_terminals.insert(parent.clone());
                }
                parent = parent.base_name();
            }
        }
        Ok(Self { version: doc.version, epoch: doc.epoch, zone, entries, empty_non_terminals })
    }

    /// The document this table was validated from, in canonical (name) order.
    pub fn to_doc(&self) -> TableDoc {
        TableDoc {
            version: self.version,
            epoch: self.epoch,
            zone: self.zone.to_ascii(),
            entries: self
                .entries
                .values()
                .map(|e| EntryDoc {
                    name: e.relative.clone(),
                    group: e.group.clone(),
                    ttl_s: e.ttl_s,
                    targets: e
                        .targets
                        .iter()
                        .map(|t| TargetDoc {
                            site: t.site.clone(),
                            addresses: t.addresses.iter().map(ToString::to_string).collect(),
                            weight: t.weight,
                            unhealthy: !t.healthy,
                        })
                        .collect(),
                    services: e
                        .services
                        .iter()
                        .map(|s| ServiceDoc {
                            priority: u32::from(s.priority),
                            weight: u32::from(s.weight),
                            port: u32::from(s.port),
                            target: s.relative.clone(),
                        })
                        .collect(),
                    txt: e.txt.clone(),
                    cname: e.cname_text.clone(),
                })
                .collect(),
        }
    }

    /// Monotonic table version; the zone's SOA serial.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Fencing token: the federator's Raft index of the newest decision in this table.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Lower-case absolute zone name.
    pub fn zone(&self) -> &Name {
        &self.zone
    }

    /// The entry owning `name` (lower-case absolute), if any.
    pub fn entry(&self, name: &Name) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// Whether `name` owns nothing but has entries below it.
    pub fn is_empty_non_terminal(&self, name: &Name) -> bool {
        self.empty_non_terminals.contains(name)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Why an offered table was not applied. The served table is kept in every case.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("table is invalid: {0}")]
    Invalid(#[from] TableError),
    #[error("table is for zone {offered}, but this server serves {served}")]
    OtherZone { served: String, offered: String },
    #[error("table version {offered} is older than the served version {served}")]
    OlderVersion { served: u64, offered: u64 },
    #[error("table epoch {offered} is older than the served epoch {served} (fenced)")]
    OlderEpoch { served: u64, offered: u64 },
    #[error("table version {version} is already served with different content; a change needs a new version")]
    ConflictingVersion { version: u64 },
}

impl Rejection {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Invalid(_) => "invalid",
            Rejection::OtherZone { .. } => "other_zone",
            Rejection::OlderVersion { .. } => "older_version",
            Rejection::OlderEpoch { .. } => "older_epoch",
            Rejection::ConflictingVersion { .. } => "conflicting_version",
        }
    }
}

/// What to do with an acceptable table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Newer (or first) table: persist it and serve it.
    Apply,
    /// The served table again (a re-sent snapshot after a reconnect): nothing to do.
    Unchanged,
}

/// The fencing rule. A table is refused when it is for another zone, when its version or its
/// epoch is lower than the served one, or when it reuses the served version with different
/// records (a SOA serial must change whenever the data does). The served table sent again is
/// `Unchanged`; the same records with a newer epoch are applied.
pub fn admit(served: Option<&Table>, zone: &Name, offered: &Table) -> Result<Admission, Rejection> {
    if offered.zone() != zone {
        return Err(Rejection::OtherZone { served: zone.to_ascii(), offered: offered.zone().to_ascii() });
    }
    let Some(served) = served else {
        return Ok(Admission::Apply);
    };
    if offered.version < served.version {
        return Err(Rejection::OlderVersion { served: served.version, offered: offered.version });
    }
    if offered.epoch < served.epoch {
        return Err(Rejection::OlderEpoch { served: served.epoch, offered: offered.epoch });
    }
    if offered.version == served.version {
        return if offered.entries != served.entries {
            Err(Rejection::ConflictingVersion { version: offered.version })
        } else if offered.epoch > served.epoch {
            // Same records under a newer fencing token: keep the token, the serial stays.
            Ok(Admission::Apply)
        } else {
            Ok(Admission::Unchanged)
        };
    }
    Ok(Admission::Apply)
}

/// Errors reading or writing the last-known-good file.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot access {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a routing table file: {source}; remove it to start without a table")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path} has format {found}, this fed-dns reads format {ROUTING_FILE_FORMAT}")]
    Format { path: PathBuf, found: u32 },
    #[error("{path} holds an invalid table: {source}")]
    Invalid { path: PathBuf, source: TableError },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutingFile {
    format: u32,
    table: TableDoc,
}

/// Path of the last-known-good table inside `state_dir`.
pub fn routing_file(state_dir: &Path) -> PathBuf {
    state_dir.join(ROUTING_FILE)
}

/// Writes `table` as the last-known-good table: temporary file, fsync, rename, fsync of the
/// directory, so a crash leaves either the old or the new file, never a torn one.
pub fn save(state_dir: &Path, table: &Table) -> Result<(), PersistError> {
    let path = routing_file(state_dir);
    let tmp = state_dir.join(format!("{ROUTING_FILE}.tmp"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PersistError::Io { path, source }
    };
    let body = serde_json::to_vec_pretty(&RoutingFile { format: ROUTING_FILE_FORMAT, table: table.to_doc() })
        .expect("a routing table always serialises to JSON");
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(&body).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(state_dir).and_then(|d| d.sync_all()).map_err(io(state_dir))?;
    Ok(())
}

/// Reads the last-known-good table; `Ok(None)` when there is none yet.
pub fn load(state_dir: &Path) -> Result<Option<Table>, PersistError> {
    let path = routing_file(state_dir);
    let body = match std::fs::read(&path) {
        Ok(body) => body,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PersistError::Io { path, source }),
    };
    let file: RoutingFile =
        serde_json::from_slice(&body).map_err(|source| PersistError::Parse { path: path.clone(), source })?;
    if file.format != ROUTING_FILE_FORMAT {
        return Err(PersistError::Format { path, found: file.format });
    }
    Table::from_doc(&file.table).map(Some).map_err(|source| PersistError::Invalid { path, source })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn target(site: &str, addresses: &[&str], weight: u32) -> pb::SiteTarget {
        pb::SiteTarget {
            site: site.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            weight,
            unhealthy: false,
        }
    }

    pub(crate) fn entry(name: &str, ttl_s: u32, targets: Vec<pb::SiteTarget>) -> pb::RoutingEntry {
        pb::RoutingEntry {
            name: name.into(),
            group: format!("{name}-group"),
            ttl_s,
            targets,
            services: vec![],
            txt: vec![],
            cname: String::new(),
        }
    }

    pub(crate) fn proto(version: u64, epoch: u64, entries: Vec<pb::RoutingEntry>) -> pb::RoutingTable {
        pb::RoutingTable { version, epoch, zone: "fed.local.".into(), entries }
    }

    pub(crate) fn zone() -> Name {
        parse_zone("fed.local.").unwrap()
    }

    fn table(version: u64, epoch: u64, address: &str) -> Table {
        Table::from_proto(proto(version, epoch, vec![entry("crm-web", 30, vec![target("a", &[address], 1)])])).unwrap()
    }

    #[test]
    fn valid_table_is_normalised() {
        let t = Table::from_proto(pb::RoutingTable {
            version: 3,
            epoch: 9,
            zone: "FED.local".into(),
            entries: vec![
                entry("CRM-Web", 30, vec![target("a", &["127.0.1.1", " ::1 "], 1)]),
                entry("www.shop", 60, vec![]),
            ],
        })
        .unwrap();
        assert_eq!((t.version(), t.epoch(), t.len()), (3, 9, 2));
        assert_eq!(t.zone().to_ascii(), "fed.local.");
        let e = t.entry(&Name::from_ascii("crm-web.fed.local.").unwrap()).unwrap();
        assert_eq!(e.targets[0].addresses, vec!["127.0.1.1".parse::<IpAddr>().unwrap(), "::1".parse().unwrap()]);
        assert!(t.is_empty_non_terminal(&Name::from_ascii("shop.fed.local.").unwrap()));
        assert!(!t.is_empty_non_terminal(&Name::from_ascii("fed.local.").unwrap()));
    }

    #[test]
    fn invalid_tables_are_refused() {
        let cases: Vec<(pb::RoutingTable, &str)> = vec![
            (proto(1, 1, vec![entry("bad name", 30, vec![])]), "entry name"),
            (proto(1, 1, vec![entry("", 30, vec![])]), "entry name"),
            (proto(1, 1, vec![entry("-x", 30, vec![])]), "entry name"),
            (proto(1, 1, vec![entry("crm", 0, vec![])]), "TTL"),
            (proto(1, 1, vec![entry("crm", TTL_S_MAX + 1, vec![])]), "TTL"),
            (proto(1, 1, vec![entry("crm", 30, vec![target("a", &["10.0.0.300"], 1)])]), "IPv4 or IPv6"),
            (proto(1, 1, vec![entry("crm", 30, vec![]), entry("CRM", 30, vec![])]), "more than once"),
            (pb::RoutingTable { zone: "bad..zone".into(), ..proto(1, 1, vec![]) }, "zone"),
        ];
        for (t, needle) in cases {
            let err = Table::from_proto(t.clone()).unwrap_err().to_string();
            assert!(err.contains(needle), "{t:?}: {err}");
        }
    }

    #[test]
    fn fencing_refuses_older_versions_epochs_and_other_zones() {
        let zone = zone();
        let served = table(5, 10, "127.0.1.1");
        assert_eq!(admit(None, &zone, &served), Ok(Admission::Apply));
        assert_eq!(admit(Some(&served), &zone, &table(6, 10, "127.0.2.1")), Ok(Admission::Apply));
        assert_eq!(admit(Some(&served), &zone, &table(6, 11, "127.0.2.1")), Ok(Admission::Apply));
        assert_eq!(admit(Some(&served), &zone, &table(5, 10, "127.0.1.1")), Ok(Admission::Unchanged));
        assert_eq!(admit(Some(&served), &zone, &table(5, 11, "127.0.1.1")), Ok(Admission::Apply));
        assert_eq!(
            admit(Some(&served), &zone, &table(4, 10, "127.0.2.1")),
            Err(Rejection::OlderVersion { served: 5, offered: 4 })
        );
        assert_eq!(
            admit(Some(&served), &zone, &table(7, 9, "127.0.2.1")),
            Err(Rejection::OlderEpoch { served: 10, offered: 9 })
        );
        assert_eq!(
            admit(Some(&served), &zone, &table(5, 10, "127.0.2.1")),
            Err(Rejection::ConflictingVersion { version: 5 })
        );
        let other =
            Table::from_proto(pb::RoutingTable { zone: "other.local.".into(), ..proto(9, 99, vec![]) }).unwrap();
        assert!(matches!(admit(Some(&served), &zone, &other), Err(Rejection::OtherZone { .. })));
        assert!(matches!(admit(None, &zone, &other), Err(Rejection::OtherZone { .. })));
    }

    #[test]
    fn persistence_round_trip_keeps_table_and_serial() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let t = Table::from_proto(proto(
            42,
            7,
            vec![
                entry("crm-web", 30, vec![target("a", &["127.0.1.1"], 1), target("b", &["2001:db8::1"], 0)]),
                entry("www.shop", 60, vec![target("a", &["127.0.3.1"], 5)]),
            ],
        ))
        .unwrap();
        save(dir.path(), &t).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back, t);
        assert_eq!(back.version(), 42);
        assert!(!dir.path().join(format!("{ROUTING_FILE}.tmp")).exists());

        // A newer table replaces the file wholesale.
        let newer = table(43, 7, "127.0.2.1");
        save(dir.path(), &newer).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap(), newer);
    }

    #[test]
    fn damaged_or_foreign_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(routing_file(dir.path()), b"{ not json").unwrap();
        assert!(matches!(load(dir.path()), Err(PersistError::Parse { .. })));
        std::fs::write(
            routing_file(dir.path()),
            br#"{"format":2,"table":{"version":1,"epoch":1,"zone":"fed.local.","entries":[]}}"#,
        )
        .unwrap();
        assert!(matches!(load(dir.path()), Err(PersistError::Format { found: 2, .. })));
        std::fs::write(
            routing_file(dir.path()),
            br#"{"format":1,"table":{"version":1,"epoch":1,"zone":"fed.local.","entries":[{"name":"x","group":"g","ttl_s":0,"targets":[]}]}}"#,
        )
        .unwrap();
        assert!(matches!(load(dir.path()), Err(PersistError::Invalid { .. })));
    }
}
