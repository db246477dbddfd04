//! Harness for the end-to-end suites in `tests/tests/`: runs the real `redis-sync-ingest`
//! and `redis-sync-apply` binaries as child processes on free loopback ports, each with
//! its own scratch directory, and stops them when the test ends, passes or panics.
//!
//! The binaries are the ones `cargo build --bins` leaves in the target directory; the
//! README's test command builds them before running the tests.

pub mod proxy;
pub mod sync;
pub mod workload;

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// Why a service could not be started or checked.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// The binary is not built.
    #[error("{0} not found: run `cargo build --bins` first (the README's test command does)")]
    MissingBinary(PathBuf),
    /// Spawning or waiting failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The service did not become healthy in time.
    #[error("{0} did not answer its health check within 30 s; its log:\n{1}")]
    NotReady(String, String),
}

/// The target directory the binaries were built into.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

static DEFAULT_PROFILE: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Makes [`binary`] look in `profile` (e.g. "release") unless `REDIS_SYNC_PROFILE` says
/// otherwise. Benchmarks call it; tests use the debug build.
pub fn set_default_profile(profile: &'static str) {
    let _ = DEFAULT_PROFILE.set(profile);
}

/// Path of a built binary of this workspace: the profile is `REDIS_SYNC_PROFILE`, else the
/// one set with [`set_default_profile`], else "debug".
pub fn binary(name: &str) -> Result<PathBuf, E2eError> {
    let profile = std::env::var("REDIS_SYNC_PROFILE")
        .unwrap_or_else(|_| (*DEFAULT_PROFILE.get().unwrap_or(&"debug")).to_owned());
    let path = target_dir().join(profile).join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(E2eError::MissingBinary(path))
    }
}

/// A loopback port that is free when probed; the service binds it right after.
///
/// Ports come from below the kernel's ephemeral range (32768 and up), not from binding
/// port 0: a port the kernel hands out can be handed out again between the probe and the
/// service's bind (to another test's Redis server, or as the local port of any outgoing
/// connection), while nothing else picks ports here. Each test process walks its own
/// sequence from an offset derived from its pid, so parallel processes rarely meet.
pub fn free_addr() -> SocketAddr {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (base + n) % SPAN).expect("below 32000");
        if let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            return l.local_addr().expect("local addr");
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("loopback bind");
    l.local_addr().expect("local addr")
}

/// One service process.
pub struct ServiceProcess {
    name: String,
    child: Option<Child>,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// Metrics HTTP address.
    pub metrics: SocketAddr,
    /// Scratch directory (spool or task store), removed on drop.
    pub dir: PathBuf,
    log: PathBuf,
    /// Binary path, full argument list (ports included) and extra environment, kept so
    /// that [`ServiceProcess::restart`] runs the same command again.
    command: (PathBuf, Vec<String>, Vec<(String, String)>),
}

