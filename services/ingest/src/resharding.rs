//! Cluster resharding: keys that move between masters must not be lost on the way.
//!
//! # What Redis replicates when a key moves
//!
//! Resharding moves a slot from master A to master B: `CLUSTER SETSLOT s IMPORTING A` on B,
//! `CLUSTER SETSLOT s MIGRATING B` on A, then `MIGRATE` on A for the slot's keys, then
//! `CLUSTER SETSLOT s NODE B`. None of the `CLUSTER` commands is replicated. `MIGRATE`
//! (cluster.c, `migrateCommand`) sends `RESTORE-ASKING key ttl payload [REPLACE]` to B and
//! waits for B's `+OK`; B runs it like any write, so B's replication stream carries
//! `RESTORE-ASKING key <absolute ms> payload [REPLACE] ABSTTL` (`restoreCommand` rewrites a
//! relative TTL to an absolute one before it propagates). Only after B's `+OK` does A delete
//! the key, and A's stream carries `MIGRATE` rewritten as `DEL key...` (only the keys B
//! acknowledged) — indistinguishable, byte for byte, from a client's `DEL`.
//!
//! Ingest has one replica link per master and apply orders events per shard only. So the
//! destination may get B's `RESTORE-ASKING` first and A's `DEL` second, and the key is
//! gone although the source still has it (on B).
//!
//! # What ingest does
//!
//! * B's `RESTORE-ASKING` is delivered as an ordinary command; the stream decoder adds
//!   `REPLACE` when it is missing (B accepted it because B had no such key; on the
//!   destination a copy left by A's history may still be there, and the value B now holds
//!   is the one to keep). Apply runs it like a `RESTORE ... REPLACE`.
//! * A's `DEL` of a key whose slot A is migrating away, or no longer owns, is *dropped*
//!   (only those keys of a multi-key `DEL`; inside `MULTI`/`EXEC` too): the key did not go
//!   away, it moved, and B's `RESTORE-ASKING` carries it on B's shard.
//!
//! Whether a slot was migrating when A ran the `DEL` is not in the stream, so each link
//! runs a [`SlotWatcher`] that polls its master with `INFO replication` + `CLUSTER NODES`
//! pipelined (so the two answers belong to the same moment) at least once a second and
//! records, per replication offset, which slots the master owned and which it was
//! migrating (`[slot->-target]`, shown only in the master's own `myself` line) into a
//! [`SlotHistory`]. A `DEL` at offset `d` is judged by the first observation taken at an
//! offset `>= d`, i.e. after the `DEL` ran: a `DEL` that `MIGRATE` produced ran while the
//! slot was `MIGRATING`, so any later observation shows the slot still migrating or already
//! gone to B. A reader that reaches a `DEL` before any such observation exists asks the
//! watcher to poll at once and waits for it (bounded), so a caught-up stream pays about
//! one round trip per burst of `DEL`s.
//!
//! # The window that remains
//!
//! * A client's `DEL` of a key in a slot that is migrating at that moment, or whose
//!   migration starts before the next observation (≤ 1 s later, less for a caught-up
//!   reader), is dropped too: the destination keeps a key the source deleted (an extra
//!   key, never a lost one; expiring keys still expire on the destination, their TTL is
//!   absolute). Telling the two apart would need B's stream (is there a matching
//!   `RESTORE-ASKING`?), which another reader follows at its own pace.
//! * A migration that is rolled back (`SETSLOT s STABLE`/`NODE A` after some keys moved)
//!   leaves those keys on B in a slot B does not own; the `DEL` on A is then kept. The
//!   cluster itself is inconsistent then; `redis-cli --cluster fix` moves them back with
//!   `MIGRATE` from B, whose `DEL` is dropped by the same rule (B does not own the slot).
//! * A slot that moves to a master no shard follows yet (a node added by scaling out) is
//!   handled the same way on the old owner; the subscription's topology monitor
//!   (`subscription::TopologyMonitor`) then ends the subscription with `UNAVAILABLE`
//!   naming the new master, and the next `Subscribe` copies it as a new shard, keys and
//!   all. Between the two, the destination has the moved keys as the old owner last had
//!   them.
//! * History is kept in memory, bounded ([`MAX_RUNS`] changes), for as long as the link
//!   runs. A reader behind the oldest observation (ingest restarted, or the watcher could
//!   not reach the master) is judged by the oldest or latest observation it has — still
//!   taken after the `DEL`, so a completed migration is recognised; only the extra-key
//!   window above grows. With no observation at all the `DEL` is kept.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use redis_sync_proto::v1::{ChangeEvent, Command, change_event::Kind};
use redis_sync_resp::Frame;
use tokio::sync::{Notify, watch};

