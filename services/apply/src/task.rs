//! What a task is allowed to be: spec validation, the state machine's vocabulary, and
//! the redaction every task goes through before it leaves the process.

use std::collections::{BTreeMap, BTreeSet};

use redis_sync_proto::v1::{
    ConflictMode, HeartbeatOptions, InstanceMode, RedisEndpoint, RedisTls, SyncType, Task,
    TaskSpec, TaskState,
};

use crate::endpoint;

/// Number of databases a standalone Redis has by default (`databases 16`).
pub const DATABASES: u32 = 16;

/// Default heartbeat key prefix (DESIGN.md "Tasks").
pub const DEFAULT_HEARTBEAT_PREFIX: &str = "DTS_REDIS_TIMESTAMP_HEARTBEAT";

/// Longest address, user name, TLS server name or ingest endpoint a task may name. A host
/// name is at most 253 bytes; anything much longer is a mistake or an attack, and would
/// be stored, echoed in errors and resolved on every connection.
const MAX_NAME_BYTES: usize = 1024;
/// Longest password: cloud tokens used as passwords (Entra ID, IAM) run to a few KiB.
const MAX_PASSWORD_BYTES: usize = 64 << 10;
/// Longest TLS file path (Linux's PATH_MAX).
const MAX_PATH_BYTES: usize = 4096;

/// A request field that is wrong, named by its path in the request (e.g.
/// `spec.source.address`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Path of the field.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn field_err(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The short name of a state ("PAUSED"), or "UNKNOWN(n)" for a value this build does not know.
pub fn state_name(state: i32) -> String {
    match TaskState::try_from(state) {
        Ok(s) => s.as_str_name().trim_start_matches("TASK_STATE_").to_owned(),
        Err(_) => format!("UNKNOWN({state})"),
    }
}

/// The state of `task` (UNSPECIFIED for an unknown value).
pub fn state_of(task: &Task) -> TaskState {
    TaskState::try_from(task.state).unwrap_or(TaskState::Unspecified)
}

/// True while a runner is applying events for the task.
pub fn is_running(state: TaskState) -> bool {
    matches!(state, TaskState::InitialSync | TaskState::Synchronizing)
}

/// Blanks the passwords of a task about to leave the process, keeping `password_set`.
pub fn redact(task: &mut Task) {
    if let Some(spec) = task.spec.as_mut() {
        redact_spec(spec);
    }
}

/// Blanks the passwords of a spec, keeping `password_set`.
pub fn redact_spec(spec: &mut TaskSpec) {
    for ep in [spec.source.as_mut(), spec.destination.as_mut()]
        .into_iter()
        .flatten()
    {
        ep.password_set = !ep.password.is_empty();
        ep.password.clear();
    }
}

