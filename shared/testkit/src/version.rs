//! The Redis versions the project supports, and where their binaries live.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use crate::error::{HarnessError, Result};

/// A Redis release line the project supports and tests against.
///
/// Each variant stands for the one build installed for tests (see
/// [`RedisVersion::pinned`]); feature checks follow the real release history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RedisVersion {
    /// 2.8.17: RDB 6, no PSYNC2, no diskless sync, no cluster.
    V2_8,
    /// 3.2.6: RDB 7, cluster.
    V3_2,
    /// 5.0.6: RDB 9, PSYNC2, streams.
    V5_0,
    /// 6.0.9: RDB 9, ACL.
    V6_0,
    /// 6.2.14: RDB 9.
    V6_2,
    /// 7.0.x (Debian's package): RDB 10.
    V7_0,
}

/// Where Debian's `redis-server` package installs the server.
const DEBIAN_REDIS_SERVER: &str = "/usr/bin/redis-server";
const INSTALL_SCRIPT: &str = "deploy/local/install-redis-versions.sh";
const INSTALL_APT: &str = "apt-get install redis-server";

impl RedisVersion {
    /// Every supported version, oldest first.
    pub const ALL: [RedisVersion; 6] = [
        RedisVersion::V2_8,
        RedisVersion::V3_2,
        RedisVersion::V5_0,
        RedisVersion::V6_0,
        RedisVersion::V6_2,
        RedisVersion::V7_0,
    ];

    /// `"major.minor"`, e.g. `"2.8"`.
    pub fn label(self) -> &'static str {
        match self {
            RedisVersion::V2_8 => "2.8",
            RedisVersion::V3_2 => "3.2",
            RedisVersion::V5_0 => "5.0",
            RedisVersion::V6_0 => "6.0",
            RedisVersion::V6_2 => "6.2",
            RedisVersion::V7_0 => "7.0",
        }
    }

    /// The exact release installed for tests. For 7.0 this is the release Debian
    /// ships today; the harness accepts any 7.0.x there.
    pub fn pinned(self) -> &'static str {
        match self {
            RedisVersion::V2_8 => "2.8.17",
            RedisVersion::V3_2 => "3.2.6",
            RedisVersion::V5_0 => "5.0.6",
            RedisVersion::V6_0 => "6.0.9",
            RedisVersion::V6_2 => "6.2.14",
            RedisVersion::V7_0 => "7.0.15",
        }
    }

    /// The RDB format version this server writes.
    pub fn rdb_version(self) -> u32 {
        match self {
            RedisVersion::V2_8 => 6,
            RedisVersion::V3_2 => 7,
            RedisVersion::V5_0 | RedisVersion::V6_0 | RedisVersion::V6_2 => 9,
            RedisVersion::V7_0 => 10,
        }
    }

    /// Parses a label (`"6.2"`); a full version (`"6.2.14"`) maps to its line.
    pub fn from_label(label: &str) -> Option<RedisVersion> {
        RedisVersion::ALL.into_iter().find(|v| v.matches(label))
    }

    /// Whether `redis_version` (as in `INFO server`) belongs to this release line.
    pub fn matches(self, redis_version: &str) -> bool {
        let label = self.label();
        redis_version == label
            || redis_version
                .strip_prefix(label)
                .is_some_and(|rest| rest.starts_with('.'))
    }

    /// PSYNC2 (`PSYNC <replid> <offset>` with replication ids), Redis 4.0+.
    pub fn supports_psync2(self) -> bool {
        self >= RedisVersion::V5_0
    }

    /// Diskless replication, Redis 2.8.18+ (so not the 2.8.17 build used here).
    pub fn supports_diskless(self) -> bool {
        self >= RedisVersion::V3_2
    }

    /// Redis Cluster, 3.0+.
    pub fn supports_cluster(self) -> bool {
        self >= RedisVersion::V3_2
    }

    /// ACLs (`ACL`, `AUTH user pass`), 6.0+.
    pub fn supports_acl(self) -> bool {
        self >= RedisVersion::V6_0
    }

    /// The environment variable that overrides where the binary is looked up,
    /// e.g. `REDIS_SYNC_REDIS_7_0`.
    pub fn env_var(self) -> String {
        format!("REDIS_SYNC_REDIS_{}", self.label().replace('.', "_"))
    }

    /// The command that installs this version on a fresh machine.
    pub fn install_hint(self) -> &'static str {
        match self {
            RedisVersion::V7_0 => INSTALL_APT,
            _ => INSTALL_SCRIPT,
        }
    }
}

impl fmt::Display for RedisVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Finds the `redis-server` binary of `version` and checks that it is that version.
///
/// Lookup order: the environment variable [`RedisVersion::env_var`] (e.g.
/// `REDIS_SYNC_REDIS_7_0=/path/to/redis-server`); otherwise 7.0 is Debian's
/// `/usr/bin/redis-server` and every other version is
/// `$REDIS_VERSIONS_DIR/<pinned>/redis-server` (default directory
/// `~/.cache/redis-sync/redis`, filled by `deploy/local/install-redis-versions.sh`).
///
/// When the binary is missing the error names the command that installs it. Tests
/// should propagate that error (fail), never skip.
pub fn server_binary(version: RedisVersion) -> Result<PathBuf> {
    let path = locate(version, &|name| std::env::var_os(name))?;
    check_version(version, &path)?;
    Ok(path)
}

