//! Every supported version starts, serves commands, reports its version, survives a
//! restart with saved data, dies on kill9 and leaves no process behind.

use std::path::Path;
use std::time::Duration;

use redis_sync_testkit::{Client, HarnessError, RedisServer, RedisVersion, Reply};

fn proc_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn bulk(bytes: &[u8]) -> Reply {
    Reply::Bulk(Some(bytes.to_vec()))
}

fn config_get(server: &RedisServer, name: &str) -> Result<String, HarnessError> {
    let reply = server.cmd_ok(&["CONFIG", "GET", name])?;
    let value = reply
        .as_array()
        .and_then(|items| items.get(1))
        .and_then(Reply::as_str)
        .unwrap_or_else(|| panic!("CONFIG GET {name} returned {reply}"));
    Ok(value.to_owned())
}

fn lifecycle(version: RedisVersion) -> Result<(), HarnessError> {
    let server = RedisServer::start(version)?;
    let port = server.port();
    assert_eq!(server.version(), version);
    assert_eq!(server.addr(), format!("127.0.0.1:{port}"));
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}/"));
    assert!(proc_exists(server.pid()));

    // Commands, binary-safe.
    assert!(server.cmd_str(&["SET", "k", "v"])?.is_ok());
    assert_eq!(server.cmd_str(&["GET", "k"])?, bulk(b"v"));
    let key: &[u8] = b"bin\0\r\nkey";
    let value: &[u8] = &[0, 255, b'\r', b'\n', b'$', b'*'];
    assert!(server.command(&[b"SET", key, value])?.is_ok());
    assert_eq!(server.command(&[b"GET", key])?, bulk(value));
    assert_eq!(server.cmd_str(&["GET", "missing"])?, Reply::Bulk(None));
    assert!(server.cmd_str(&["NOSUCHCOMMAND"])?.as_error().is_some());

    // It is the version we asked for.
    let reported = server.info_field("server", "redis_version")?;
    assert!(version.matches(&reported), "{version} reports {reported}");
    if version != RedisVersion::V7_0 {
        assert_eq!(reported, version.pinned());
    }

    // Harness defaults are in effect and the data dir is its own.
    assert_eq!(config_get(&server, "save")?, "");
    assert_eq!(config_get(&server, "appendonly")?, "no");
    assert_eq!(
        Path::new(&config_get(&server, "dir")?)
            .canonicalize()
            .unwrap(),
        server.dir().canonicalize().unwrap()
    );
    assert_eq!(server.info_stat("sync_full")?, 0);
    assert_eq!(server.info_field("replication", "role")?, "master");
    assert!(matches!(
        server.info_field("replication", "no_such_field"),
        Err(HarnessError::MissingInfoField { .. })
    ));

    // Restart keeps what was saved and nothing else; same port, new process.
    assert!(server.cmd_str(&["SAVE"])?.is_ok());
    assert!(server.rdb_path().is_file());
    assert!(server.cmd_str(&["SET", "unsaved", "x"])?.is_ok());
    let pid = server.pid();
    server.restart()?;
    assert!(!proc_exists(pid), "old process {pid} still there");
    assert_ne!(server.pid(), pid);
    assert_eq!(server.port(), port);
    assert_eq!(server.cmd_str(&["GET", "k"])?, bulk(b"v"));
    assert_eq!(server.command(&[b"GET", key])?, bulk(value));
    assert_eq!(server.cmd_str(&["GET", "unsaved"])?, Reply::Bulk(None));
    assert!(!server.log_tail().is_empty());

    // kill9: gone at once, commands fail clearly, restart brings the saved data back.
    let pid = server.pid();
    server.kill9()?;
    assert!(!proc_exists(pid), "killed process {pid} still there");
    assert!(!server.is_running());
    assert!(matches!(
        server.cmd_str(&["PING"]),
        Err(HarnessError::NotRunning { .. })
    ));
    server.restart()?;
    assert_eq!(server.cmd_str(&["GET", "k"])?, bulk(b"v"));

    // stop: a clean shutdown.
    let pid = server.pid();
    server.stop()?;
    assert!(!proc_exists(pid));
    server.stop()?; // idempotent
    server.restart()?;
    assert_eq!(server.cmd_str(&["PING"])?, Reply::Status("PONG".into()));

    // Drop: no process, no directory.
    let pid = server.pid();
    let dir = server.dir().to_owned();
    drop(server);
    assert!(!proc_exists(pid), "dropped server {pid} still there");
    assert!(!dir.exists(), "{} not removed", dir.display());
    Ok(())
}

