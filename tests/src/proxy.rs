//! A TCP proxy on loopback that a test controls, to put a bad network between two
//! processes: forward normally, cut (close every connection and refuse new ones),
//! stall (keep connections open but move no byte) or throttle (forward under a
//! bandwidth cap shared by every connection and both directions).
//!
//! ```no_run
//! # async fn f(ingest: std::net::SocketAddr) {
//! use redis_sync_e2e::proxy::Proxy;
//! let proxy = Proxy::start(ingest).await.unwrap();
//! // point the client at proxy.endpoint() instead of the server, then:
//! proxy.cut();
//! proxy.restore();
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// What the proxy does with traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything as it comes.
    Forward,
    /// Every open connection is reset, every new one is reset right after accept.
    Cut,
    /// Connections stay open (new ones are accepted) but no byte moves either way.
    Stall,
    /// Forward, at most this many bytes per second over all connections together.
    Throttle(u64),
}

/// Counters of what went through.
#[derive(Debug, Default)]
struct Stats {
    accepted: AtomicU64,
    bytes: AtomicU64,
}

/// A running proxy; dropping it closes the listener and every connection.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    stats: Arc<Stats>,
    acceptor: tokio::task::JoinHandle<()>,
}

/// Largest chunk read and written in one step (smaller under a throttle).
const CHUNK: usize = 16 * 1024;

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to `target`.
    /// Must be called inside a tokio runtime; the proxy runs on it.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Forward);
        let stats = Arc::new(Stats::default());
        let bucket = Arc::new(Mutex::new(Instant::now()));
        let acceptor = tokio::spawn(accept_loop(
            listener,
            target,
            mode.subscribe(),
            Arc::clone(&stats),
            bucket,
        ));
        Ok(Proxy {
            addr,
            target,
            mode,
            stats,
            acceptor,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// `http://127.0.0.1:<port>`, for gRPC clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Switches to `mode` (takes effect on every connection at once).
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Resets every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.set_mode(Mode::Cut);
    }

    /// Stops moving bytes (connections stay open) until [`Proxy::restore`].
    pub fn stall(&self) {
        self.set_mode(Mode::Stall);
    }

    /// Caps the bandwidth, over all connections and both directions, to
    /// `bytes_per_second` (at least 1).
    pub fn throttle(&self, bytes_per_second: u64) {
        self.set_mode(Mode::Throttle(bytes_per_second.max(1)));
    }

    /// Back to forwarding freely.
    pub fn restore(&self) {
        self.set_mode(Mode::Forward);
    }

    /// Connections accepted so far (including those reset during a cut).
    pub fn connections(&self) -> u64 {
        self.stats.accepted.load(Ordering::Relaxed)
    }

    /// Bytes forwarded so far, both directions.
    pub fn bytes(&self) -> u64 {
        self.stats.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        // Connection tasks see the sender go away and close their sockets.
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    stats: Arc<Stats>,
    bucket: Arc<Mutex<Instant>>,
) {
    loop {
        let inbound = match listener.accept().await {
            Ok((inbound, _)) => inbound,
            Err(_) => {
                // Out of file descriptors or the like: try again shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        if *mode.borrow() == Mode::Cut {
            reset(inbound);
            continue;
        }
        let rx = mode.clone();
        let stats = Arc::clone(&stats);
        let bucket = Arc::clone(&bucket);
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                reset(inbound);
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            connection(inbound, outbound, rx, stats, bucket).await;
        });
    }
}

/// Closes `stream` with a reset (SO_LINGER 0), as a dead link or a firewall would.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Pumps both directions until either side closes, the proxy is dropped or cut; a cut
/// resets both sockets.
async fn connection(
    mut inbound: TcpStream,
    mut outbound: TcpStream,
    mode: watch::Receiver<Mode>,
    stats: Arc<Stats>,
    bucket: Arc<Mutex<Instant>>,
) {
    let cut = {
        let (in_read, in_write) = inbound.split();
        let (out_read, out_write) = outbound.split();
        let up = pump(in_read, out_write, mode.clone(), &stats, &bucket);
        let down = pump(out_read, in_write, mode, &stats, &bucket);
        // Whichever direction ends first ends the connection.
        tokio::select! {
            cut = up => cut,
            cut = down => cut,
        }
    };
    if cut {
        reset(inbound);
        reset(outbound);
    }
}

