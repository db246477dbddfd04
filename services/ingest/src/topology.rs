//! Where each shard of a subscriber's source lives now.
//!
//! A shard id names one *history* of the source, not one process: "standalone" for a
//! standalone source, and in a cluster the node id of the master that served the shard when
//! the subscriber first saw it. Apply checkpoints positions by shard id, so the id must not
//! change while the history goes on. After a failover the promoted replica continues the
//! same history (it keeps the old replid as its `master_replid2`, so `PSYNC old-replid
//! offset+1` answers `+CONTINUE`): the shard keeps its id and only its *home* (node id,
//! address, slots) changes. [`SourceView`] holds the homes of a subscriber's shards; the
//! replica links move them ([`relocate`]), the heartbeats and slot watchers follow them.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use futures_util::future::join_all;
use redis_sync_resp::Frame;

use crate::{
    cluster::{self, NodeInfo, SlotRange},
    conn::{self, Credentials, RedisConn},
    tls::Connector,
};

/// Most node addresses remembered as discovery seeds.
const MAX_SEEDS: usize = 64;
/// Nodes asked at once when looking for a shard.
const SURVEY_FANOUT: usize = 5;
/// How long asking them may take in total.
const SURVEY_TIMEOUT: Duration = Duration::from_secs(8);

/// Where a shard is served now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardHome {
    /// Node id of the master serving it (empty for a standalone source).
    pub node_id: String,
    /// "host:port" of that master.
    pub addr: String,
    /// Slots it owns (cluster only).
    pub slots: Vec<SlotRange>,
}

/// The homes of a subscriber's shards and the cluster nodes known, shared by its links,
/// heartbeats and slot watchers.
#[derive(Debug, Default)]
pub struct SourceView {
    inner: Mutex<ViewInner>,
}

#[derive(Debug, Default)]
struct ViewInner {
    seeds: Vec<String>,
    homes: BTreeMap<String, ShardHome>,
}

impl SourceView {
    fn inner(&self) -> std::sync::MutexGuard<'_, ViewInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where `shard` is served now.
    pub fn home(&self, shard: &str) -> Option<ShardHome> {
        self.inner().homes.get(shard).cloned()
    }

    /// Moves `shard` to `home`.
    pub fn set_home(&self, shard: &str, home: ShardHome) {
        self.inner().homes.insert(shard.to_owned(), home);
    }

    /// Sets the slots of `shard` if it still lives on node `node_id` (a link may have
    /// moved it meanwhile).
    pub fn update_slots(&self, shard: &str, node_id: &str, slots: Vec<SlotRange>) {
        if let Some(home) = self.inner().homes.get_mut(shard)
            && home.node_id == node_id
        {
            home.slots = slots;
        }
    }

    /// Forgets `shard`.
    pub fn remove(&self, shard: &str) {
        self.inner().homes.remove(shard);
    }

    /// The shard whose home is node `node_id`, if any.
    pub fn shard_of_node(&self, node_id: &str) -> Option<String> {
        self.inner()
            .homes
            .iter()
            .find(|(_, h)| h.node_id == node_id)
            .map(|(id, _)| id.clone())
    }

    /// Remembers `addr` as a node to ask first next time.
    pub fn add_seed(&self, addr: &str) {
        let mut inner = self.inner();
        inner.seeds.retain(|s| s != addr);
        inner.seeds.insert(0, addr.to_owned());
        inner.seeds.truncate(MAX_SEEDS);
    }

    /// Remembers the addresses of the usable nodes in `nodes` (after the current seeds).
    pub fn learn(&self, nodes: &[NodeInfo]) {
        let mut inner = self.inner();
        for n in nodes.iter().filter(|n| !n.failed && !n.addr.is_empty()) {
            if !inner.seeds.contains(&n.addr) {
                inner.seeds.push(n.addr.clone());
            }
        }
        inner.seeds.truncate(MAX_SEEDS);
    }

    /// Known node addresses, the most useful first.
    pub fn seeds(&self) -> Vec<String> {
        self.inner().seeds.clone()
    }
}

