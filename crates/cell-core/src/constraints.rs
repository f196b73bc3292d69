//! Marathon placement constraints on node attributes, and the per-app index that checks them.
//!
//! A constraint is `field:OPERATOR[:value]` (or Marathon's JSON array `["field", "OP", "value"]`)
//! where `field` is any node attribute; `hostname` is an attribute like any other and falls back
//! to the node id (`Node::attribute`). Semantics follow Marathon:
//!
//! | operator        | a node is acceptable when                                               |
//! |-----------------|-------------------------------------------------------------------------|
//! | `UNIQUE`        | no instance of the app runs on a node with the same value               |
//! | `CLUSTER:v`     | its value is exactly `v`                                                 |
//! | `GROUP_BY[:n]`  | its value holds no instance yet, or (at least `n` values hold instances  |
//! |                 | and) its value holds the fewest instances: no value gets ahead by 2       |
//! | `LIKE:re`       | `re` matches the *whole* value                                           |
//! | `UNLIKE:re`     | `re` does not match the whole value                                      |
//! | `MAX_PER:n`     | its value holds fewer than `n` instances                                 |
//!
//! A node that lacks the attribute fails every operator except `UNLIKE` (you cannot pin, match,
//! count or spread on a value that is not there). Regular expressions are compiled once, when
//! the constraint is parsed; a constraint that parsed is always valid.
//!
//! Constraints split in two: *static* ones (`CLUSTER`, `LIKE`, `UNLIKE`) depend only on the
//! node; *counted* ones (`UNIQUE`, `GROUP_BY`, `MAX_PER`) also depend on how many instances of
//! the app each value already holds. [`Constraint::matches_attribute`] and
//! [`Constraint::admits`] are the single definition of both halves; [`ConstraintIndex`] and the
//! placement engine both call them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use crate::model::Node;

/// Compiled size bound for one constraint's regular expression. Marathon patterns are short;
/// this keeps a hostile pattern from costing megabytes per app.
pub const PATTERN_COMPILED_BYTES_MAX: usize = 1 << 20;

/// A regular expression that must match a whole attribute value.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    anchored: Regex,
}

impl Pattern {
    /// Compiles `source` anchored at both ends, as Marathon matches whole values.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let anchored = RegexBuilder::new(&format!("^(?:{source})$")).size_limit(PATTERN_COMPILED_BYTES_MAX).build()?;
        Ok(Pattern { source: source.to_string(), anchored })
    }

    /// The pattern as written (without the anchors).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern matches all of `value`.
    pub fn matches(&self, value: &str) -> bool {
        self.anchored.is_match(value)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operator {
    /// At most one instance per distinct value.
    Unique,
    /// Only nodes whose value is exactly this.
    Cluster(String),
    /// Spread evenly over the values; `Some(n)`: the number of distinct values expected.
    GroupBy(Option<u32>),
    /// Only nodes whose whole value matches.
    Like(Pattern),
    /// Only nodes whose whole value does not match (or that lack the attribute).
    Unlike(Pattern),
    /// At most this many instances per distinct value.
    MaxPer(u32),
}

impl Operator {
    /// The Marathon name of the operator.
    pub fn name(&self) -> &'static str {
        match self {
            Operator::Unique => "UNIQUE",
            Operator::Cluster(_) => "CLUSTER",
            Operator::GroupBy(_) => "GROUP_BY",
            Operator::Like(_) => "LIKE",
            Operator::Unlike(_) => "UNLIKE",
            Operator::MaxPer(_) => "MAX_PER",
        }
    }

    fn value(&self) -> Option<String> {
        match self {
            Operator::Unique | Operator::GroupBy(None) => None,
            Operator::Cluster(v) => Some(v.clone()),
            Operator::GroupBy(Some(n)) | Operator::MaxPer(n) => Some(n.to_string()),
            Operator::Like(p) | Operator::Unlike(p) => Some(p.as_str().to_string()),
        }
    }
}

/// How many distinct values of a field hold instances, and the fewest any of those hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Distinct values holding at least one instance.
    pub populated: u32,
    /// The smallest count among populated values; 0 when none is populated.
    pub min_count: u32,
}