/// Waits while the mode is `Stall`. Returns the mode to go on with, or `Err(cut)` when
/// the connection must end (`cut`: because of a cut; else the proxy is gone).
async fn not_stalled(mode: &mut watch::Receiver<Mode>) -> Result<Mode, bool> {
    loop {
        let m = *mode.borrow_and_update();
        match m {
            Mode::Cut => return Err(true),
            Mode::Stall => {
                if mode.changed().await.is_err() {
                    return Err(false);
                }
            }
            other => return Ok(other),
        }
    }
}

/// Copies `from` to `to` obeying the mode. Returns true when it ended because of a cut
/// (false: a side closed, or the proxy is gone).
async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    mut mode: watch::Receiver<Mode>,
    stats: &Stats,
    bucket: &Mutex<Instant>,
) -> bool {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let current = match not_stalled(&mut mode).await {
            Ok(m) => m,
            Err(cut) => return cut,
        };
        let want = match current {
            Mode::Throttle(rate) => usize::try_from((rate / 10).max(1))
                .unwrap_or(CHUNK)
                .min(CHUNK),
            _ => CHUNK,
        };
        let n = tokio::select! {
            read = from.read(&mut buf[..want]) => match read {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return false;
                }
                continue;
            }
        };
        // Bytes read just before a stall or a cut began are held back like the rest.
        loop {
            match not_stalled(&mut mode).await {
                Err(cut) => return cut,
                Ok(Mode::Throttle(rate)) => {
                    let until = reserve(bucket, n, rate);
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => break,
                        changed = mode.changed() => {
                            if changed.is_err() {
                                return false;
                            }
                            // Decide again under the new mode.
                        }
                    }
                }
                Ok(_) => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return false;
        }
        stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Takes `n` bytes from the shared budget at `rate` bytes/s: returns when they may go.
fn reserve(bucket: &Mutex<Instant>, n: usize, rate: u64) -> Instant {
    let mut next_free = bucket.lock().unwrap_or_else(PoisonError::into_inner);
    let now = Instant::now();
    let start = (*next_free).max(now);
    let cost = Duration::from_secs_f64(n as f64 / rate as f64);
    *next_free = start + cost;
    start + cost
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, data: &[u8], limit: Duration) -> bool {
        if s.write_all(data).await.is_err() {
            return false;
        }
        let mut got = vec![0u8; data.len()];
        matches!(
            tokio::time::timeout(limit, s.read_exact(&mut got)).await,
            Ok(Ok(_)) if got == data
        )
    }

    #[tokio::test]
    async fn forwards_cuts_stalls_and_throttles() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let limit = Duration::from_secs(5);
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut a, b"hello", limit).await);

        // Stall: nothing comes back until restore, then it does.
        proxy.stall();
        a.write_all(b"stalled").await.unwrap();
        let mut got = [0u8; 7];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), a.read_exact(&mut got))
                .await
                .is_err()
        );
        proxy.restore();
        tokio::time::timeout(limit, a.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"stalled");

        // Cut: the open connection dies, a new one is refused until restore.
        proxy.cut();
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(limit, a.read(&mut buf)).await.unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(!round_trip(&mut b, b"x", Duration::from_millis(500)).await);
        proxy.restore();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut c, b"back", limit).await);

        // Throttle: 16 KiB each way at 32 KiB/s over both directions takes ~1 s.
        proxy.throttle(32 * 1024);
        let data = vec![7u8; 16 * 1024];
        let started = Instant::now();
        assert!(round_trip(&mut c, &data, limit).await);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(700), "{took:?}");
        proxy.restore();
        assert!(proxy.connections() >= 3);
        assert!(proxy.bytes() > 32 * 1024);
    }
}