use crate::{
    cluster::{self, SlotRange},
    conn::{self, Credentials, RedisConn},
    stop::StopSignal,
    tls::Connector,
    topology::SourceView,
};

/// Most state changes remembered per shard.
pub const MAX_RUNS: usize = 4096;
/// A watcher polls at least this often.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// ... and at most this often when readers ask.
const MIN_POLL_GAP: Duration = Duration::from_millis(50);
/// How long a reader waits for an observation that covers a `DEL`.
const DECISION_WAIT: Duration = Duration::from_secs(2);

/// What a master said about its slots at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotState {
    /// Slots it owned.
    pub owned: Vec<SlotRange>,
    /// Slots it was migrating away (`[slot->-target]`), sorted.
    pub migrating: Vec<u16>,
}

impl SlotState {
    /// Whether a key of `slot` deleted on this master may have moved rather than gone.
    pub fn moving(&self, slot: u16) -> bool {
        !self.owned.iter().any(|r| r.contains(slot)) || self.migrating.binary_search(&slot).is_ok()
    }
}

/// Observations in a row with the same state; the last at offset `last`.
#[derive(Debug, Clone)]
struct Run {
    replid: String,
    last: u64,
    state: SlotState,
}

/// One shard's slot states by replication offset.
#[derive(Debug)]
pub struct SlotHistory {
    inner: Mutex<HistoryInner>,
    observed: watch::Sender<u64>,
    demand: Notify,
}

#[derive(Debug, Default)]
struct HistoryInner {
    runs: VecDeque<Run>,
    /// The watcher's last poll succeeded.
    healthy: bool,
    /// Polls started so far; each poll is numbered by this count.
    polls_started: u64,
    /// Number of the poll that made the last observation.
    last_recorded_poll: u64,
    /// A replid whose offsets a fresh observation did not reach: spooled data from a
    /// history the master has left (it restarted). Readers do not wait for it again.
    uncovered: Option<String>,
}

impl Default for SlotHistory {
    fn default() -> Self {
        SlotHistory {
            inner: Mutex::default(),
            observed: watch::channel(0).0,
            demand: Notify::new(),
        }
    }
}

impl SlotHistory {
    fn inner(&self) -> std::sync::MutexGuard<'_, HistoryInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Numbers a poll that starts now.
    pub fn begin_poll(&self) -> u64 {
        let mut h = self.inner();
        h.polls_started += 1;
        h.polls_started
    }