/// One Marathon constraint. Serialized as Marathon's array form `["rack", "GROUP_BY", "3"]`;
/// deserialized from that or from the string form `"rack:GROUP_BY:3"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ConstraintForm", into = "Vec<String>")]
pub struct Constraint {
    pub field: String,
    pub op: Operator,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ConstraintForm {
    Parts(Vec<String>),
    Text(String),
}

impl TryFrom<ConstraintForm> for Constraint {
    type Error = ConstraintError;

    fn try_from(form: ConstraintForm) -> Result<Self, Self::Error> {
        match form {
            ConstraintForm::Parts(parts) => Constraint::from_parts(&parts),
            ConstraintForm::Text(text) => Constraint::parse(&text),
        }
    }
}

impl From<Constraint> for Vec<String> {
    fn from(c: Constraint) -> Self {
        let mut parts = vec![c.field, c.op.name().to_string()];
        parts.extend(c.op.value());
        parts
    }
}

/// Why a constraint could not be parsed. `constraint` is the input as given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error(
        "constraint {constraint}: expected field and operator, plus a value for operators that take one \
         ([\"rack\", \"GROUP_BY\", \"3\"] or rack:GROUP_BY:3); got {parts} part(s)"
    )]
    Shape { constraint: String, parts: usize },
    #[error("constraint {constraint}: the field is empty; name a node attribute such as hostname, rack or zone")]
    EmptyField { constraint: String },
    #[error(
        "constraint {constraint}: unknown operator {operator:?}; use one of UNIQUE, CLUSTER, GROUP_BY, LIKE, \
         UNLIKE, MAX_PER"
    )]
    UnknownOperator { constraint: String, operator: String },
    #[error("constraint {constraint}: {operator} needs a value: {expected}")]
    MissingValue { constraint: String, operator: &'static str, expected: &'static str },
    #[error("constraint {constraint}: {operator} takes no value, but got {value:?}; remove it")]
    UnexpectedValue { constraint: String, operator: &'static str, value: String },
    #[error("constraint {constraint}: {operator} value {value:?} is not a count; give a whole number from 1 to {max}", max = u32::MAX)]
    NotANumber { constraint: String, operator: &'static str, value: String },
    #[error("constraint {constraint}: {operator} value is 0; give a count of at least 1")]
    ZeroCount { constraint: String, operator: &'static str },
    #[error("constraint {constraint}: {operator} pattern {pattern:?} is not a valid regular expression: {reason}")]
    InvalidRegex { constraint: String, operator: &'static str, pattern: String, reason: String },
}

impl Constraint {
    pub fn new(field: impl Into<String>, op: Operator) -> Self {
        Constraint { field: field.into(), op }
    }

    /// Parses the string form `field:OPERATOR[:value]`. The value is everything after the
    /// second `:`, so patterns may contain colons.
    pub fn parse(text: &str) -> Result<Self, ConstraintError> {
        let parts: Vec<&str> = text.splitn(3, ':').collect();
        Self::build(&parts, || text.to_string())
    }

    /// Parses Marathon's JSON array form: `[field, operator]` or `[field, operator, value]`.
    pub fn from_parts<S: AsRef<str>>(parts: &[S]) -> Result<Self, ConstraintError> {
        let parts: Vec<&str> = parts.iter().map(AsRef::as_ref).collect();
        Self::build(&parts, || format!("{parts:?}"))
    }

    fn build(parts: &[&str], shown: impl Fn() -> String) -> Result<Self, ConstraintError> {
        let (field, operator, value) = match *parts {
            [field, operator] => (field, operator, None),
            [field, operator, value] => (field, operator, Some(value)),
            _ => return Err(ConstraintError::Shape { constraint: shown(), parts: parts.len() }),
        };
        if field.is_empty() {
            return Err(ConstraintError::EmptyField { constraint: shown() });
        }
        let name: &'static str = match operator.to_ascii_uppercase().as_str() {
            "UNIQUE" => "UNIQUE",
            "CLUSTER" => "CLUSTER",
            "GROUP_BY" => "GROUP_BY",
            "LIKE" => "LIKE",
            "UNLIKE" => "UNLIKE",
            "MAX_PER" => "MAX_PER",
            _ => {
                return Err(ConstraintError::UnknownOperator { constraint: shown(), operator: operator.to_string() });
            }
        };
        let required = |expected: &'static str| {
            value.ok_or_else(|| ConstraintError::MissingValue { constraint: shown(), operator: name, expected })
        };
        let count = |value: &str| -> Result<u32, ConstraintError> {
            match value.parse::<u32>() {
                Ok(0) => Err(ConstraintError::ZeroCount { constraint: shown(), operator: name }),
                Ok(n) => Ok(n),
                Err(_) => {
                    Err(ConstraintError::NotANumber { constraint: shown(), operator: name, value: value.to_string() })
                }
            }
        };
        let pattern = |source: &str| {
            Pattern::new(source).map_err(|e| ConstraintError::InvalidRegex {
                constraint: shown(),
                operator: name,
                pattern: source.to_string(),
                reason: e.to_string(),
            })
        };
        let op = match name {
            "UNIQUE" => match value {
                None => Operator::Unique,
                Some(v) => {
                    return Err(ConstraintError::UnexpectedValue {
                        constraint: shown(),
                        operator: name,
                        value: v.to_string(),
                    });
                }
            },
            "CLUSTER" => Operator::Cluster(required("the attribute value to pin instances to")?.to_string()),
            "GROUP_BY" => Operator::GroupBy(value.map(count).transpose()?),
            "LIKE" => Operator::Like(pattern(required("a regular expression the whole value must match")?)?),
            "UNLIKE" => Operator::Unlike(pattern(required("a regular expression the whole value must not match")?)?),
            _ => Operator::MaxPer(count(required("the most instances per value, at least 1")?)?),
        };
        Ok(Constraint { field: field.to_string(), op })
    }

    /// Whether the operator counts instances per value (`UNIQUE`, `GROUP_BY`, `MAX_PER`).
    pub fn is_counted(&self) -> bool {
        matches!(self.op, Operator::Unique | Operator::GroupBy(_) | Operator::MaxPer(_))
    }

    /// The node-only half of the check: the attribute value (`None`: the node lacks it).
    /// Counted operators only require the attribute to be present.
    pub fn matches_attribute(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Operator::Unlike(_), None) => true,
            (_, None) => false,
            (Operator::Cluster(want), Some(v)) => v == want,
            (Operator::Like(p), Some(v)) => p.matches(v),
            (Operator::Unlike(p), Some(v)) => !p.matches(v),
            (Operator::Unique | Operator::GroupBy(_) | Operator::MaxPer(_), Some(_)) => true,
        }
    }

    /// The counting half of the check: may one more instance go to a value that holds `here`
    /// instances, given the field's `group` statistics? Always true for static operators.
    pub fn admits(&self, here: u32, group: GroupStats) -> bool {
        match self.op {
            Operator::Unique => here == 0,
            Operator::MaxPer(n) => here < n,
            // Marathon: an unused value is always fine; a used one only once the expected
            // number of values is in use and it holds no more than the least-used one.
            Operator::GroupBy(n) => here == 0 || (group.populated >= n.unwrap_or(0) && here <= group.min_count),
            Operator::Cluster(_) | Operator::Like(_) | Operator::Unlike(_) => true,
        }
    }
}

