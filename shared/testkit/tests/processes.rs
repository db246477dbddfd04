//! No stray processes: servers die with a panicking test and with a killed test
//! process. A missing binary fails the test with the command that installs it.
//!
//! Some tests run the `redis-sync-testkit-helper` binary as a child process, so that the
//! environment override and process death can be exercised without touching the
//! environment or the life of this process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use redis_sync_testkit::{RedisServer, RedisVersion, server_binary, wait_until};

/// Alive = `/proc/<pid>` exists and is not a zombie (an orphan is reaped by init,
/// which in some containers never happens).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The helper binary in `mode` ("hold", or "start <label>").
fn helper(mode: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redis-sync-testkit-helper"));
    cmd.args(mode);
    cmd
}

#[test]
fn drop_kills_the_server_when_the_test_panics() {
    let seen = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let server = RedisServer::start(RedisVersion::V6_2).unwrap_or_else(|e| panic!("{e}"));
        *seen.lock().unwrap() = Some((server.pid(), server.dir().to_owned()));
        panic!("deliberate panic with a running server");
    });
    assert!(result.is_err());
    let (pid, dir) = seen.lock().unwrap().take().unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "redis {pid} survived the panic"
    );
    // The directory is kept for the post-mortem.
    assert!(dir.join("redis.log").is_file());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn servers_die_with_the_test_process() {
    let mut child = helper(&["hold"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Read on a thread so a helper that never prints fails the test instead of
    // hanging it.
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if let Some((_, list)) = line.split_once("REDIS_SERVERS=") {
                let servers: Vec<(u32, PathBuf)> = list
                    .split(';')
                    .map(|s| {
                        let (pid, dir) = s.split_once(',').unwrap();
                        (pid.trim().parse().unwrap(), PathBuf::from(dir.trim()))
                    })
                    .collect();
                let _ = tx.send(servers);
                return;
            }
        }
    });
    let servers = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(servers) => servers,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("helper printed no pids: {e}");
        }
    };
    assert_eq!(servers.len(), 2, "{servers:?}");
    let pids: Vec<u32> = servers.iter().map(|(pid, _)| *pid).collect();
    assert!(pids.iter().all(|&p| alive(p)));

    child.kill().unwrap();
    child.wait().unwrap();
    wait_until(
        "the helper's servers to die",
        Duration::from_secs(10),
        || match pids.iter().find(|&&p| alive(p)) {
            Some(p) => Err(format!("pid {p} alive")),
            None => Ok(()),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // A killed process cannot clean up after itself.
    for (_, dir) in servers {
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn run_start_helper(version: RedisVersion, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = helper(&["start", version.label()]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn missing_binary_fails_with_install_hint() {
    let (ok, text) = run_start_helper(
        RedisVersion::V7_0,
        &[("REDIS_SYNC_REDIS_7_0", "/nonexistent/redis-server-7.0")],
    );
    assert!(!ok, "helper passed without a binary:\n{text}");
    for needle in [
        "redis-server 7.0 not found at /nonexistent/redis-server-7.0",
        "(from REDIS_SYNC_REDIS_7_0)",
        "install it with `apt-get install redis-server`",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }

    let (ok, text) = run_start_helper(
        RedisVersion::V2_8,
        &[("REDIS_VERSIONS_DIR", "/nonexistent/versions")],
    );
    assert!(!ok, "helper passed without a binary:\n{text}");
    for needle in [
        "/nonexistent/versions/2.8.17/redis-server: no such file",
        "install it with `deploy/local/install-redis-versions.sh`",
        "REDIS_SYNC_REDIS_2_8",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn wrong_version_binary_is_rejected() {
    let v62 = server_binary(RedisVersion::V6_2).unwrap_or_else(|e| panic!("{e}"));
    let (ok, text) = run_start_helper(
        RedisVersion::V7_0,
        &[("REDIS_SYNC_REDIS_7_0", v62.to_str().unwrap())],
    );
    assert!(!ok, "helper passed with a 6.2 binary as 7.0:\n{text}");
    assert!(
        text.contains("reports redis 6.2.14, expected 7.0.x"),
        "{text}"
    );
}

#[test]
fn every_version_is_installed() {
    for version in RedisVersion::ALL {
        server_binary(version).unwrap_or_else(|e| panic!("{e}"));
    }
}
