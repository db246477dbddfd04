//! A child process for the harness's own tests (`tests/processes.rs`): it starts servers
//! the way a test would, so that those tests can kill it or watch it fail without
//! touching their own process or environment.
//!
//! `redis-sync-testkit-helper hold`: starts a 7.0 server and a 2.8 one (the latter from a
//! thread that ends at once), prints `REDIS_SERVERS=<pid>,<dir>;<pid>,<dir>` and blocks
//! until killed. `redis-sync-testkit-helper start <label>`: starts and stops one server,
//! exiting non-zero with the harness's error when it cannot.

use redis_sync_testkit::{RedisServer, RedisVersion};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["hold"] => hold(),
        ["start", label] => {
            let Some(version) = RedisVersion::from_label(label) else {
                eprintln!("unknown version {label}");
                std::process::exit(2);
            };
            if let Err(e) = RedisServer::start(version) {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!("usage: redis-sync-testkit-helper hold | start <version>");
            std::process::exit(2);
        }
    }
}

fn hold() {
    let fail = |e: redis_sync_testkit::HarnessError| -> ! {
        eprintln!("{e}");
        std::process::exit(1)
    };
    let first = RedisServer::start(RedisVersion::V7_0).unwrap_or_else(|e| fail(e));
    let second = std::thread::spawn(|| RedisServer::start(RedisVersion::V2_8))
        .join()
        .unwrap_or_else(|_| std::process::exit(1))
        .unwrap_or_else(|e| fail(e));
    for server in [&first, &second] {
        let pong = server
            .cmd_str(&["PING"])
            .map(|r| r.as_str() == Some("PONG"));
        if !matches!(pong, Ok(true)) {
            eprintln!("server {} does not answer PING", server.addr());
            std::process::exit(1);
        }
    }
    println!(
        "REDIS_SERVERS={},{};{},{}",
        first.pid(),
        first.dir().display(),
        second.pid(),
        second.dir().display()
    );
    // Block until the parent kills us (stdin never closes before that).
    let _ = std::io::stdin().lines().count();
}