impl FromStr for Constraint {
    type Err = ConstraintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Constraint::parse(s)
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.field, self.op.name())?;
        match self.op.value() {
            Some(v) => write!(f, ":{v}"),
            None => Ok(()),
        }
    }
}

/// How many values hold how many instances: enough to answer [`GroupStats`] in O(log n) while
/// counts change one at a time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CountHistogram {
    /// count (> 0) → number of values holding exactly that many instances.
    values_by_count: BTreeMap<u32, u32>,
    populated: u32,
}

impl CountHistogram {
    /// Records that one value's count went from `from` to `to`.
    pub fn moved(&mut self, from: u32, to: u32) {
        if from == to {
            return;
        }
        if from > 0 {
            let slot = self.values_by_count.get_mut(&from).expect("histogram holds every populated count");
            *slot -= 1;
            if *slot == 0 {
                self.values_by_count.remove(&from);
            }
            self.populated -= 1;
        }
        if to > 0 {
            *self.values_by_count.entry(to).or_insert(0) += 1;
            self.populated += 1;
        }
    }

    pub fn stats(&self) -> GroupStats {
        GroupStats { populated: self.populated, min_count: self.values_by_count.keys().next().copied().unwrap_or(0) }
    }
}

/// Instances per value of one field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValueCounts {
    counts: BTreeMap<String, u32>,
    histogram: CountHistogram,
}

