//! Changing an app group's spec with `fedctl group apply`, against the real binaries on loopback:
//! a bad spec is refused and changes nothing, a dry run shows the change and changes nothing,
//! and the applied change rolls every instance to the new spec and is audited.

use std::time::Duration;

use serde_json::Value;
use switchyard_chaos_tests::{Federation, fedctl, fedctl_json, fedctl_ok, wait_for};

fn web_app(dir: &std::path::Path) -> Value {
    let apps = fedctl_json(dir, &["cell", "apps", "--dir", dir.to_str().unwrap()]);
    apps["apps"].as_array().unwrap().iter().find(|a| a["group"] == "crm-web" && a["app"] == "web").unwrap().clone()
}

fn audit_len(dir: &std::path::Path) -> usize {
    fedctl_json(dir, &["audit", "list"]).as_array().unwrap().len()
}

fn environ_has(pid: i64, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|e| e.split(|b| *b == 0).any(|kv| kv == entry.as_bytes()))
}

#[test]
fn applying_a_changed_group_spec_rolls_every_instance_and_is_audited() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let _fed = Federation::up(&dir, &["--sites", "2"]);
    let before = web_app(&dir);
    let version_before = before["version"].as_str().unwrap().to_string();
    assert_eq!(before["current"].as_u64(), Some(2), "{before}");

    let shown = fedctl_ok(&dir, &["group", "show", "crm-web"]);
    let mut spec: toml::Table = toml::from_str(&shown).expect("group show prints TOML");
    assert_eq!(spec["name"].as_str(), Some("crm-web"));

    // A bad spec is refused with the reason, and nothing changes.
    let audit_before = audit_len(&dir);
    let mut bad = spec.clone();
    bad["apps"].as_array_mut().unwrap()[0]
        .as_table_mut()
        .unwrap()
        .insert("constraints".into(), toml::Value::Array(vec!["rack:SOMETIMES".into()]));
    let bad_file = dir.join("bad.toml");
    std::fs::write(&bad_file, toml::to_string(&bad).unwrap()).unwrap();
    let out = fedctl(&dir, &["group", "apply", bad_file.to_str().unwrap(), "--reason", "CHG-0"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SOMETIMES"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = fedctl(&dir, &["group", "apply", bad_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "a change without a reason is refused");
    assert_eq!(audit_len(&dir), audit_before);

    // A new release: the dry run says what will happen and changes nothing.
    let app = spec["apps"].as_array_mut().unwrap()[0].as_table_mut().unwrap();
    let env = app.entry("env").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    env.as_table_mut().unwrap().insert("RELEASE".into(), "2".into());
    let file = dir.join("crm-web.toml");
    std::fs::write(&file, toml::to_string(&spec).unwrap()).unwrap();
    let dry = fedctl_ok(&dir, &["group", "apply", file.to_str().unwrap(), "--dry-run"]);
    assert!(dry.contains("would change") && dry.contains("app web: new spec"), "{dry}");
    assert_eq!(audit_len(&dir), audit_before);
    assert_eq!(web_app(&dir)["version"].as_str(), Some(version_before.as_str()));

    // Applied: every instance is replaced by one running the new environment.
    let applied = fedctl_ok(&dir, &["group", "apply", file.to_str().unwrap(), "--reason", "CHG-1 release 2"]);
    assert!(applied.contains("changed"), "{applied}");
    let after = wait_for(Duration::from_secs(60), "both instances on the new version", || {
        let a = web_app(&dir);
        (a["version"].as_str() != Some(version_before.as_str())
            && a["current"].as_u64() == Some(2)
            && a["running"].as_u64() == Some(2)
            && a["healthy"].as_u64() == Some(2)
            && a["waiting_for"].as_str() == Some(""))
        .then_some(a)
    });
    assert_eq!(after["desired"].as_u64(), Some(2), "{after}");
    let tasks = fedctl_json(&dir, &["cell", "tasks", "--dir", dir.to_str().unwrap()]);
    let web: Vec<&Value> = tasks["tasks"].as_array().unwrap().iter().filter(|t| t["group"] == "crm-web").collect();
    assert_eq!(web.len(), 2, "{tasks}");
    for t in web {
        assert!(environ_has(t["pid"].as_i64().unwrap(), "RELEASE=2"), "{t} runs the old spec");
    }
    let audit = fedctl_json(&dir, &["audit", "list"]);
    let last = audit.as_array().unwrap().last().unwrap();
    assert_eq!(last["action"], "group.update", "{last}");
    assert_eq!(last["reason"], "CHG-1 release 2");
    assert!(last["actor"].as_str().unwrap().starts_with("operator:"), "{last}");

    // Each group is its own tenant in the cell's allocator by default.
    let roles = fedctl_json(&dir, &["cell", "roles", "--dir", dir.to_str().unwrap()]);
    let crm = roles["roles"].as_array().unwrap().iter().find(|r| r["name"] == "crm-web").expect("crm-web role").clone();
    assert_eq!(crm["held"]["cpu_millis"].as_u64(), Some(200), "{roles}");
    assert!(crm["dominant_share"].as_f64().unwrap() > 0.0, "{roles}");

    // The same spec again changes nothing.
    let again = fedctl_ok(&dir, &["group", "apply", file.to_str().unwrap(), "--reason", "CHG-1 again"]);
    assert!(again.contains("nothing to change"), "{again}");
}