    /// Records what the master said at `offset` of `replid`, in poll number `poll`.
    pub fn record(&self, poll: u64, replid: &str, offset: u64, state: SlotState) {
        {
            let mut h = self.inner();
            h.healthy = true;
            h.last_recorded_poll = h.last_recorded_poll.max(poll);
            if h.runs.back().is_some_and(|r| offset < r.last) {
                // Offsets went back: a new history (the master restarted). What was
                // observed before belongs to the old one.
                h.runs.clear();
            }
            match h.runs.back_mut() {
                Some(r) if r.state == state && r.replid == replid => r.last = offset,
                _ => {
                    h.runs.push_back(Run {
                        replid: replid.to_owned(),
                        last: offset,
                        state,
                    });
                    if h.runs.len() > MAX_RUNS {
                        h.runs.pop_front();
                    }
                }
            }
        }
        self.observed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Marks the watcher unable to poll (readers then do not wait for it).
    pub fn set_unhealthy(&self) {
        self.inner().healthy = false;
        self.observed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The state of the first observation at an offset `>= offset`, if there is one.
    pub fn after(&self, offset: u64) -> Option<SlotState> {
        let h = self.inner();
        h.runs
            .iter()
            .find(|r| r.last >= offset)
            .map(|r| r.state.clone())
    }

    fn latest(&self) -> Option<SlotState> {
        self.inner().runs.back().map(|r| r.state.clone())
    }

    /// Whether a reader at `offset` of `replid` should wait for the watcher: it polls
    /// fine and has not observed that far yet (the observation must come *after* the `DEL`).
    fn worth_waiting(&self, replid: &str, offset: u64) -> bool {
        let h = self.inner();
        h.healthy
            && h.uncovered.as_deref() != Some(replid)
            && h.runs.back().is_none_or(|r| r.last < offset)
    }

    /// The state to judge a `DEL` at `offset` of `replid` by: the first observation after
    /// it, asking the watcher for a fresh one and waiting for it (bounded) when there is
    /// none yet; else the latest known.
    pub async fn state_after(
        &self,
        replid: &str,
        offset: u64,
        stop: &mut StopSignal,
    ) -> Option<SlotState> {
        if let Some(s) = self.after(offset) {
            return Some(s);
        }
        if self.worth_waiting(replid, offset) {
            let deadline = tokio::time::Instant::now() + DECISION_WAIT;
            let mut observed = self.observed.subscribe();
            observed.borrow_and_update();
            // Only a poll that starts from now on shows the master after this DEL.
            let asked_after = self.inner().polls_started;
            self.demand.notify_one();
            loop {
                tokio::select! {
                    r = tokio::time::timeout_at(deadline, observed.changed()) => match r {
                        Ok(Ok(())) => {}
                        _ => break,
                    },
                    () = stop.requested() => return None,
                }
                if let Some(s) = self.after(offset) {
                    return Some(s);
                }
                let mut h = self.inner();
                if !h.healthy {
                    break;
                }
                if h.last_recorded_poll > asked_after {
                    // The master is not that far in this offset space: the DEL belongs to
                    // a history it has left. Waiting again would not help.
                    h.uncovered = Some(replid.to_owned());
                    break;
                }
            }
        }
        self.after(offset).or_else(|| self.latest())
    }
}

/// Polls the shard's master for its slots until dropped.
#[derive(Debug)]
pub struct SlotWatcher {
    /// Where the shard lives.
    pub view: Arc<SourceView>,
    /// The shard.
    pub shard_id: String,
    /// How to connect.
    pub connector: Connector,
    /// With which credentials.
    pub credentials: Credentials,
    /// Where observations go.
    pub history: Arc<SlotHistory>,
}

impl SlotWatcher {
    /// Runs until the future is dropped.
    pub async fn run(self) {
        let mut conn: Option<RedisConn> = None;
        let mut warned = false;
        loop {
            let started = tokio::time::Instant::now();
            let poll = self.history.begin_poll();
            match self.poll(poll, &mut conn).await {
                Ok(()) => warned = false,
                Err(e) => {
                    conn = None;
                    self.history.set_unhealthy();
                    if !warned {
                        tracing::debug!(error = %e, "cannot read the master's slot states");
                        warned = true;
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep_until(started + POLL_INTERVAL) => {}
                () = self.history.demand.notified() => {
                    tokio::time::sleep_until(started + MIN_POLL_GAP).await;
                }
            }
        }
    }

    async fn poll(&self, poll: u64, conn: &mut Option<RedisConn>) -> Result<(), String> {
        let Some(home) = self.view.home(&self.shard_id) else {
            return Err("the shard has no known master".into());
        };
        if conn.as_ref().is_some_and(|c| c.addr() != home.addr) {
            *conn = None;
        }
        let c = match conn {
            Some(c) => c,
            None => {
                let c =
                    crate::topology::open(&self.connector, &self.credentials, &home.addr).await?;
                conn.insert(c)
            }
        };
        // Pipelined: the server runs both before any other client's command, so the offset
        // and the slot states belong to the same moment.
        c.send(&[b"INFO".as_slice(), b"replication"])
            .await
            .map_err(|e| e.to_string())?;
        c.send(&[b"CLUSTER".as_slice(), b"NODES"])
            .await
            .map_err(|e| e.to_string())?;
        let info = c
            .read_reply("INFO", conn::REPLY_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let nodes = c
            .read_reply("CLUSTER NODES", conn::REPLY_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let (Frame::Bulk(info), Frame::Bulk(nodes)) = (info, nodes) else {
            return Err(format!(
                "{}: unexpected replies to INFO / CLUSTER NODES",
                home.addr
            ));
        };
        let info = conn::parse_info(&String::from_utf8_lossy(&info));
        if conn::info_field(&info, "role") != Some("master") {
            return Err(format!("{} is not a master", home.addr));
        }
        let replid = conn::info_field(&info, "master_replid").unwrap_or_default();
        let offset: u64 = conn::info_field(&info, "master_repl_offset")
            .and_then(|o| o.parse().ok())
            .ok_or_else(|| format!("{}: no master_repl_offset in INFO", home.addr))?;
        let host = crate::tls::host_of(&home.addr).to_owned();
        let nodes = cluster::parse_nodes(&String::from_utf8_lossy(&nodes), &host)
            .map_err(|e| e.to_string())?;
        let me = nodes
            .iter()
            .find(|n| n.myself)
            .ok_or_else(|| format!("{}: no myself line in CLUSTER NODES", home.addr))?;
        if me.id == home.node_id && me.slots != home.slots {
            // Resharding moved slots: the heartbeat's hash tag must follow them.
            self.view
                .update_slots(&self.shard_id, &me.id, me.slots.clone());
        }
        let mut migrating: Vec<u16> = me.migrating.iter().map(|(s, _)| *s).collect();
        migrating.sort_unstable();
        migrating.dedup();
        self.history.record(
            poll,
            replid,
            offset,
            SlotState {
                owned: me.slots.clone(),
                migrating,
            },
        );
        Ok(())
    }
}

fn is_del(c: &Command) -> bool {
    c.name.eq_ignore_ascii_case(b"del")
}

/// Whether `event` holds a `DEL` (alone or in a transaction).
pub fn has_del(event: &ChangeEvent) -> bool {
    match &event.kind {
        Some(Kind::Command(c)) => is_del(c),
        Some(Kind::Transaction(t)) => t.commands.iter().any(is_del),
        _ => false,
    }
}

/// Removes from `DEL`s the keys whose slot `state` says is moving; drops a `DEL` left
/// without keys and a transaction left without commands. Returns the event (if anything
/// remains) and how many keys were dropped.
pub fn drop_moved_keys(event: ChangeEvent, state: &SlotState) -> (Option<ChangeEvent>, usize) {
    let mut dropped = 0;
    let mut filter = |c: &mut Command| -> bool {
        if !is_del(c) {
            return true;
        }
        let before = c.args.len();
        c.args.retain(|k| !state.moving(cluster::key_slot(k)));
        dropped += before - c.args.len();
        c.key_indexes = (0..c.args.len())
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        !c.args.is_empty()
    };
    let ChangeEvent { position, kind } = event;
    let kind = match kind {
        Some(Kind::Command(mut c)) => filter(&mut c).then_some(Kind::Command(c)),
        Some(Kind::Transaction(mut t)) => {
            t.commands.retain_mut(|c| filter(c));
            (!t.commands.is_empty()).then_some(Kind::Transaction(t))
        }
        other => other,
    };
    (
        kind.map(|k| ChangeEvent {
            position,
            kind: Some(k),
        }),
        dropped,
    )
}

#[cfg(test)]
mod tests {
    use redis_sync_proto::v1::{Position, Transaction};

    use super::*;

    fn del(keys: &[&[u8]]) -> Command {
        Command {
            name: b"DEL".to_vec(),
            args: keys.iter().map(|k| k.to_vec()).collect(),
            key_indexes: (0..keys.len() as u32).collect(),
            ..Default::default()
        }
    }

    fn at(offset: u64, kind: Kind) -> ChangeEvent {
        ChangeEvent {
            position: Some(Position {
                replid: "r".into(),
                offset,
                ..Default::default()
            }),
            kind: Some(kind),
        }
    }

    #[test]
    fn moved_keys_are_dropped_from_dels_only() {
        let a = cluster::key_slot(b"{a}1");
        let b = cluster::key_slot(b"{b}1");
        let state = SlotState {
            owned: vec![SlotRange {
                start: 0,
                end: 16383,
            }],
            migrating: vec![a],
        };
        assert!(state.moving(a) && !state.moving(b));
        let (e, n) = drop_moved_keys(
            at(5, Kind::Command(del(&[b"{a}1", b"{b}1", b"{a}2"]))),
            &state,
        );
        let Some(Kind::Command(c)) = e.unwrap().kind else {
            panic!()
        };
        assert_eq!(
            (c.args, c.key_indexes, n),
            (vec![b"{b}1".to_vec()], vec![0], 2)
        );
        let (e, n) = drop_moved_keys(at(5, Kind::Command(del(&[b"{a}1"]))), &state);
        assert!(e.is_none() && n == 1);
        let set = Command {
            name: b"SET".to_vec(),
            args: vec![b"{a}1".to_vec(), b"v".to_vec()],
            ..Default::default()
        };
        let txn = Transaction {
            commands: vec![set.clone(), del(&[b"{a}1"])],
        };
        let (e, _) = drop_moved_keys(at(9, Kind::Transaction(txn)), &state);
        let Some(Kind::Transaction(t)) = e.unwrap().kind else {
            panic!()
        };
        assert_eq!(t.commands, vec![set]);
        let not_owned = SlotState {
            owned: vec![SlotRange { start: b, end: b }],
            migrating: vec![],
        };
        assert!(not_owned.moving(a) && !not_owned.moving(b));
    }

    #[tokio::test]
    async fn a_del_is_judged_by_the_first_observation_after_it() {
        let h = SlotHistory::default();
        let stable = SlotState {
            owned: vec![SlotRange { start: 0, end: 100 }],
            migrating: vec![],
        };
        let migrating = SlotState {
            migrating: vec![7],
            ..stable.clone()
        };
        h.record(1, "r", 100, stable.clone());
        h.record(2, "r", 150, stable.clone());
        h.record(3, "r", 200, migrating.clone());
        h.record(4, "r", 300, migrating.clone());
        assert_eq!(h.after(120), Some(stable.clone()));
        assert_eq!(h.after(150), Some(stable.clone()));
        assert_eq!(h.after(151), Some(migrating.clone()));
        assert_eq!(
            h.after(50),
            Some(stable.clone()),
            "older than all: the oldest"
        );
        assert_eq!(h.after(301), None);

        let (own, own_rx) = watch::channel(false);
        let (_global, global_rx) = watch::channel(false);
        let mut stop = StopSignal::new(own_rx, global_rx);
        // Beyond what was observed: the reader asks for a fresh poll and waits for it; a
        // poll that started before it asked does not count.
        let in_flight = h.begin_poll();
        let waiting = h.state_after("r", 350, &mut stop);
        let watcher = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            h.record(in_flight, "r", 320, migrating.clone());
            h.demand.notified().await;
            let fresh = h.begin_poll();
            h.record(fresh, "r", 400, stable.clone());
        };
        let (got, ()) = tokio::join!(waiting, watcher);
        assert_eq!(got, Some(stable.clone()));
        // A fresh poll that does not reach the DEL: a history the master left; decided by
        // the latest state, and later DELs of it do not wait.
        let waiting = h.state_after("old", 900, &mut stop);
        let watcher = async {
            h.demand.notified().await;
            let fresh = h.begin_poll();
            h.record(fresh, "r", 410, migrating.clone());
        };
        let (got, ()) = tokio::join!(waiting, watcher);
        assert_eq!(got, Some(migrating.clone()));
        assert!(!h.worth_waiting("old", 901));
        // No waiting for a watcher that cannot poll.
        h.set_unhealthy();
        let t = tokio::time::Instant::now();
        assert_eq!(
            h.state_after("r", 500, &mut stop).await,
            Some(migrating.clone())
        );
        assert!(t.elapsed() < DECISION_WAIT);
        // Offsets going back mean a new history.
        let p = h.begin_poll();
        h.record(p, "n", 10, stable.clone());
        assert_eq!(h.after(5), Some(stable));
        drop(own);
    }
}