impl ValueCounts {
    pub fn count(&self, value: &str) -> u32 {
        self.counts.get(value).copied().unwrap_or(0)
    }

    pub fn add(&mut self, value: &str) {
        let slot = match self.counts.get_mut(value) {
            Some(slot) => slot,
            None => self.counts.entry(value.to_string()).or_insert(0),
        };
        let from = *slot;
        *slot += 1;
        self.histogram.moved(from, from + 1);
    }

    /// Returns false if the value held no instance.
    pub fn remove(&mut self, value: &str) -> bool {
        let Some(slot) = self.counts.get_mut(value) else { return false };
        let from = *slot;
        *slot -= 1;
        if *slot == 0 {
            self.counts.remove(value);
        }
        self.histogram.moved(from, from - 1);
        true
    }

    pub fn stats(&self) -> GroupStats {
        self.histogram.stats()
    }

    /// Populated values and their counts, in value order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.counts.iter().map(|(v, c)| (v.as_str(), *c))
    }
}

/// Where one app's instances are, as far as its constraints care: instance counts per value of
/// every field a counted constraint names. Checking a node costs O(constraints · log values),
/// independent of the number of instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConstraintIndex {
    constraints: Vec<Constraint>,
    counts: BTreeMap<String, ValueCounts>,
}

impl ConstraintIndex {
    pub fn new(constraints: Vec<Constraint>) -> Self {
        let counts =
            constraints.iter().filter(|c| c.is_counted()).map(|c| (c.field.clone(), ValueCounts::default())).collect();
        ConstraintIndex { constraints, counts }
    }

    pub fn constraints(&self) -> &[Constraint] {
        &self.constraints
    }

    /// Records an instance of the app on `node`.
    pub fn add(&mut self, node: &Node) {
        for (field, counts) in &mut self.counts {
            if let Some(v) = node.attribute(field) {
                counts.add(v);
            }
        }
    }

    /// Forgets an instance of the app on `node` (it stopped or moved).
    pub fn remove(&mut self, node: &Node) {
        for (field, counts) in &mut self.counts {
            if let Some(v) = node.attribute(field) {
                counts.remove(v);
            }
        }
    }

    /// Instances on nodes whose `field` is `value`; 0 for fields no counted constraint names.
    pub fn count(&self, field: &str, value: &str) -> u32 {
        self.counts.get(field).map_or(0, |c| c.count(value))
    }

    /// The first constraint one more instance on `node` would break, if any.
    pub fn first_violation(&self, node: &Node) -> Option<&Constraint> {
        self.constraints.iter().find(|c| {
            let value = node.attribute(&c.field);
            if !c.matches_attribute(value) {
                return true;
            }
            match (c.is_counted(), value) {
                (true, Some(v)) => {
                    let counts = &self.counts[&c.field];
                    !c.admits(counts.count(v), counts.stats())
                }
                _ => false,
            }
        })
    }

    /// Whether one more instance may go to `node`.
    pub fn admits(&self, node: &Node) -> bool {
        self.first_violation(node).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeState, Resources};

    fn node(id: &str, attrs: &[(&str, &str)]) -> Node {
        Node {
            id: id.into(),
            attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            total: Resources::new(1_000, 1_024, 0),
            ports: vec![],
            reserved: BTreeMap::new(),
            state: NodeState::Up,
        }
    }

