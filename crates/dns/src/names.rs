//! Parsing of the textual names that reach us from flags and from the federator. Everything
//! here returns lower-case absolute [`Name`]s, so later comparisons never depend on case.

use hickory_proto::rr::Name;

/// Longest presentation form of a domain name (without the trailing dot), RFC 1035 §2.3.4.
const NAME_LEN_MAX: usize = 253;
/// Longest label, RFC 1035 §2.3.4.
const LABEL_LEN_MAX: usize = 63;

/// Checks one label: 1-63 characters from `[a-z0-9_-]` (any ASCII case), not starting or
/// ending with a hyphen. Underscores are accepted because service-style names use them.
pub(crate) fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("has an empty label".to_string());
    }
    if label.len() > LABEL_LEN_MAX {
        return Err(format!("label {label:?} is longer than {LABEL_LEN_MAX} characters"));
    }
    if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(format!("label {label:?} contains {c:?}; use letters, digits, '-' or '_'"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label {label:?} starts or ends with '-'"));
    }
    Ok(())
}

fn check_labels(text: &str) -> Result<(), String> {
    text.split('.').try_for_each(check_label)
}

fn to_name(text: &str) -> Result<Name, String> {
    let mut name = Name::from_ascii(text).map_err(|e| e.to_string())?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

/// Parses a zone such as `fed.local.` or `fed.local` (made absolute). The root is refused: an
/// authoritative server for the root zone is not what this crate is for.
pub(crate) fn parse_zone(text: &str) -> Result<Name, String> {
    let trimmed = text.strip_suffix('.').unwrap_or(text);
    if trimmed.is_empty() {
        return Err("must not be empty or the root".to_string());
    }
    if trimmed.len() > NAME_LEN_MAX {
        return Err(format!("is longer than {NAME_LEN_MAX} characters"));
    }
    check_labels(trimmed)?;
    to_name(trimmed)
}

/// Turns a name relative to `zone` (e.g. `crm-web` or `www.crm`) into an absolute lower-case
/// name. The apex itself (`@`, empty) and absolute names are refused.
pub(crate) fn parse_relative(text: &str, zone: &Name) -> Result<Name, String> {
    if text.is_empty() || text == "@" {
        return Err("is empty; the zone apex is not a routed name".to_string());
    }
    if text.ends_with('.') {
        return Err("must be relative to the zone (no trailing dot)".to_string());
    }
    check_labels(text)?;
    let zone_text = zone.to_ascii();
    let zone_len = zone_text.strip_suffix('.').unwrap_or(&zone_text).len();
    if text.len() + 1 + zone_len > NAME_LEN_MAX {
        return Err(format!("is longer than {NAME_LEN_MAX} characters once the zone is appended"));
    }
    to_name(text)?.append_domain(zone).map(|n| n.to_lowercase()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_is_made_absolute_and_lower_case() {
        let zone = parse_zone("Fed.Local").unwrap();
        assert!(zone.is_fqdn());
        assert!(zone.eq_case(&Name::from_ascii("fed.local.").unwrap()));
        assert_eq!(parse_zone("fed.local.").unwrap(), zone);
        assert!(parse_zone(".").is_err());
        assert!(parse_zone("").is_err());
        assert!(parse_zone("bad..zone").is_err());
        assert!(parse_zone("sp ace.local").is_err());
    }

    #[test]
    fn relative_names_are_checked_and_anchored() {
        let zone = parse_zone("fed.local.").unwrap();
        let name = parse_relative("CRM-web", &zone).unwrap();
        assert!(name.eq_case(&Name::from_ascii("crm-web.fed.local.").unwrap()));
        assert!(parse_relative("www.crm", &zone).is_ok());
        for bad in ["", "@", "crm.", "-crm", "crm-", "c*m", "a..b", &"x".repeat(64), "*"] {
            assert!(parse_relative(bad, &zone).is_err(), "{bad:?} should be refused");
        }
        let long = ["a".repeat(62), "b".repeat(62), "c".repeat(62), "d".repeat(62)].join(".");
        assert!(parse_relative(&long, &zone).is_err());
    }
}
