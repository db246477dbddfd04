//! One `redis-server` process on a loopback port, owned by a test.

use std::fmt;
use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{HarnessError, Result};
use crate::process::{self, PortLease};
use crate::resp::{Client, DEFAULT_TIMEOUT, Info, Reply};
use crate::version::{RedisVersion, server_binary};

/// Default limit for a server to start answering `PING`.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`RedisServer::stop`] waits after `SHUTDOWN NOSAVE` before killing.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Start attempts on fresh ports when the chosen port turns out to be taken.
const PORT_ATTEMPTS: usize = 5;
const LOG_FILE: &str = "redis.log";
/// stdout/stderr of the process: config errors land here before `logfile` is open.
const STDIO_FILE: &str = "stdio.log";
const CONFIG_FILE: &str = "redis.conf";
const LOG_TAIL_LINES: usize = 40;
/// Set to keep every server's directory after the test (they are always kept when
/// the test panics).
pub const KEEP_DIRS_ENV: &str = "REDIS_SYNC_TESTKIT_KEEP";

/// Directives the harness owns; the builder rejects them.
const RESERVED: [&str; 6] = ["port", "bind", "dir", "logfile", "daemonize", "requirepass"];

/// Configures a [`RedisServer`] before starting it; from [`RedisServer::builder`].
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    version: RedisVersion,
    config: Vec<(String, String)>,
    password: Option<String>,
    start_timeout: Duration,
}

impl ServerBuilder {
    /// Adds a config-file directive, e.g. `.config("maxmemory-policy", "noeviction")`
    /// or `.config("save", "900 1")` (written verbatim after the name; an empty value
    /// is written as `""`). It replaces the harness default of the same name.
    /// `port`, `bind`, `dir`, `logfile`, `daemonize` belong to the harness and
    /// `requirepass` is set with [`ServerBuilder::password`]; they make `start` fail.
    pub fn config(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((name.into(), value.into()));
        self
    }

    /// Sets `requirepass`; the harness client then sends `AUTH` on every connection.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// How long to wait for the server to answer `PING` (default 10 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Finds the binary, writes the config into a fresh directory, starts the server
    /// on a free loopback port (retrying on another port if that one was taken in the
    /// meantime) and waits until it answers `PING` and is not loading.
    pub fn start(self) -> Result<RedisServer> {
        self.validate()?;
        let binary = server_binary(self.version)?;
        let dir = process::scratch_dir(&format!("redis-{}", self.version))?;
        let with_bus = self.config.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case("cluster-enabled") && value.trim() == "yes"
        });
        let dbfilename = self
            .user_value("dbfilename")
            .unwrap_or("dump.rdb")
            .trim_matches('"')
            .to_owned();

        let mut attempt = 0;
        loop {
            attempt += 1;
            let lease = PortLease::acquire(with_bus)?;
            let mut server = RedisServer {
                version: self.version,
                binary: binary.clone(),
                lease,
                password: self.password.clone(),
                dir: dir.clone(),
                dbfilename: dbfilename.clone(),
                start_timeout: self.start_timeout,
                child: Mutex::new(None),
                last_pid: AtomicU32::new(0),
                conn: Mutex::new(None),
                // Nothing to clean up until a process ran; `Drop` must not delete the
                // directory between attempts.
                remove_dir_on_drop: false,
            };
            let config = self.render_config(&server);
            std::fs::write(server.dir.join(CONFIG_FILE), config)
                .map_err(|e| HarnessError::io(format!("writing {CONFIG_FILE}"), e))?;
            match server.launch() {
                Ok(()) => {
                    server.remove_dir_on_drop = true;
                    return Ok(server);
                }
                Err(Launch::PortTaken(_)) if attempt < PORT_ATTEMPTS => continue,
                Err(Launch::PortTaken(e) | Launch::Failed(e)) => return Err(e),
            }
        }
    }

    fn validate(&self) -> Result<()> {
        for (name, value) in &self.config {
            if RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
                return Err(HarnessError::InvalidConfig(format!(
                    "`{name}` is set by the harness{}",
                    if name.eq_ignore_ascii_case("requirepass") {
                        "; use ServerBuilder::password"
                    } else {
                        ""
                    }
                )));
            }
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(HarnessError::InvalidConfig(format!(
                    "bad directive name {name:?}"
                )));
            }
            if value.contains(['\n', '\r']) {
                return Err(HarnessError::InvalidConfig(format!(
                    "value of `{name}` contains a line break"
                )));
            }
        }
        if let Some(pw) = &self.password
            && (pw.is_empty() || pw.contains(['\n', '\r']))
        {
            return Err(HarnessError::InvalidConfig(
                "password must be non-empty and on one line".into(),
            ));
        }
        Ok(())
    }

    fn user_value(&self, name: &str) -> Option<&str> {
        self.config
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn render_config(&self, server: &RedisServer) -> String {
        let dir = &server.dir;
        let mut out = String::from("# written by redis-sync-testkit\n");
        let mut line = |name: &str, value: &str| {
            out.push_str(name);
            out.push(' ');
            out.push_str(value);
            out.push('\n');
        };
        line("port", &server.port().to_string());
        line("bind", "127.0.0.1");
        line("daemonize", "no");
        line("dir", &quote(&dir.to_string_lossy()));
        line("logfile", &quote(&dir.join(LOG_FILE).to_string_lossy()));
        if let Some(pw) = &self.password {
            line("requirepass", &quote(pw));
        }

        let mut defaults: Vec<(&str, &str)> = vec![
            ("dbfilename", "dump.rdb"),
            ("save", "\"\""),
            ("appendonly", "no"),
        ];
        if self.version.supports_diskless() {
            // 7.0 defaults to diskless sync with a 5 s wait for more replicas; tests
            // would pay those 5 s on every full sync.
            defaults.push(("repl-diskless-sync-delay", "0"));
        }
        if self.version >= RedisVersion::V7_0 {
            defaults.push(("enable-debug-command", "yes"));
        }
        for (name, value) in defaults {
            if self.user_value(name).is_none() {
                line(name, value);
            }
        }
        for (name, value) in &self.config {
            line(name, if value.is_empty() { "\"\"" } else { value });
        }
        out
    }
}