    fn c(text: &str) -> Constraint {
        Constraint::parse(text).unwrap()
    }

    fn index(text: &str) -> ConstraintIndex {
        ConstraintIndex::new(vec![c(text)])
    }

    #[test]
    fn parses_every_operator_in_both_forms() {
        let cases = [
            (vec!["hostname", "UNIQUE"], "hostname:UNIQUE", Operator::Unique),
            (vec!["rack", "CLUSTER", "r1"], "rack:CLUSTER:r1", Operator::Cluster("r1".into())),
            (vec!["zone", "GROUP_BY"], "zone:GROUP_BY", Operator::GroupBy(None)),
            (vec!["zone", "GROUP_BY", "3"], "zone:GROUP_BY:3", Operator::GroupBy(Some(3))),
            (vec!["disk", "LIKE", "ssd|nvme"], "disk:LIKE:ssd|nvme", Operator::Like(Pattern::new("ssd|nvme").unwrap())),
            (vec!["disk", "UNLIKE", "hdd"], "disk:UNLIKE:hdd", Operator::Unlike(Pattern::new("hdd").unwrap())),
            (vec!["rack", "MAX_PER", "2"], "rack:MAX_PER:2", Operator::MaxPer(2)),
        ];
        for (parts, text, op) in cases {
            let from_parts = Constraint::from_parts(&parts).unwrap();
            let from_text = Constraint::parse(text).unwrap();
            assert_eq!(from_parts, from_text, "{text}");
            assert_eq!(from_text.op, op, "{text}");
            assert_eq!(from_text.to_string(), text, "display round-trips");
        }
        // Values may contain colons; operators are case-insensitive.
        assert_eq!(c("host:like:a:b").op, Operator::Like(Pattern::new("a:b").unwrap()));
    }