/// Where `version`'s binary should be, given an environment; checks that the file is
/// an executable, not what it is.
pub(crate) fn locate(
    version: RedisVersion,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<PathBuf> {
    let env_var = version.env_var();
    let not_found = |path: PathBuf, reason: String| HarnessError::BinaryNotFound {
        version,
        path,
        reason,
        install: version.install_hint(),
        env_var: env_var.clone(),
    };

    let (path, origin) = match env(&env_var).filter(|v| !v.is_empty()) {
        Some(p) => (PathBuf::from(p), format!(" (from {env_var})")),
        None if version == RedisVersion::V7_0 => {
            (PathBuf::from(DEBIAN_REDIS_SERVER), String::new())
        }
        None => {
            let dir = match env("REDIS_VERSIONS_DIR").filter(|v| !v.is_empty()) {
                Some(d) => PathBuf::from(d),
                None => match env("HOME").filter(|v| !v.is_empty()) {
                    Some(home) => Path::new(&home).join(".cache/redis-sync/redis"),
                    None => {
                        return Err(not_found(
                            PathBuf::from("$REDIS_VERSIONS_DIR"),
                            "neither REDIS_VERSIONS_DIR nor HOME is set".into(),
                        ));
                    }
                },
            };
            (
                dir.join(version.pinned()).join("redis-server"),
                String::new(),
            )
        }
    };

    match std::fs::metadata(&path) {
        Ok(meta) if !meta.is_file() => Err(not_found(path, format!("not a file{origin}"))),
        Ok(meta) if !is_executable(&meta) => {
            Err(not_found(path, format!("not executable{origin}")))
        }
        Ok(_) => Ok(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(not_found(path, format!("no such file{origin}")))
        }
        Err(e) => Err(not_found(path, format!("{e}{origin}"))),
    }
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &std::fs::Metadata) -> bool {
    true
}

/// Runs `redis-server --version` once per path and compares the reported version.
fn check_version(version: RedisVersion, path: &Path) -> Result<()> {
    static SEEN: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);

    let cached = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(path)
        .cloned();
    let found = match cached {
        Some(found) => found,
        None => {
            let found = reported_version(path)?;
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(path.to_path_buf(), found.clone());
            found
        }
    };
    if version.matches(&found) {
        Ok(())
    } else {
        Err(HarnessError::WrongVersion {
            version,
            path: path.to_path_buf(),
            found,
            install: version.install_hint(),
            env_var: version.env_var(),
        })
    }
}

/// `Redis server v=7.0.15 sha=...` → `7.0.15`.
fn reported_version(path: &Path) -> Result<String> {
    let out = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| HarnessError::io(format!("running {} --version", path.display()), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|word| word.strip_prefix("v="))
        .map(str::to_owned)
        .ok_or_else(|| {
            HarnessError::io(
                format!("running {} --version", path.display()),
                std::io::Error::other(format!("unrecognised output {text:?}")),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let labels: Vec<_> = RedisVersion::ALL.iter().map(|v| v.label()).collect();
        assert_eq!(labels, ["2.8", "3.2", "5.0", "6.0", "6.2", "7.0"]);
        let rdb: Vec<_> = RedisVersion::ALL.iter().map(|v| v.rdb_version()).collect();
        assert_eq!(rdb, [6, 7, 9, 9, 9, 10]);
        for v in RedisVersion::ALL {
            assert_eq!(RedisVersion::from_label(v.label()), Some(v));
            assert_eq!(RedisVersion::from_label(v.pinned()), Some(v));
            assert!(v.matches(v.pinned()));
        }
        assert_eq!(RedisVersion::from_label("2.6"), None);
        assert_eq!(RedisVersion::from_label("7.00"), None);
        assert!(!RedisVersion::V2_8.matches("2.88.1"));
        assert!(!RedisVersion::V2_8.supports_diskless());
        assert!(RedisVersion::V3_2.supports_diskless());
        assert!(!RedisVersion::V3_2.supports_psync2());
        assert!(RedisVersion::V5_0.supports_psync2());
        assert!(!RedisVersion::V2_8.supports_cluster());
        assert!(RedisVersion::V3_2.supports_cluster());
        assert!(!RedisVersion::V5_0.supports_acl());
        assert!(RedisVersion::V6_0.supports_acl());
        assert_eq!(RedisVersion::V7_0.env_var(), "REDIS_SYNC_REDIS_7_0");
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn missing_binaries_name_their_install_command() {
        let env = env_of(&[("REDIS_VERSIONS_DIR", "/nonexistent/versions")]);
        let err = locate(RedisVersion::V2_8, &env).unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/versions/2.8.17/redis-server"),
            "{err}"
        );
        assert!(
            err.contains("`deploy/local/install-redis-versions.sh`"),
            "{err}"
        );
        assert!(err.contains("REDIS_SYNC_REDIS_2_8"), "{err}");

        let env = env_of(&[("REDIS_SYNC_REDIS_7_0", "/nonexistent/redis-server")]);
        let err = locate(RedisVersion::V7_0, &env).unwrap_err().to_string();
        assert!(err.contains("`apt-get install redis-server`"), "{err}");
        assert!(
            err.contains("/nonexistent/redis-server: no such file (from REDIS_SYNC_REDIS_7_0)"),
            "{err}"
        );

        let env = env_of(&[]);
        let err = locate(RedisVersion::V6_2, &env).unwrap_err().to_string();
        assert!(err.contains("neither REDIS_VERSIONS_DIR nor HOME"), "{err}");
    }

    #[test]
    fn home_default_and_directory_rejected() {
        let env = env_of(&[("HOME", "/nonexistent-home")]);
        let err = locate(RedisVersion::V5_0, &env).unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent-home/.cache/redis-sync/redis/5.0.6/redis-server"),
            "{err}"
        );
        let env = env_of(&[("REDIS_SYNC_REDIS_6_0", "/")]);
        let err = locate(RedisVersion::V6_0, &env).unwrap_err().to_string();
        assert!(err.contains("not a file"), "{err}");
    }
}