/// Double-quotes a config value the way redis.conf parses it.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

enum Launch {
    /// The port was taken by someone else; another port may work.
    PortTaken(HarnessError),
    Failed(HarnessError),
}

/// A `redis-server` child process on `127.0.0.1:<port>` with its own directory.
///
/// Dropping it kills the process (also when the test panics) and deletes the
/// directory, except after a panic or with `REDIS_SYNC_TESTKIT_KEEP=1`, when the
/// directory (config, log, RDB) is kept and its path printed to stderr. If the test
/// process itself dies, the kernel kills the server (`PR_SET_PDEATHSIG`).
///
/// All methods take `&self` so that nodes inside a [`crate::RedisCluster`] can be
/// stopped and restarted too.
pub struct RedisServer {
    version: RedisVersion,
    binary: PathBuf,
    lease: PortLease,
    password: Option<String>,
    dir: PathBuf,
    dbfilename: String,
    start_timeout: Duration,
    child: Mutex<Option<Child>>,
    last_pid: AtomicU32,
    conn: Mutex<Option<Client>>,
    remove_dir_on_drop: bool,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("version", &self.version)
            .field("addr", &self.addr())
            .field("pid", &self.pid())
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RedisServer {
    /// Starts a server of `version` with the harness defaults.
    pub fn start(version: RedisVersion) -> Result<RedisServer> {
        RedisServer::builder(version).start()
    }

    /// A builder for a server of `version`. Defaults: `save ""` (no snapshots),
    /// `appendonly no`, `dbfilename dump.rdb`, `repl-diskless-sync-delay 0` (where
    /// diskless sync exists) and `enable-debug-command yes` (7.0), no password.
    pub fn builder(version: RedisVersion) -> ServerBuilder {
        ServerBuilder {
            version,
            config: Vec::new(),
            password: None,
            start_timeout: DEFAULT_START_TIMEOUT,
        }
    }

    /// The release line this server runs.
    pub fn version(&self) -> RedisVersion {
        self.version
    }

    /// The path of the binary this server runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The loopback port it listens on (kept across [`RedisServer::restart`]).
    pub fn port(&self) -> u16 {
        self.lease.port()
    }

    /// `"127.0.0.1:<port>"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    /// The listening address as a `SocketAddr`.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port()))
    }