    #[test]
    fn serde_uses_the_marathon_array_form_and_accepts_the_string_form() {
        let group_by = c("rack:GROUP_BY:3");
        assert_eq!(serde_json::to_string(&group_by).unwrap(), r#"["rack","GROUP_BY","3"]"#);
        let back: Vec<Constraint> =
            serde_json::from_str(r#"[["rack","GROUP_BY","3"], "hostname:UNIQUE", ["disk","LIKE","ssd.*"]]"#).unwrap();
        assert_eq!(back, vec![group_by, c("hostname:UNIQUE"), c("disk:LIKE:ssd.*")]);
        let bad = serde_json::from_str::<Constraint>(r#"["rack","MAX_PER","0"]"#).unwrap_err().to_string();
        assert!(bad.contains("MAX_PER value is 0"), "{bad}");
    }

    #[test]
    fn parse_errors_say_exactly_what_was_wrong() {
        let err = |text: &str| Constraint::parse(text).unwrap_err();
        assert!(
            matches!(err("rack:GROUPBY:3"), ConstraintError::UnknownOperator { operator, .. } if operator == "GROUPBY")
        );
        assert!(matches!(err("rack"), ConstraintError::Shape { parts: 1, .. }));
        assert!(matches!(err(":UNIQUE"), ConstraintError::EmptyField { .. }));
        assert!(matches!(err("rack:CLUSTER"), ConstraintError::MissingValue { operator: "CLUSTER", .. }));
        assert!(matches!(err("rack:LIKE"), ConstraintError::MissingValue { operator: "LIKE", .. }));
        assert!(matches!(err("rack:UNLIKE"), ConstraintError::MissingValue { operator: "UNLIKE", .. }));
        assert!(matches!(err("rack:MAX_PER"), ConstraintError::MissingValue { operator: "MAX_PER", .. }));
        assert!(matches!(err("hostname:UNIQUE:x"), ConstraintError::UnexpectedValue { value, .. } if value == "x"));
        assert!(matches!(err("rack:MAX_PER:0"), ConstraintError::ZeroCount { operator: "MAX_PER", .. }));
        assert!(matches!(err("zone:GROUP_BY:0"), ConstraintError::ZeroCount { operator: "GROUP_BY", .. }));
        assert!(matches!(err("rack:MAX_PER:two"), ConstraintError::NotANumber { value, .. } if value == "two"));
        assert!(matches!(err("zone:GROUP_BY:-1"), ConstraintError::NotANumber { .. }));
        assert!(matches!(err("disk:LIKE:ssd("), ConstraintError::InvalidRegex { pattern, .. } if pattern == "ssd("));
        // Array form: too many parts is an extra value, too few is a missing operator.
        let four = Constraint::from_parts(&["rack", "MAX_PER", "2", "3"]).unwrap_err();
        assert!(matches!(four, ConstraintError::Shape { parts: 4, .. }));
        assert!(four.to_string().starts_with(r#"constraint ["rack", "MAX_PER", "2", "3"]: expected"#), "{four}");
        let one = Constraint::from_parts(&["rack"]).unwrap_err();
        assert!(matches!(one, ConstraintError::Shape { parts: 1, .. }));
        // Messages name the input and the fix.
        let msg = err("rack:MAX_PER:two").to_string();
        assert!(msg.contains("rack:MAX_PER:two") && msg.contains("whole number"), "{msg}");
        let msg = err("rack:SPREAD").to_string();
        assert!(msg.contains("\"SPREAD\"") && msg.contains("GROUP_BY"), "{msg}");
    }

    #[test]
    fn unique_allows_one_instance_per_value() {
        let (a, b, a2) = (node("a", &[("rack", "r1")]), node("b", &[("rack", "r2")]), node("a2", &[("rack", "r1")]));
        let mut idx = index("rack:UNIQUE");
        assert!(idx.admits(&a) && idx.admits(&a2));
        idx.add(&a);
        assert!(!idx.admits(&a2), "r1 already holds one");
        assert!(idx.admits(&b));
        assert_eq!(idx.first_violation(&a2).map(ToString::to_string).as_deref(), Some("rack:UNIQUE"));
        idx.remove(&a);
        assert!(idx.admits(&a2), "removal frees the value");
    }

    #[test]
    fn unique_hostname_uses_the_node_id_when_the_attribute_is_absent() {
        let (n1, n1_again, n2) = (node("n1", &[]), node("n1", &[]), node("n2", &[("hostname", "h2")]));
        let mut idx = index("hostname:UNIQUE");
        idx.add(&n1);
        assert!(!idx.admits(&n1_again));
        assert!(idx.admits(&n2));
        assert_eq!(idx.count("hostname", "n1"), 1);
        idx.add(&n2);
        assert_eq!(idx.count("hostname", "h2"), 1);
    }

    #[test]
    fn cluster_pins_to_the_value_and_rejects_nodes_without_it() {
        let idx = index("rack:CLUSTER:r1");
        assert!(idx.admits(&node("a", &[("rack", "r1")])));
        assert!(!idx.admits(&node("b", &[("rack", "r10")])), "exact value, not a prefix");
        assert!(!idx.admits(&node("c", &[])));
    }

    #[test]
    fn like_matches_the_whole_value() {
        let idx = index("disk:LIKE:ssd");
        assert!(idx.admits(&node("a", &[("disk", "ssd")])));
        assert!(!idx.admits(&node("b", &[("disk", "ssd-fast")])), "anchored at the end");
        assert!(!idx.admits(&node("c", &[("disk", "nvme-ssd")])), "anchored at the start");
        assert!(!idx.admits(&node("d", &[])), "missing attribute fails LIKE");
        let alt = index("disk:LIKE:ssd|nvme");
        assert!(alt.admits(&node("e", &[("disk", "nvme")])), "alternation is grouped inside the anchors");
        assert!(!alt.admits(&node("f", &[("disk", "nvme2")])));
    }

    #[test]
    fn unlike_rejects_whole_matches_and_passes_nodes_without_the_attribute() {
        let idx = index("disk:UNLIKE:hdd.*");
        assert!(!idx.admits(&node("a", &[("disk", "hdd-7200")])));
        assert!(idx.admits(&node("b", &[("disk", "ssd")])));
        assert!(idx.admits(&node("c", &[("disk", "fast-hdd")])), "must match the whole value to exclude");
        assert!(idx.admits(&node("d", &[])), "missing attribute passes UNLIKE");
    }

    #[test]
    fn max_per_caps_instances_per_value() {
        let (a, b) = (node("a", &[("rack", "r1")]), node("b", &[("rack", "r1")]));
        let other = node("c", &[("rack", "r2")]);
        let mut idx = index("rack:MAX_PER:2");
        idx.add(&a);
        assert!(idx.admits(&b));
        idx.add(&b);
        assert!(!idx.admits(&a) && !idx.admits(&b), "r1 holds 2");
        assert!(idx.admits(&other));
    }

    #[test]
    fn group_by_without_n_lets_no_value_get_two_ahead() {
        let (a, b, c_) = (node("a", &[("zone", "z1")]), node("b", &[("zone", "z2")]), node("c", &[("zone", "z3")]));
        let mut idx = index("zone:GROUP_BY");
        idx.add(&a);
        // z1 holds 1 and is the least-used populated value; unused z2/z3 are always fine.
        assert!(idx.admits(&a) && idx.admits(&b) && idx.admits(&c_));
        idx.add(&a);
        idx.add(&b);
        assert!(!idx.admits(&a), "z1 holds 2, z2 holds 1");
        assert!(idx.admits(&b));
        assert!(idx.admits(&c_), "unused value");
    }

    #[test]
    fn group_by_with_n_waits_until_n_values_are_used() {
        let (a, b, c_) = (node("a", &[("zone", "z1")]), node("b", &[("zone", "z2")]), node("c", &[("zone", "z3")]));
        let mut idx = index("zone:GROUP_BY:3");
        idx.add(&a);
        assert!(!idx.admits(&a), "only 1 of 3 expected values used");
        idx.add(&b);
        assert!(!idx.admits(&a) && !idx.admits(&b));
        assert!(idx.admits(&c_));
        idx.add(&c_);
        assert!(idx.admits(&a) && idx.admits(&b) && idx.admits(&c_), "3 values used, all at the minimum");
        idx.add(&a);
        assert!(!idx.admits(&a) && idx.admits(&b));
    }

    #[test]
    fn counted_operators_reject_nodes_without_the_attribute() {
        let bare = node("x", &[]);
        for text in ["rack:UNIQUE", "rack:GROUP_BY", "rack:MAX_PER:5"] {
            let idx = index(text);
            assert_eq!(idx.first_violation(&bare).map(ToString::to_string).as_deref(), Some(text));
        }
    }

    #[test]
    fn several_constraints_all_apply() {
        let mut idx = ConstraintIndex::new(vec![c("zone:LIKE:z[12]"), c("rack:MAX_PER:1")]);
        let a = node("a", &[("zone", "z1"), ("rack", "r1")]);
        let b = node("b", &[("zone", "z1"), ("rack", "r1")]);
        let z3 = node("c", &[("zone", "z3"), ("rack", "r2")]);
        idx.add(&a);
        assert_eq!(idx.first_violation(&b).map(ToString::to_string).as_deref(), Some("rack:MAX_PER:1"));
        assert_eq!(idx.first_violation(&z3).map(ToString::to_string).as_deref(), Some("zone:LIKE:z[12]"));
    }

    #[test]
    fn histogram_tracks_populated_values_and_the_minimum() {
        let mut counts = ValueCounts::default();
        assert_eq!(counts.stats(), GroupStats { populated: 0, min_count: 0 });
        counts.add("a");
        counts.add("a");
        counts.add("b");
        assert_eq!(counts.stats(), GroupStats { populated: 2, min_count: 1 });
        assert!(counts.remove("b"));
        assert!(!counts.remove("b"));
        assert_eq!(counts.stats(), GroupStats { populated: 1, min_count: 2 });
        assert_eq!(counts.iter().collect::<Vec<_>>(), vec![("a", 2)]);
    }
}