macro_rules! per_version {
    ($($name:ident => $version:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            lifecycle(RedisVersion::$version).unwrap_or_else(|e| panic!("{e}"));
        }
    )*};
}

per_version! {
    lifecycle_2_8 => V2_8,
    lifecycle_3_2 => V3_2,
    lifecycle_5_0 => V5_0,
    lifecycle_6_0 => V6_0,
    lifecycle_6_2 => V6_2,
    lifecycle_7_0 => V7_0,
}

fn password_and_config(version: RedisVersion) -> Result<(), HarnessError> {
    let server = RedisServer::builder(version)
        .password("s3cret pw")
        .config("maxmemory-policy", "noeviction")
        .config("save", "900 1")
        .start()?;
    assert_eq!(
        server.url(),
        format!("redis://:s3cret%20pw@127.0.0.1:{}/", server.port())
    );
    assert_eq!(config_get(&server, "maxmemory-policy")?, "noeviction");
    assert_eq!(config_get(&server, "save")?, "900 1");

    let mut anonymous = Client::connect(server.socket_addr(), None, Duration::from_secs(5))?;
    let reply = anonymous.cmd_str(&["GET", "k"])?;
    assert!(
        reply.as_error().is_some_and(|e| e.starts_with("NOAUTH")),
        "{reply}"
    );
    let wrong = Client::connect(server.socket_addr(), Some("wrong"), Duration::from_secs(5));
    assert!(
        matches!(wrong, Err(HarnessError::ErrorReply { .. })),
        "{wrong:?}"
    );
    let mut own = server.client()?;
    assert!(own.cmd_str(&["SET", "k", "v"])?.is_ok());

    // A restart authenticates again.
    server.restart()?;
    assert_eq!(server.cmd_str(&["PING"])?, Reply::Status("PONG".into()));
    Ok(())
}

#[test]
fn password_and_config_2_8() {
    password_and_config(RedisVersion::V2_8).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn password_and_config_7_0() {
    password_and_config(RedisVersion::V7_0).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn bad_config_fails_with_the_server_log() {
    let err = RedisServer::builder(RedisVersion::V6_2)
        .config("no-such-directive", "1")
        .start()
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, HarnessError::StartFailed { .. }), "{text}");
    assert!(text.contains("no-such-directive"), "{text}");
    // A failed start keeps its directory for inspection; this failure was wanted.
    if let HarnessError::StartFailed { dir, .. } = err {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn concurrent_starts_get_distinct_ports() {
    let servers: Vec<RedisServer> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| RedisServer::start(RedisVersion::V7_0)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap_or_else(|e| panic!("{e}")))
            .collect()
    });
    let mut ports: Vec<u16> = servers.iter().map(RedisServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len());
    for s in &servers {
        assert_eq!(s.cmd_str(&["PING"]).unwrap(), Reply::Status("PONG".into()));
    }
}

#[test]
fn native_replication_with_password_2_8() {
    let master = RedisServer::builder(RedisVersion::V2_8)
        .password("pw")
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let replica = RedisServer::start(RedisVersion::V2_8).unwrap_or_else(|e| panic!("{e}"));
    master.cmd_ok(&["SET", "k", "v"]).unwrap();
    replica
        .replicate_from(&master, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(replica.cmd_str(&["GET", "k"]).unwrap(), bulk(b"v"));
    assert_eq!(master.info_stat("sync_full").unwrap(), 1);
}