/// Connects to `addr` and authenticates.
pub async fn open(
    connector: &Connector,
    credentials: &Credentials,
    addr: &str,
) -> Result<RedisConn, String> {
    let mut c = connector.connect(addr).await.map_err(|e| e.to_string())?;
    credentials
        .authenticate(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    Ok(c)
}

/// `CLUSTER NODES` of the node `c` is connected to.
pub async fn cluster_nodes(c: &mut RedisConn) -> Result<Vec<NodeInfo>, String> {
    let reply = c
        .command(&[b"CLUSTER".as_slice(), b"NODES"])
        .await
        .map_err(|e| e.to_string())?;
    let text = match reply {
        Frame::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
        Frame::Error(e) => {
            return Err(format!(
                "{}: CLUSTER NODES answered {}",
                c.addr(),
                String::from_utf8_lossy(&e)
            ));
        }
        other => return Err(format!("{}: CLUSTER NODES answered {other:?}", c.addr())),
    };
    let host = crate::tls::host_of(c.addr()).to_owned();
    cluster::parse_nodes(&text, &host).map_err(|e| format!("{}: {e}", c.addr()))
}

/// Asks up to [`SURVEY_FANOUT`] of `seeds` for `CLUSTER NODES` at once; returns the answers
/// that came within [`SURVEY_TIMEOUT`] (none when no node answered).
pub async fn survey(
    connector: &Connector,
    credentials: &Credentials,
    seeds: &[String],
) -> Vec<Vec<NodeInfo>> {
    let asks = seeds.iter().take(SURVEY_FANOUT).map(|addr| async move {
        let mut c = open(connector, credentials, addr).await?;
        cluster_nodes(&mut c).await
    });
    match tokio::time::timeout(SURVEY_TIMEOUT, join_all(asks)).await {
        Ok(answers) => answers.into_iter().filter_map(Result::ok).collect(),
        Err(_) => Vec::new(),
    }
}

/// Finds where `shard` is served now, after its link to `home` broke.
///
/// * Some node answers `CLUSTER NODES` (the known nodes are asked a few at a time; of the
///   answers, the one whose claim on the shard's slots carries the highest config epoch
///   wins, since that is how the cluster itself settles disagreements).
/// * If the shard's node still owns (some of) its slots, the shard stays there; only its
///   address and slots are refreshed.
/// * Otherwise the masters that now own its slots are candidates, most slots first. A
///   candidate is taken only if it continues the shard's history: its `master_replid` or
///   `master_replid2` is `replid` (the replid the spool ends with). That is exactly the
///   promoted replica after a failover, and never a master that merely received the slots
///   by resharding (its history is another shard's). Without a replid (nothing received
///   yet) the candidate that is not another shard's home and owns most slots is taken.
///
/// `Ok(None)`: nothing better is known; the link keeps trying the old home.
pub async fn relocate(
    view: &SourceView,
    shard: &str,
    connector: &Connector,
    credentials: &Credentials,
    replid: Option<&str>,
) -> Result<Option<ShardHome>, String> {
    let Some(home) = view.home(shard) else {
        return Ok(None);
    };
    let mut seeds = view.seeds();
    // The old home last: it is the node most likely to be down.
    seeds.retain(|s| *s != home.addr);
    seeds.push(home.addr.clone());
    let answers = survey(connector, credentials, &seeds).await;
    if answers.is_empty() {
        return Err(format!(
            "no cluster node answered CLUSTER NODES (asked {})",
            seeds
                .iter()
                .take(SURVEY_FANOUT)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for a in &answers {
        view.learn(a);
    }
    let claims = |nodes: &Vec<NodeInfo>| {
        nodes
            .iter()
            .filter(|n| n.master && !n.failed && n.overlap(&home.slots) > 0)
            .map(|n| n.config_epoch)
            .max()
            .unwrap_or(0)
    };
    let Some(best) = answers.iter().max_by_key(|a| claims(a)) else {
        return Ok(None);
    };
    if let Some(same) = best
        .iter()
        .find(|n| n.id == home.node_id && n.master && !n.failed && !n.slots.is_empty())
    {
        return Ok(Some(ShardHome {
            node_id: same.id.clone(),
            addr: same.addr.clone(),
            slots: same.slots.clone(),
        }));
    }
    let mut candidates: Vec<&NodeInfo> = best
        .iter()
        .filter(|n| n.master && !n.failed && !n.addr.is_empty() && n.overlap(&home.slots) > 0)
        .collect();
    candidates.sort_by_key(|n| std::cmp::Reverse(n.overlap(&home.slots)));
    for cand in candidates {
        if view
            .shard_of_node(&cand.id)
            .is_some_and(|other| other != shard)
        {
            continue;
        }
        let continues = match replid {
            None => true,
            Some(r) => match open(connector, credentials, &cand.addr).await {
                Ok(mut c) => match conn::replication_ids(&mut c).await {
                    Ok((_, id, id2)) => id == r || id2 == r,
                    Err(e) => {
                        tracing::debug!(node = %cand.addr, error = %e, "cannot read its replication ids");
                        false
                    }
                },
                Err(e) => {
                    tracing::debug!(node = %cand.addr, error = %e, "cannot reach a candidate master");
                    false
                }
            },
        };
        if continues {
            return Ok(Some(ShardHome {
                node_id: cand.id.clone(),
                addr: cand.addr.clone(),
                slots: cand.slots.clone(),
            }));
        }
    }
    Ok(None)
}