/// Checks a CreateTask spec and returns it normalised: defaults filled in (name, sync
/// type, heartbeat prefix, ingest endpoint), `password_set` recomputed. `default_ingest`
/// is apply's `--ingest-endpoint`; a task is bound to its ingest for life because the
/// subscription's spool lives there.
pub fn validate_spec(
    spec: Option<TaskSpec>,
    default_ingest: &str,
    id: &str,
) -> Result<TaskSpec, FieldError> {
    let mut spec = spec.ok_or_else(|| field_err("spec", "required"))?;

    if spec.name.trim().is_empty() {
        spec.name = format!("task-{}", id.split('-').next().unwrap_or(id));
    } else if spec.name.len() > 200 {
        return Err(field_err("spec.name", "longer than 200 bytes"));
    } else if spec.name.chars().any(char::is_control) {
        return Err(field_err("spec.name", "contains control characters"));
    }

    let source = validate_endpoint("spec.source", spec.source.as_mut())?;
    let destination = validate_endpoint("spec.destination", spec.destination.as_mut())?;
    if same_address(&source.1, &destination.1) {
        return Err(field_err(
            "spec.destination.address",
            format!("{:?} is the source itself", destination.1),
        ));
    }

    match ConflictMode::try_from(spec.conflict_mode) {
        Ok(ConflictMode::Intercept | ConflictMode::Overwrite) => {}
        _ => {
            return Err(field_err(
                "spec.conflict_mode",
                "must be INTERCEPT or OVERWRITE",
            ));
        }
    }
    match SyncType::try_from(spec.sync_type) {
        Ok(SyncType::Unspecified) => spec.sync_type = SyncType::FullAndIncremental as i32,
        Ok(SyncType::FullAndIncremental) => {}
        Err(_) => {
            return Err(field_err(
                "spec.sync_type",
                format!("unknown value {}", spec.sync_type),
            ));
        }
    }

    validate_databases(&spec, source.0, destination.0)?;

    let hb = spec.heartbeat.get_or_insert_with(HeartbeatOptions::default);
    if hb.interval_ms != 0 && !(100..=60_000).contains(&hb.interval_ms) {
        return Err(field_err(
            "spec.heartbeat.interval_ms",
            format!(
                "{} is outside 100..=60000 (0 means the default, 1000)",
                hb.interval_ms
            ),
        ));
    }
    if hb.key_prefix.is_empty() {
        hb.key_prefix = DEFAULT_HEARTBEAT_PREFIX.to_owned();
    } else if hb.key_prefix.len() > 200 {
        return Err(field_err(
            "spec.heartbeat.key_prefix",
            "longer than 200 bytes",
        ));
    } else if hb
        .key_prefix
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
    {
        // Braces would become the key's hash tag and pin every master's heartbeat key to
        // one slot; ingest adds its own tag per master.
        return Err(field_err(
            "spec.heartbeat.key_prefix",
            "must not contain whitespace, control characters, '{' or '}'",
        ));
    }

    if spec.ingest_endpoint.is_empty() {
        spec.ingest_endpoint = default_ingest.to_owned();
    } else if spec.ingest_endpoint.len() > MAX_NAME_BYTES {
        return Err(field_err(
            "spec.ingest_endpoint",
            format!("longer than {MAX_NAME_BYTES} bytes"),
        ));
    } else if let Err(e) =
        crate::config::validate_endpoint("spec.ingest_endpoint", &spec.ingest_endpoint)
    {
        return Err(field_err("spec.ingest_endpoint", e.reason));
    }
    Ok(spec)
}

