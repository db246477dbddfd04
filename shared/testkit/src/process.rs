//! Process plumbing: spawning children that die with the test process, loopback
//! ports, scratch directories and polling.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{HarnessError, Result};

/// Offset of the cluster bus port from the client port (fixed in Redis < 7).
pub(crate) const CLUSTER_BUS_OFFSET: u16 = 10_000;

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that the child is SIGKILLed when the test process dies.
///
/// Linux delivers `PR_SET_PDEATHSIG` when the *thread* that forked the child exits,
/// not the process. Test threads come and go (and a server may outlive the thread
/// that started it, e.g. in a shared fixture), so every child is forked by one
/// dedicated thread that lives as long as the process.
pub(crate) fn spawn(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    die_with_parent(&mut cmd);
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // The requester may have given up; nothing to do then.
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the testkit spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("testkit spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("testkit spawner thread is gone"))?
}

/// Makes the kernel SIGKILL the child when its parent thread (the spawner) dies.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid(2) has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the forked child before exec. It only calls
    // prctl(2) and getppid(2), which are async-signal-safe; it neither allocates
    // (raw-OS io::Errors do not allocate) nor takes locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent died between fork and prctl: the signal will never come.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// Ports handed out to live servers of this process, so two servers of one test run
/// never get the same port even before either has bound it.
fn reserved() -> &'static Mutex<HashSet<u16>> {
    static RESERVED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    RESERVED.get_or_init(Default::default)
}

/// A loopback port that was free a moment ago (bind to port 0, read, release), plus
/// `port + 10000` when `with_bus` (cluster nodes). Released on drop.
#[derive(Debug)]
pub(crate) struct PortLease {
    port: u16,
    with_bus: bool,
}

impl PortLease {
    pub(crate) fn acquire(with_bus: bool) -> Result<PortLease> {
        const ATTEMPTS: usize = 200;
        let mut last = String::from("no attempt");
        for _ in 0..ATTEMPTS {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| HarnessError::io("binding 127.0.0.1:0", e))?;
            let bus = if with_bus {
                match port.checked_add(CLUSTER_BUS_OFFSET) {
                    Some(bus) if TcpListener::bind((Ipv4Addr::LOCALHOST, bus)).is_ok() => Some(bus),
                    _ => {
                        last = format!("bus port of {port} unusable");
                        continue;
                    }
                }
            } else {
                None
            };
            let mut set = reserved().lock().unwrap_or_else(|e| e.into_inner());
            let ports = [Some(port), bus];
            if ports.iter().flatten().any(|p| set.contains(p)) {
                last = format!("port {port} already leased in this process");
                continue;
            }
            set.extend(ports.iter().flatten());
            return Ok(PortLease { port, with_bus });
        }
        Err(HarnessError::NoFreePort(format!(
            "{ATTEMPTS} attempts failed; last: {last}"
        )))
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut set = reserved().lock().unwrap_or_else(|e| e.into_inner());
        set.remove(&self.port);
        if self.with_bus {
            set.remove(&(self.port + CLUSTER_BUS_OFFSET));
        }
    }
}

/// A fresh, empty directory under `$TMPDIR/redis-sync-testkit/`.
pub(crate) fn scratch_dir(tag: &str) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let root = std::env::temp_dir().join("redis-sync-testkit");
    std::fs::create_dir_all(&root)
        .map_err(|e| HarnessError::io(format!("creating {}", root.display()), e))?;
    loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("{tag}-{}-{n}-{nanos:08x}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(HarnessError::io(format!("creating {}", dir.display()), e));
            }
        }
    }
}

/// The last `lines` lines of a text file ("" when it does not exist).
pub(crate) fn file_tail(path: &Path, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `probe` until it returns `Ok` or `timeout` passes.
///
/// `Err(reason)` means "not yet"; the last reason ends up in the
/// [`HarnessError::Timeout`]. Polls start 5 ms apart and back off to 50 ms.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> std::result::Result<T, String>,
) -> Result<T> {
    let start = Instant::now();
    let mut interval = Duration::from_millis(5);
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(last) => {
                let waited = start.elapsed();
                if waited >= timeout {
                    return Err(HarnessError::Timeout {
                        what: what.to_owned(),
                        waited,
                        last,
                    });
                }
                std::thread::sleep(interval.min(timeout - waited));
                interval = (interval * 2).min(Duration::from_millis(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_unique_and_released() {
        let a = PortLease::acquire(true).unwrap();
        let b = PortLease::acquire(false).unwrap();
        assert_ne!(a.port(), b.port());
        assert_ne!(a.port() + CLUSTER_BUS_OFFSET, b.port());
        let p = a.port();
        assert!(reserved().lock().unwrap().contains(&p));
        drop(a);
        assert!(!reserved().lock().unwrap().contains(&p));
    }

    #[test]
    fn wait_until_reports_last_observation() {
        let mut n = 0;
        let v = wait_until("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            if n >= 3 { Ok(n) } else { Err(format!("n={n}")) }
        })
        .unwrap();
        assert_eq!(v, 3);
        let err = wait_until::<()>("never", Duration::from_millis(30), || Err("nope".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("waiting for never") && err.contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn scratch_dirs_are_distinct() {
        let a = scratch_dir("t").unwrap();
        let b = scratch_dir("t").unwrap();
        assert_ne!(a, b);
        std::fs::remove_dir(a).unwrap();
        std::fs::remove_dir(b).unwrap();
    }
}
