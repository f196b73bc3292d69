//! The tamper-evident audit chain: every record carries the hash of the previous one, so any
//! edit, truncation in the middle, insertion or reordering is detected and located.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Hash placed before the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1-based position in the chain.
    pub seq: u64,
    /// Leader-stamped time of the proposal that produced this record.
    pub time_ms: u64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub reason: String,
    /// JSON object: evidence, before/after state, details.
    pub detail_json: String,
    pub raft_index: u64,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// The hash of this record's content and its predecessor's hash. Fields are length-prefixed
    /// so that no two different records share an encoding.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        let seq = self.seq.to_string();
        let time = self.time_ms.to_string();
        let index = self.raft_index.to_string();
        for field in [
            seq.as_str(),
            time.as_str(),
            self.actor.as_str(),
            self.action.as_str(),
            self.subject.as_str(),
            self.reason.as_str(),
            self.detail_json.as_str(),
            index.as_str(),
            self.prev_hash.as_str(),
        ] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// Where and why a chain does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error(
        "record at position {position} has sequence {found}, expected {expected} (missing, inserted or reordered record)"
    )]
    Sequence { position: usize, expected: u64, found: u64 },
    #[error("record {seq} does not link to its predecessor (prev_hash {found}, predecessor hash {expected})")]
    Link { seq: u64, expected: String, found: String },
    #[error("record {seq} was altered: its content hashes to {computed}, but it claims {claimed}")]
    Altered { seq: u64, computed: String, claimed: String },
}

impl ChainError {
    /// Sequence number of the first bad record.
    pub fn first_bad_seq(&self) -> u64 {
        match self {
            ChainError::Sequence { found, .. } => *found,
            ChainError::Link { seq, .. } | ChainError::Altered { seq, .. } => *seq,
        }
    }
}

/// Verifies a whole chain from the genesis hash; names the first bad record.
pub fn verify_chain(records: &[AuditRecord]) -> Result<(), ChainError> {
    let mut prev = GENESIS_HASH.to_string();
    for (i, r) in records.iter().enumerate() {
        let expected = i as u64 + 1;
        if r.seq != expected {
            return Err(ChainError::Sequence { position: i, expected, found: r.seq });
        }
        if r.prev_hash != prev {
            return Err(ChainError::Link { seq: r.seq, expected: prev, found: r.prev_hash.clone() });
        }
        let computed = r.compute_hash();
        if computed != r.hash {
            return Err(ChainError::Altered { seq: r.seq, computed, claimed: r.hash.clone() });
        }
        prev = r.hash.clone();
    }
    Ok(())
}

/// The chain held in the replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    records: Vec<AuditRecord>,
}

/// The content of a record before it is chained.
pub struct Entry<'a> {
    pub time_ms: u64,
    pub actor: &'a str,
    pub action: &'a str,
    pub subject: &'a str,
    pub reason: &'a str,
    pub detail: serde_json::Value,
    pub raft_index: u64,
}

impl AuditLog {
    pub fn append(&mut self, e: Entry<'_>) -> &AuditRecord {
        let mut r = AuditRecord {
            seq: self.records.len() as u64 + 1,
            time_ms: e.time_ms,
            actor: e.actor.to_string(),
            action: e.action.to_string(),
            subject: e.subject.to_string(),
            reason: e.reason.to_string(),
            detail_json: e.detail.to_string(),
            raft_index: e.raft_index,
            prev_hash: self.head_hash().to_string(),
            hash: String::new(),
        };
        r.hash = r.compute_hash();
        self.records.push(r);
        self.records.last().expect("just pushed")
    }

    pub fn records(&self) -> &[AuditRecord] {
        &self.records
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn head_hash(&self) -> &str {
        self.records.last().map(|r| r.hash.as_str()).unwrap_or(GENESIS_HASH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut log = AuditLog::default();
        for i in 0..n {
            log.append(Entry {
                time_ms: 1000 + i,
                actor: "operator:alice",
                action: "switchover.start",
                subject: "crm-web",
                reason: "power work",
                detail: serde_json::json!({"i": i}),
                raft_index: 10 + i,
            });
        }
        log.records().to_vec()
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify_chain(&chain(5)), Ok(()));
        assert_eq!(verify_chain(&[]), Ok(()));
    }

    #[test]
    fn edit_is_located() {
        let mut c = chain(5);
        c[2].reason = "nothing to see".into();
        let err = verify_chain(&c).unwrap_err();
        assert_eq!(err.first_bad_seq(), 3);
        assert!(matches!(err, ChainError::Altered { .. }));
    }

    #[test]
    fn edit_with_rehash_breaks_the_next_link() {
        let mut c = chain(5);
        c[1].actor = "operator:mallory".into();
        c[1].hash = c[1].compute_hash();
        let err = verify_chain(&c).unwrap_err();
        assert_eq!(err, ChainError::Link { seq: 3, expected: c[1].hash.clone(), found: c[2].prev_hash.clone() });
    }

    #[test]
    fn removal_and_reordering_are_located() {
        let mut c = chain(5);
        c.remove(1);
        assert_eq!(verify_chain(&c).unwrap_err().first_bad_seq(), 3);
        let mut c = chain(5);
        c.swap(3, 4);
        assert_eq!(verify_chain(&c).unwrap_err().first_bad_seq(), 5);
    }

    #[test]
    fn length_prefix_prevents_field_shifting() {
        let mut a = chain(1).remove(0);
        let mut b = a.clone();
        a.actor = "ab".into();
        a.action = "c".into();
        b.actor = "a".into();
        b.action = "bc".into();
        assert_ne!(a.compute_hash(), b.compute_hash());
    }
}