fn validate_endpoint(
    field: &str,
    ep: Option<&mut RedisEndpoint>,
) -> Result<(InstanceMode, String), FieldError> {
    let ep = ep.ok_or_else(|| field_err(field, "required"))?;
    let mode = match InstanceMode::try_from(ep.mode) {
        Ok(m @ (InstanceMode::Standalone | InstanceMode::Cluster)) => m,
        _ => {
            return Err(field_err(
                format!("{field}.mode"),
                "must be STANDALONE or CLUSTER",
            ));
        }
    };
    ep.address = ep.address.trim().to_owned();
    // Before parsing: the parse error quotes the address.
    if ep.address.len() > MAX_NAME_BYTES {
        return Err(field_err(
            format!("{field}.address"),
            format!("longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    match endpoint::host_port(&ep.address) {
        Ok((_, 0)) => {
            return Err(field_err(
                format!("{field}.address"),
                format!("{:?}: port 0", ep.address),
            ));
        }
        Ok(_) => {}
        Err(_) => {
            return Err(field_err(
                format!("{field}.address"),
                format!("{:?} is not host:port", ep.address),
            ));
        }
    }
    if ep.username.len() > MAX_NAME_BYTES {
        return Err(field_err(
            format!("{field}.username"),
            format!("longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    if ep
        .username
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(field_err(
            format!("{field}.username"),
            "contains whitespace or control characters",
        ));
    }
    if ep.password.len() > MAX_PASSWORD_BYTES {
        return Err(field_err(
            format!("{field}.password"),
            format!("longer than {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    ep.password_set = !ep.password.is_empty();
    if let Some(tls) = &ep.tls {
        validate_tls(&format!("{field}.tls"), tls)?;
    }
    Ok((mode, ep.address.clone()))
}

fn validate_tls(field: &str, tls: &RedisTls) -> Result<(), FieldError> {
    if tls.server_name.len() > MAX_NAME_BYTES {
        return Err(field_err(
            format!("{field}.server_name"),
            format!("longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    for (name, path) in [
        ("ca_file", &tls.ca_file),
        ("cert_file", &tls.cert_file),
        ("key_file", &tls.key_file),
    ] {
        if path.len() > MAX_PATH_BYTES {
            return Err(field_err(
                format!("{field}.{name}"),
                format!("longer than {MAX_PATH_BYTES} bytes"),
            ));
        }
        // Apply reads these files whenever it connects: refuse now what it must never
        // read (a device, a FIFO, a huge file); a file that does not exist yet may appear.
        if tls.enabled
            && !path.is_empty()
            && let Err(reason) = redis_sync_service::check_pem_file(path)
        {
            return Err(field_err(
                format!("{field}.{name}"),
                format!("{path:?} {reason}"),
            ));
        }
    }
    if tls.enabled && tls.cert_file.is_empty() != tls.key_file.is_empty() {
        return Err(field_err(field, "cert_file and key_file go together"));
    }
    Ok(())
}

fn same_address(a: &str, b: &str) -> bool {
    let norm = |s: &str| match endpoint::host_port(s) {
        Ok((host, port)) => {
            let host = host.to_ascii_lowercase();
            let host = if host == "localhost" {
                "127.0.0.1".to_owned()
            } else {
                host
            };
            format!("{host}:{port}")
        }
        Err(_) => s.to_owned(),
    };
    norm(a) == norm(b)
}

fn validate_databases(
    spec: &TaskSpec,
    source: InstanceMode,
    destination: InstanceMode,
) -> Result<(), FieldError> {
    let mut seen = BTreeSet::new();
    for (i, &db) in spec.databases.iter().enumerate() {
        if db >= DATABASES {
            return Err(field_err(
                format!("spec.databases[{i}]"),
                format!("{db} is outside 0..=15"),
            ));
        }
        if source == InstanceMode::Cluster && db != 0 {
            return Err(field_err(
                format!("spec.databases[{i}]"),
                format!("{db}: a cluster source has only database 0"),
            ));
        }
        if !seen.insert(db) {
            return Err(field_err(
                format!("spec.databases[{i}]"),
                format!("{db} is listed twice"),
            ));
        }
    }
    for (&from, &to) in &spec.db_mapping {
        let field = format!("spec.db_mapping[{from}]");
        if from >= DATABASES {
            return Err(field_err(
                field,
                format!("source database {from} is outside 0..=15"),
            ));
        }
        if to >= DATABASES {
            return Err(field_err(
                field,
                format!("destination database {to} is outside 0..=15"),
            ));
        }
        if destination == InstanceMode::Cluster && to != 0 {
            return Err(field_err(
                field,
                format!("{to}: a cluster destination has only database 0"),
            ));
        }
        if !selected_databases(spec).contains(&from) {
            return Err(field_err(
                field,
                format!("source database {from} is not selected in spec.databases"),
            ));
        }
    }
    // Two source databases in one destination database would merge keyspaces, and a
    // FLUSHDB on one would wipe the other's keys.
    let mut targets: BTreeMap<u32, u32> = BTreeMap::new();
    for (from, to) in db_pairs(spec) {
        if destination == InstanceMode::Cluster && to != 0 {
            return Err(field_err(
                "spec.databases",
                format!(
                    "source database {from} would go to database {to}, but a cluster destination has only database 0; select one database and map it to 0"
                ),
            ));
        }
        if let Some(other) = targets.insert(to, from) {
            return Err(field_err(
                "spec.db_mapping",
                format!("source databases {other} and {from} both go to destination database {to}"),
            ));
        }
    }
    Ok(())
}

/// The source databases the task copies ("empty means all": 0..=15, or 0 for a cluster).
pub fn selected_databases(spec: &TaskSpec) -> Vec<u32> {
    if !spec.databases.is_empty() {
        let mut dbs = spec.databases.clone();
        dbs.sort_unstable();
        dbs.dedup();
        return dbs;
    }
    let cluster = spec.source.as_ref().is_some_and(endpoint::is_cluster);
    if cluster {
        vec![0]
    } else {
        (0..DATABASES).collect()
    }
}

/// (source db, destination db) for every selected database.
pub fn db_pairs(spec: &TaskSpec) -> Vec<(u32, u32)> {
    selected_databases(spec)
        .into_iter()
        .map(|db| (db, spec.db_mapping.get(&db).copied().unwrap_or(db)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(mode: InstanceMode, addr: &str) -> Option<RedisEndpoint> {
        Some(RedisEndpoint {
            mode: mode as i32,
            address: addr.into(),
            password: "pw".into(),
            ..Default::default()
        })
    }

    fn spec() -> TaskSpec {
        TaskSpec {
            source: ep(InstanceMode::Standalone, "127.0.0.1:6379"),
            destination: ep(InstanceMode::Standalone, "127.0.0.1:6380"),
            conflict_mode: ConflictMode::Intercept as i32,
            ..Default::default()
        }
    }

    fn check(s: TaskSpec) -> Result<TaskSpec, FieldError> {
        validate_spec(Some(s), "http://127.0.0.1:50051", "0123abcd-0000")
    }

    #[test]
    fn defaults_are_filled() {
        let s = check(spec()).unwrap();
        assert_eq!(s.name, "task-0123abcd");
        assert_eq!(s.sync_type, SyncType::FullAndIncremental as i32);
        assert_eq!(s.heartbeat.unwrap().key_prefix, DEFAULT_HEARTBEAT_PREFIX);
        assert_eq!(s.ingest_endpoint, "http://127.0.0.1:50051");
        assert!(s.source.unwrap().password_set);
    }

    #[test]
    fn bad_fields_are_named() {
        type Edit = Box<dyn Fn(&mut TaskSpec)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.source = None), "spec.source"),
            (
                Box::new(|s| s.source.as_mut().unwrap().address = "nohost".into()),
                "spec.source.address",
            ),
            (
                Box::new(|s| s.destination.as_mut().unwrap().mode = 0),
                "spec.destination.mode",
            ),
            (
                Box::new(|s| s.destination.as_mut().unwrap().address = "127.0.0.1:6379".into()),
                "spec.destination.address",
            ),
            (Box::new(|s| s.conflict_mode = 0), "spec.conflict_mode"),
            (Box::new(|s| s.databases = vec![16]), "spec.databases[0]"),
            (Box::new(|s| s.databases = vec![1, 1]), "spec.databases[1]"),
            (
                Box::new(|s| {
                    s.databases = vec![1];
                    s.db_mapping.insert(1, 16);
                }),
                "spec.db_mapping[1]",
            ),
            (
                Box::new(|s| {
                    s.databases = vec![1, 2];
                    s.db_mapping.insert(1, 2);
                }),
                "spec.db_mapping",
            ),
            (
                Box::new(|s| {
                    s.heartbeat = Some(HeartbeatOptions {
                        interval_ms: 50,
                        ..Default::default()
                    })
                }),
                "spec.heartbeat.interval_ms",
            ),
            (
                Box::new(|s| s.ingest_endpoint = "ftp://x:1".into()),
                "spec.ingest_endpoint",
            ),
            (
                Box::new(|s| {
                    s.source.as_mut().unwrap().address = format!("{}:1", "a".repeat(2000))
                }),
                "spec.source.address",
            ),
            (
                Box::new(|s| s.source.as_mut().unwrap().password = "p".repeat(65 << 10)),
                "spec.source.password",
            ),
            (
                Box::new(|s| {
                    s.destination.as_mut().unwrap().tls = Some(RedisTls {
                        enabled: true,
                        ca_file: "/dev/zero".into(),
                        ..Default::default()
                    })
                }),
                "spec.destination.tls.ca_file",
            ),
            (
                Box::new(|s| s.destination.as_mut().unwrap().mode = InstanceMode::Cluster as i32),
                "spec.databases",
            ),
        ];
        for (edit, field) in cases {
            let mut s = spec();
            edit(&mut s);
            let err = check(s).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        let mut s = spec();
        s.source.as_mut().unwrap().mode = InstanceMode::Cluster as i32;
        s.databases = vec![3];
        assert_eq!(check(s).unwrap_err().field, "spec.databases[0]");
    }

    #[test]
    fn cluster_destination_takes_one_database_mapped_to_zero() {
        let mut s = spec();
        s.destination.as_mut().unwrap().mode = InstanceMode::Cluster as i32;
        s.databases = vec![3];
        s.db_mapping.insert(3, 0);
        assert!(check(s.clone()).is_ok());
        s.db_mapping.insert(3, 1);
        assert_eq!(check(s).unwrap_err().field, "spec.db_mapping[3]");
    }

    #[test]
    fn redaction_keeps_password_set() {
        let mut t = Task {
            spec: Some(check(spec()).unwrap()),
            ..Default::default()
        };
        redact(&mut t);
        let s = t.spec.unwrap();
        assert!(s.source.as_ref().unwrap().password.is_empty());
        assert!(s.source.unwrap().password_set);
    }

    #[test]
    fn state_names() {
        assert_eq!(state_name(TaskState::Paused as i32), "PAUSED");
        assert_eq!(state_name(99), "UNKNOWN(99)");
    }
}