    /// `redis://127.0.0.1:<port>/`, or `redis://:<password>@127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{}@{}/", percent_encode(pw), self.addr()),
            None => format!("redis://{}/", self.addr()),
        }
    }

    /// The password (`requirepass`), if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The server's own directory: config, log, RDB, cluster config.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `SAVE`/`BGSAVE` write the RDB file.
    pub fn rdb_path(&self) -> PathBuf {
        self.dir.join(&self.dbfilename)
    }

    /// The last lines of the server log (and of its stdout/stderr if not empty).
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir, LOG_TAIL_LINES)
    }

    /// The pid of the running process, or of the last one after `stop`/`kill9`.
    pub fn pid(&self) -> u32 {
        self.last_pid.load(Ordering::SeqCst)
    }

    /// Whether the process is alive (reaps it if it exited on its own).
    pub fn is_running(&self) -> bool {
        let mut child = lock(&self.child);
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                *child = None;
                false
            }
            None => false,
        }
    }

    /// Kills the process with SIGKILL and reaps it (no shutdown, no save).
    pub fn kill9(&self) -> Result<()> {
        let mut child = lock(&self.child);
        *lock(&self.conn) = None;
        if let Some(mut c) = child.take() {
            kill_and_reap(&mut c)
                .map_err(|e| HarnessError::io(format!("killing redis pid {}", c.id()), e))?;
        }
        Ok(())
    }

    /// `SHUTDOWN NOSAVE`, then waits for the process to exit; kills it after 10 s.
    /// Does nothing when already stopped.
    pub fn stop(&self) -> Result<()> {
        let mut guard = lock(&self.child);
        *lock(&self.conn) = None;
        let Some(child) = guard.as_mut() else {
            return Ok(());
        };
        if let Ok(mut client) = self.connect(Duration::from_secs(2)) {
            // Success closes the connection without a reply; any outcome is judged
            // by whether the process exits.
            let _ = client.cmd_str(&["SHUTDOWN", "NOSAVE"]);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut interval = Duration::from_millis(2);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(interval);
                    interval = (interval * 2).min(Duration::from_millis(50));
                }
                _ => {
                    kill_and_reap(child).map_err(|e| {
                        HarnessError::io(format!("killing redis pid {}", child.id()), e)
                    })?;
                    break;
                }
            }
        }
        *guard = None;
        Ok(())
    }

    /// Stops the server (if running) and starts it again on the same port with the
    /// same directory and config, so it loads whatever it saved (`SAVE`, or `save`
    /// points / AOF configured through the builder). Works after `kill9` too.
    pub fn restart(&self) -> Result<()> {
        self.stop()?;
        let deadline = Instant::now() + self.start_timeout;
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                // Someone grabbed the port while it was closed: it is ours to keep,
                // so wait for it to come free.
                Err(Launch::PortTaken(e)) => {
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(Launch::Failed(e)) => return Err(e),
            }
        }
    }

    /// Spawns the process and waits until it is ready.
    fn launch(&self) -> std::result::Result<(), Launch> {
        let failed = |reason: String, log_tail: String| HarnessError::StartFailed {
            version: self.version,
            port: self.port(),
            dir: self.dir.clone(),
            reason,
            log_tail,
        };
        let io_failed = |what: &str, e: std::io::Error| {
            Launch::Failed(failed(format!("{what}: {e}"), self.log_tail()))
        };

        let log_start = LogMark::new(&self.dir);
        let stdio = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(STDIO_FILE))
            .map_err(|e| io_failed("opening stdio.log", e))?;
        let stdio_err = stdio
            .try_clone()
            .map_err(|e| io_failed("opening stdio.log", e))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg(self.dir.join(CONFIG_FILE))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(stdio)
            .stderr(stdio_err);
        let mut child = process::spawn(cmd)
            .map_err(|e| io_failed(&format!("spawning {}", self.binary.display()), e))?;
        let pid = child.id();

        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    let new_log = log_start.new_text(&self.dir);
                    let err = failed(
                        format!("process exited during startup ({status})"),
                        self.log_tail(),
                    );
                    return Err(if new_log.contains("Address already in use") {
                        Launch::PortTaken(err)
                    } else {
                        Launch::Failed(err)
                    });
                }
                Err(e) => {
                    let _ = kill_and_reap(&mut child);
                    return Err(io_failed("waiting for the process", e));
                }
            }
            let last = match probe_ready(self.socket_addr(), self.password.as_deref(), pid) {
                Ok(()) => break,
                Err(reason) => reason,
            };
            if started.elapsed() >= self.start_timeout {
                let _ = kill_and_reap(&mut child);
                return Err(Launch::Failed(failed(
                    format!(
                        "not ready after {:?}; last probe: {last}",
                        self.start_timeout
                    ),
                    self.log_tail(),
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.last_pid.store(pid, Ordering::SeqCst);
        *lock(&self.child) = Some(child);
        Ok(())
    }

    fn connect(&self, timeout: Duration) -> Result<Client> {
        Client::connect(self.socket_addr(), self.password.as_deref(), timeout)
    }

    /// A new connection of its own (authenticated), e.g. for pipelining or
    /// blocking commands.
    pub fn client(&self) -> Result<Client> {
        self.ensure_running()?;
        self.connect(DEFAULT_TIMEOUT)
    }

    fn ensure_running(&self) -> Result<()> {
        if self.is_running() {
            Ok(())
        } else {
            Err(HarnessError::NotRunning {
                version: self.version,
                port: self.port(),
            })
        }
    }

    /// Runs one command on the server's shared harness connection (opened on first
    /// use, reopened after an error). Error replies come back as [`Reply::Error`].
    pub fn command(&self, args: &[&[u8]]) -> Result<Reply> {
        self.ensure_running()?;
        let mut conn = lock(&self.conn);
        let client = match conn.as_mut() {
            Some(c) => c,
            None => conn.insert(self.connect(DEFAULT_TIMEOUT)?),
        };
        let result = client.command(args);
        if result.is_err() {
            *conn = None;
        }
        result
    }

    /// [`RedisServer::command`] with string arguments: `cmd_str(&["SET", "k", "v"])`.
    pub fn cmd_str(&self, args: &[&str]) -> Result<Reply> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.command(&args)
    }

    /// Like [`RedisServer::cmd_str`], but an error reply becomes
    /// [`HarnessError::ErrorReply`]: for setup steps that must succeed.
    pub fn cmd_ok(&self, args: &[&str]) -> Result<Reply> {
        match self.cmd_str(args)? {
            Reply::Error(message) => Err(HarnessError::ErrorReply {
                command: args.join(" "),
                message,
            }),
            reply => Ok(reply),
        }
    }

    /// `INFO <section>`, parsed.
    pub fn info(&self, section: &str) -> Result<Info> {
        let reply = self.cmd_ok(&["INFO", section])?;
        match reply.as_str() {
            Some(text) => Ok(Info::parse(text)),
            None => Err(HarnessError::UnexpectedReply {
                command: format!("INFO {section}"),
                reply: reply.to_string(),
            }),
        }
    }

    /// One field of `INFO <section>`, e.g. `info_field("replication", "master_repl_offset")`.
    pub fn info_field(&self, section: &str, field: &str) -> Result<String> {
        self.info(section)?
            .get(field)
            .map(str::to_owned)
            .ok_or_else(|| HarnessError::MissingInfoField {
                section: section.to_owned(),
                field: field.to_owned(),
            })
    }

    /// An integer field of `INFO stats`, e.g. `info_stat("sync_full")`.
    pub fn info_stat(&self, field: &str) -> Result<i64> {
        let value = self.info_field("stats", field)?;
        value.parse().map_err(|_| HarnessError::UnexpectedReply {
            command: format!("INFO stats ({field})"),
            reply: value,
        })
    }

    /// Makes this server a native replica of `master` (`SLAVEOF`, which every
    /// version understands; `masterauth` is set when the master has a password) and
    /// waits until the link is up and the initial sync has finished.
    pub fn replicate_from(&self, master: &RedisServer, timeout: Duration) -> Result<()> {
        if let Some(pw) = master.password() {
            self.cmd_ok(&["CONFIG", "SET", "masterauth", pw])?;
        }
        self.cmd_ok(&["SLAVEOF", "127.0.0.1", &master.port().to_string()])?;
        process::wait_until(
            &format!("{} to finish syncing from {}", self.addr(), master.addr()),
            timeout,
            || {
                let info = self.info("replication").map_err(|e| e.to_string())?;
                match (
                    info.get("master_link_status"),
                    info.get("master_sync_in_progress"),
                ) {
                    (Some("up"), Some("0")) => Ok(()),
                    (link, sync) => Err(format!(
                        "master_link_status={link:?} master_sync_in_progress={sync:?}"
                    )),
                }
            },
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = child.take() {
            let _ = kill_and_reap(&mut c);
        }
        if !self.remove_dir_on_drop {
            return;
        }
        let keep = std::env::var_os(KEEP_DIRS_ENV).is_some_and(|v| !v.is_empty() && v != "0");
        if std::thread::panicking() || keep {
            eprintln!(
                "redis-sync-testkit: kept the directory of redis {} (port {}): {}",
                self.version,
                self.port(),
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn kill_and_reap(child: &mut Child) -> std::io::Result<()> {
    match child.try_wait()? {
        Some(_) => Ok(()),
        None => {
            // Fails only if it exited in between; `wait` reaps it either way.
            let _ = child.kill();
            child.wait().map(drop)
        }
    }
}

/// One readiness probe: `PING` answers `PONG` (not `-LOADING`), and `INFO` shows
/// our process (not some other server that got the port) done loading.
fn probe_ready(
    addr: SocketAddr,
    password: Option<&str>,
    pid: u32,
) -> std::result::Result<(), String> {
    let mut client =
        Client::connect(addr, password, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let pong = client.cmd_str(&["PING"]).map_err(|e| e.to_string())?;
    if pong != Reply::Status("PONG".into()) {
        return Err(format!("PING answered {pong}"));
    }
    let info = client.cmd_str(&["INFO"]).map_err(|e| e.to_string())?;
    let info = Info::parse(info.as_str().unwrap_or_default());
    match info.get("process_id").and_then(|p| p.parse::<u32>().ok()) {
        Some(p) if p == pid => {}
        other => return Err(format!("port answered by pid {other:?}, not {pid}")),
    }
    match info.get("loading") {
        Some("0") => Ok(()),
        other => Err(format!("loading={other:?}")),
    }
}

/// Sizes of the log files at some moment, to read only what was written after it.
struct LogMark {
    log: u64,
    stdio: u64,
}

impl LogMark {
    fn new(dir: &Path) -> LogMark {
        let size = |name| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
        LogMark {
            log: size(LOG_FILE),
            stdio: size(STDIO_FILE),
        }
    }

    fn new_text(&self, dir: &Path) -> String {
        let read_from = |name, offset: u64| {
            let bytes = std::fs::read(dir.join(name)).unwrap_or_default();
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        };
        read_from(LOG_FILE, self.log) + &read_from(STDIO_FILE, self.stdio)
    }
}

fn log_tail(dir: &Path, lines: usize) -> String {
    let log = process::file_tail(&dir.join(LOG_FILE), lines);
    let stdio = process::file_tail(&dir.join(STDIO_FILE), lines);
    match (log.is_empty(), stdio.is_empty()) {
        (_, true) => log,
        (true, false) => format!("(stdout/stderr)\n{stdio}"),
        (false, false) => format!("{log}\n(stdout/stderr)\n{stdio}"),
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_encoding() {
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(percent_encode("p@ss w/rd"), "p%40ss%20w%2Frd");
    }

    #[test]
    fn builder_rejects_harness_directives() {
        for name in ["port", "DIR", "requirepass", "bad name"] {
            let err = RedisServer::builder(RedisVersion::V7_0)
                .config(name, "1")
                .validate()
                .unwrap_err();
            assert!(
                matches!(err, HarnessError::InvalidConfig(_)),
                "{name}: {err}"
            );
        }
        assert!(
            RedisServer::builder(RedisVersion::V7_0)
                .config("save", "1\n2")
                .validate()
                .is_err()
        );
    }
}