impl std::fmt::Debug for ServiceProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceProcess")
            .field("name", &self.name)
            .field("grpc", &self.grpc)
            .finish()
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("redis-sync-e2e-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

impl ServiceProcess {
    /// Starts `redis-sync-ingest` with `extra` flags.
    pub fn ingest(extra: &[&str]) -> Result<Self, E2eError> {
        Self::ingest_with_env(extra, &[])
    }

    /// Starts `redis-sync-ingest` with `extra` flags and `env` added to its environment
    /// (which is this process's, minus `OTEL_EXPORTER_OTLP_ENDPOINT` unless `env` sets it).
    pub fn ingest_with_env(extra: &[&str], env: &[(&str, &str)]) -> Result<Self, E2eError> {
        let dir = scratch_dir("ingest");
        let spool = dir.join("spool");
        let mut args = vec!["--spool-dir".to_owned(), spool.display().to_string()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::spawn("redis-sync-ingest", dir, args, env)
    }

    /// Starts `redis-sync-apply` pointing at `ingest_endpoint`, with `extra` flags.
    pub fn apply(ingest_endpoint: &str, extra: &[&str]) -> Result<Self, E2eError> {
        Self::apply_with_env(ingest_endpoint, extra, &[])
    }

    /// Starts `redis-sync-apply` like [`ServiceProcess::apply`], with `env` added to its
    /// environment as in [`ServiceProcess::ingest_with_env`].
    pub fn apply_with_env(
        ingest_endpoint: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, E2eError> {
        let dir = scratch_dir("apply");
        let store = dir.join("tasks.redb");
        let mut args = vec![
            "--store-path".to_owned(),
            store.display().to_string(),
            "--ingest-endpoint".to_owned(),
            ingest_endpoint.to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::spawn("redis-sync-apply", dir, args, env)
    }

    fn spawn(
        name: &str,
        dir: PathBuf,
        mut args: Vec<String>,
        env: &[(&str, &str)],
    ) -> Result<Self, E2eError> {
        let bin = binary(name)?;
        let grpc = free_addr();
        let metrics = free_addr();
        args.extend([
            "--listen".to_owned(),
            grpc.to_string(),
            "--metrics-listen".to_owned(),
            metrics.to_string(),
        ]);
        let log = dir.join("service.log");
        let command = (
            bin,
            args,
            env.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        let child = launch(&command, &log, false)?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            grpc,
            metrics,
            dir,
            log,
            command,
        })
    }

    /// Starts the process again with the same binary, flags, environment, directory
    /// (spool or task store) and ports, as an operator restarting a crashed service
    /// would; kills the running one first (SIGKILL) if there is one. The log continues
    /// in the same file. Call [`ServiceProcess::wait_healthy`] afterwards.
    pub fn restart(&mut self) -> Result<(), E2eError> {
        self.kill9();
        self.child = Some(launch(&self.command, &self.log, true)?);
        Ok(())
    }

    /// Whether the process is running (false after [`ServiceProcess::kill9`], after
    /// [`ServiceProcess::terminate`], or when it exited on its own).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// "http://127.0.0.1:port" of the gRPC server.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// What the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `grpc.health.v1.Health/Check` answers SERVING.
    pub async fn wait_healthy(&self) -> Result<(), E2eError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let channel = tonic::transport::Endpoint::from_shared(self.endpoint())
                .map_err(|e| E2eError::NotReady(self.name.clone(), e.to_string()))?
                .connect()
                .await;
            if let Ok(channel) = channel {
                let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
                let req = tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                };
                if let Ok(resp) = client.check(req).await
                    && resp.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(E2eError::NotReady(self.name.clone(), self.log()))
    }

    /// Sends SIGTERM and waits for the exit (at most `limit`), returning the status and
    /// how long it took; kills the process when it overstays.
    pub fn terminate(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let child = self.child.as_mut()?;
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        while started.elapsed() < limit {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.child = None;
        None
    }

    /// Kills the process with SIGKILL (a crash).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawns `command` (binary, args, env) with stdout and stderr into `log` (appended to
/// when `append`, else truncated).
fn launch(
    (bin, args, env): &(PathBuf, Vec<String>, Vec<(String, String)>),
    log: &Path,
    append: bool,
) -> Result<Child, E2eError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(log)
        .map_err(|source| E2eError::Io {
            what: format!("open {}", log.display()),
            source,
        })?;
    let err = out.try_clone().map_err(|source| E2eError::Io {
        what: "dup log".into(),
        source,
    })?;
    Command::new(bin)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|source| E2eError::Io {
            what: format!("spawn {}", bin.display()),
            source,
        })
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Path of `grpcurl`: `$GRPCURL`, else the project's tool venv, else `grpcurl` on PATH.
pub fn grpcurl() -> PathBuf {
    if let Some(p) = std::env::var_os("GRPCURL") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let venv = home.join(".cache/redis-sync/venv/bin/grpcurl");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("grpcurl")
    }
}

/// Runs grpcurl with `args`, returning (success, stdout + stderr).
pub fn run_grpcurl(args: &[&str]) -> (bool, String) {
    let bin = grpcurl();
    match Command::new(&bin).args(args).output() {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            (out.status.success(), text)
        }
        Err(e) => (
            false,
            format!(
                "cannot run {}: {e} (install it with deploy/local/install-tools.sh)",
                bin.display()
            ),
        ),
    }
}

/// Resident memory of a process from `/proc/<pid>/status`: (current, peak) in bytes.
pub fn rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
