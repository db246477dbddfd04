//! A Redis Cluster of harness servers, and key → slot hashing.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

// The same hashing and `CLUSTER NODES` reading as ingest and apply: the harness tests
// them against real servers (MOVED, `CLUSTER NODES` of every version) as it goes.
use redis_sync_command::cluster::{ClusterNode as NodeLine, parse_nodes};
pub use redis_sync_command::cluster::{SLOTS as SLOT_COUNT, crc16, key_slot};

use crate::error::{HarnessError, Result};
use crate::process::wait_until;
use crate::resp::Info;
use crate::server::RedisServer;
use crate::version::RedisVersion;

/// `cluster-node-timeout` of harness clusters, in milliseconds.
pub const CLUSTER_NODE_TIMEOUT_MS: u32 = 2000;

/// Limit for the cluster to form, or to settle after a failover.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Slots per `CLUSTER ADDSLOTS` command (3.2 has no `ADDSLOTSRANGE`).
const ADDSLOTS_BATCH: usize = 1000;

/// One node of a [`RedisCluster`]: a [`RedisServer`] plus its cluster node id.
/// Dereferences to the server.
pub struct ClusterNode {
    index: usize,
    id: String,
    server: RedisServer,
}

impl ClusterNode {
    /// Position in [`RedisCluster::nodes`] (stable; roles may change).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The 40-character cluster node id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The server running this node.
    pub fn server(&self) -> &RedisServer {
        &self.server
    }
}

impl Deref for ClusterNode {
    type Target = RedisServer;
    fn deref(&self) -> &RedisServer {
        &self.server
    }
}

impl fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterNode")
            .field("index", &self.index)
            .field("id", &self.id)
            .field("addr", &self.server.addr())
            .finish()
    }
}

/// Who replicates whom and which master serves which slots, by node index.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Topology {
    /// `Some(master index)` for replicas.
    master_of: Vec<Option<usize>>,
    /// Merged, sorted inclusive slot ranges; empty for replicas.
    slots: Vec<Vec<(u16, u16)>>,
}

impl Topology {
    fn owner(&self, slot: u16) -> Option<usize> {
        self.slots
            .iter()
            .position(|ranges| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
    }
}

/// A Redis Cluster (3.0+) of harness servers on loopback, formed and verified.
///
/// Nodes `0..masters` start as masters with the slots split evenly in order; the
/// rest are replicas, assigned round-robin (node `masters + k` replicates master
/// `k % masters`). Dropping the cluster kills every node.
pub struct RedisCluster {
    version: RedisVersion,
    nodes: Vec<ClusterNode>,
    topology: Mutex<Topology>,
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster")
            .field("version", &self.version)
            .field("nodes", &self.nodes)
            .field("topology", &*self.topology())
            .finish()
    }
}

impl RedisCluster {
    /// Starts `masters * (1 + replicas_per_master)` nodes (`cluster-enabled yes`,
    /// `cluster-node-timeout 2000`), joins them with `CLUSTER MEET`, gives the masters
    /// the 16384 slots with `CLUSTER ADDSLOTS`, attaches replicas with
    /// `CLUSTER REPLICATE`, and returns once every node reports `cluster_state:ok`,
    /// all nodes agree on roles and slot map in `CLUSTER NODES`, and every replica
    /// has finished its initial sync.
    pub fn start(
        version: RedisVersion,
        masters: usize,
        replicas_per_master: usize,
    ) -> Result<RedisCluster> {
        if !version.supports_cluster() {
            return Err(HarnessError::Unsupported {
                version,
                feature: "cluster mode",
            });
        }
        if masters == 0 || masters > usize::from(SLOT_COUNT) {
            return Err(HarnessError::InvalidConfig(format!(
                "a cluster needs 1..=16384 masters, not {masters}"
            )));
        }
        let total = masters
            .checked_mul(replicas_per_master + 1)
            .ok_or_else(|| HarnessError::InvalidConfig("too many nodes".into()))?;

        let servers = start_nodes(version, total)?;
        let mut nodes = Vec::with_capacity(total);
        for (index, server) in servers.into_iter().enumerate() {
            let id = own_node_id(&server)?;
            nodes.push(ClusterNode { index, id, server });
        }

        let count = u32::from(SLOT_COUNT);
        let masters_u32 = u32::try_from(masters).unwrap_or(u32::MAX);
        let topology = Topology {
            master_of: (0..total)
                .map(|i| i.checked_sub(masters).map(|k| k % masters))
                .collect(),
            slots: (0..total)
                .map(|i| match u32::try_from(i) {
                    Ok(i) if i < masters_u32 => {
                        let first = i * count / masters_u32;
                        let last = (i + 1) * count / masters_u32 - 1;
                        vec![(first as u16, last as u16)]
                    }
                    _ => Vec::new(),
                })
                .collect(),
        };
        let cluster = RedisCluster {
            version,
            nodes,
            topology: Mutex::new(topology.clone()),
        };
        cluster.form(&topology)?;
        Ok(cluster)
    }

    fn form(&self, topology: &Topology) -> Result<()> {
        let first = &self.nodes[0];
        for node in &self.nodes[1..] {
            first.cmd_ok(&["CLUSTER", "MEET", "127.0.0.1", &node.port().to_string()])?;
        }
        wait_until(
            "every cluster node to know every other node",
            CLUSTER_TIMEOUT,
            || self.check_all_known(),
        )?;

        for (node, ranges) in self.nodes.iter().zip(&topology.slots) {
            let slots: Vec<String> = ranges
                .iter()
                .flat_map(|&(a, b)| a..=b)
                .map(|s| s.to_string())
                .collect();
            for batch in slots.chunks(ADDSLOTS_BATCH) {
                let mut args = vec!["CLUSTER", "ADDSLOTS"];
                args.extend(batch.iter().map(String::as_str));
                node.cmd_ok(&args)?;
            }
        }
        for (node, master) in self.nodes.iter().zip(&topology.master_of) {
            if let Some(m) = master {
                node.cmd_ok(&["CLUSTER", "REPLICATE", &self.nodes[*m].id])?;
            }
        }
        self.wait_converged(topology, "the cluster to form")
    }

    fn check_all_known(&self) -> std::result::Result<(), String> {
        for node in &self.nodes {
            let lines = cluster_nodes(node)?;
            for other in &self.nodes {
                match lines.iter().find(|l| l.id == other.id) {
                    None => {
                        return Err(format!("{} does not know {}", node.addr(), other.addr()));
                    }
                    Some(l) if l.has_flag("handshake") || l.has_flag("noaddr") => {
                        return Err(format!(
                            "{} sees {} as {}",
                            node.addr(),
                            other.addr(),
                            l.flags.join(",")
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// Waits until every node's view matches `expected` (see [`RedisCluster::start`]).
    fn wait_converged(&self, expected: &Topology, what: &str) -> Result<()> {
        wait_until(what, CLUSTER_TIMEOUT, || self.check_converged(expected))
    }

    fn check_converged(&self, expected: &Topology) -> std::result::Result<(), String> {
        let n = self.nodes.len();
        // node id → (its master's id, its slots)
        type Want<'a> = BTreeMap<&'a str, (Option<&'a str>, &'a [(u16, u16)])>;
        let want: Want<'_> = self
            .nodes
            .iter()
            .map(|node| {
                let master = expected.master_of[node.index].map(|m| self.nodes[m].id.as_str());
                (
                    node.id.as_str(),
                    (master, expected.slots[node.index].as_slice()),
                )
            })
            .collect();

        for node in &self.nodes {
            let addr = node.addr();
            let info = cluster_info(node)?;
            for (field, value) in [
                ("cluster_state", "ok".to_owned()),
                ("cluster_slots_assigned", SLOT_COUNT.to_string()),
                ("cluster_slots_ok", SLOT_COUNT.to_string()),
                ("cluster_known_nodes", n.to_string()),
            ] {
                if info.get(field) != Some(value.as_str()) {
                    return Err(format!("{addr}: {field}={:?}", info.get(field)));
                }
            }

            let lines = cluster_nodes(node)?;
            if lines.len() != n {
                return Err(format!("{addr} lists {} nodes, not {n}", lines.len()));
            }
            for line in &lines {
                let Some(&(master, slots)) = want.get(line.id.as_str()) else {
                    return Err(format!("{addr} lists unknown node {}", line.id));
                };
                if let Some(bad) = ["fail", "fail?", "handshake", "noaddr"]
                    .into_iter()
                    .find(|f| line.has_flag(f))
                {
                    return Err(format!("{addr} flags {} as {bad}", describe(line)));
                }
                if !line.myself && !line.connected {
                    return Err(format!("{addr} has no link to {}", describe(line)));
                }
                if line.replica != master.is_some() || line.master_id.as_deref() != master {
                    return Err(format!(
                        "{addr} sees {} as {} of {:?}, expected {}",
                        describe(line),
                        if line.replica { "replica" } else { "master" },
                        line.master_id,
                        match master {
                            Some(m) => format!("replica of {m}"),
                            None => "master".into(),
                        }
                    ));
                }
                let serving = slot_pairs(line);
                if serving != slots {
                    return Err(format!(
                        "{addr} sees {} serving slots {serving:?}, expected {slots:?}",
                        describe(line),
                    ));
                }
            }

            let repl = node.info("replication").map_err(|e| e.to_string())?;
            match expected.master_of[node.index] {
                None => {
                    if repl.get("role") != Some("master") {
                        return Err(format!("{addr}: role={:?}", repl.get("role")));
                    }
                }
                Some(m) => {
                    let master_port = self.nodes[m].port().to_string();
                    let state = (
                        repl.get("master_port"),
                        repl.get("master_link_status"),
                        repl.get("master_sync_in_progress"),
                    );
                    if state != (Some(master_port.as_str()), Some("up"), Some("0")) {
                        return Err(format!(
                            "{addr} replication (master_port, master_link_status, \
                             master_sync_in_progress) = {state:?}, expected master port {master_port}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn topology(&self) -> MutexGuard<'_, Topology> {
        self.topology.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The release line of every node.
    pub fn version(&self) -> RedisVersion {
        self.version
    }

    /// Every node, by index.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// `"127.0.0.1:<port>"` of every node (seeds for a cluster client).
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr()).collect()
    }

    /// The current masters, by index.
    pub fn masters(&self) -> Vec<&ClusterNode> {
        let topology = self.topology();
        self.nodes
            .iter()
            .filter(|n| topology.master_of[n.index].is_none())
            .collect()
    }

    /// The current replicas, by index.
    pub fn replicas(&self) -> Vec<&ClusterNode> {
        let topology = self.topology();
        self.nodes
            .iter()
            .filter(|n| topology.master_of[n.index].is_some())
            .collect()
    }

    /// The master `node` replicates, if it is a replica.
    pub fn master_of(&self, node: &ClusterNode) -> Option<&ClusterNode> {
        self.topology().master_of[node.index].map(|m| &self.nodes[m])
    }

    /// The replicas of `master`.
    pub fn replicas_of(&self, master: &ClusterNode) -> Vec<&ClusterNode> {
        let topology = self.topology();
        self.nodes
            .iter()
            .filter(|n| topology.master_of[n.index] == Some(master.index))
            .collect()
    }

    /// The slot of `key`; same as [`key_slot`].
    pub fn key_slot(key: &[u8]) -> u16 {
        key_slot(key)
    }

    /// The master serving `slot`, as last verified by the harness.
    ///
    /// # Panics
    /// If `slot >= 16384`, or no master serves it in the harness's view (possible
    /// only after [`RedisCluster::refresh`] read an incomplete slot map).
    pub fn node_for_slot(&self, slot: u16) -> &ClusterNode {
        assert!(slot < SLOT_COUNT, "slot {slot} out of range");
        let owner = self.topology().owner(slot);
        match owner {
            Some(i) => &self.nodes[i],
            None => panic!("no master serves slot {slot} in the harness's view of the cluster"),
        }
    }

    /// The master serving `key`'s slot.
    pub fn node_for_key(&self, key: &[u8]) -> &ClusterNode {
        self.node_for_slot(key_slot(key))
    }

    /// Manual failover: `CLUSTER FAILOVER` on `replica`, then waits until it is the
    /// master of its former master's slots, its former master and sibling replicas
    /// replicate it, and every node agrees (as in [`RedisCluster::start`]).
    pub fn failover(&self, replica: &ClusterNode) -> Result<()> {
        let r = replica.index;
        let mut expected = self.topology().clone();
        let Some(m) = expected.master_of[r] else {
            return Err(HarnessError::Cluster(format!(
                "{} is not a replica; CLUSTER FAILOVER needs one",
                replica.addr()
            )));
        };
        expected.slots[r] = std::mem::take(&mut expected.slots[m]);
        for master in &mut expected.master_of {
            if *master == Some(m) {
                *master = Some(r);
            }
        }
        expected.master_of[r] = None;
        expected.master_of[m] = Some(r);

        replica.cmd_ok(&["CLUSTER", "FAILOVER"])?;
        wait_until(
            &format!("{} to become master", replica.addr()),
            CLUSTER_TIMEOUT,
            || match replica
                .info("replication")
                .map(|i| i.get("role").map(str::to_owned))
            {
                Ok(Some(role)) if role == "master" => Ok(()),
                other => Err(format!("role: {other:?}")),
            },
        )?;
        self.wait_converged(
            &expected,
            &format!(
                "the cluster to settle after failing over to {}",
                replica.addr()
            ),
        )?;
        *self.topology() = expected;
        Ok(())
    }

    /// Re-reads roles and slot map from `CLUSTER NODES` of the first running node,
    /// e.g. after a test killed a master and the cluster failed over on its own.
    pub fn refresh(&self) -> Result<()> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .ok_or_else(|| HarnessError::Cluster("no node is running".into()))?;
        let lines = cluster_nodes(node).map_err(HarnessError::Cluster)?;
        let index_of = |id: &str| self.nodes.iter().position(|n| n.id == id);
        let mut topology = Topology {
            master_of: vec![None; self.nodes.len()],
            slots: vec![Vec::new(); self.nodes.len()],
        };
        for line in lines {
            let Some(i) = index_of(&line.id) else {
                continue;
            };
            topology.master_of[i] = line.master_id.as_deref().and_then(index_of);
            topology.slots[i] = slot_pairs(&line);
        }
        *self.topology() = topology;
        Ok(())
    }
}

fn start_nodes(version: RedisVersion, count: usize) -> Result<Vec<RedisServer>> {
    let start = || {
        RedisServer::builder(version)
            .config("cluster-enabled", "yes")
            .config("cluster-config-file", "nodes.conf")
            .config("cluster-node-timeout", CLUSTER_NODE_TIMEOUT_MS.to_string())
            .start()
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..count).map(|_| s.spawn(start)).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

fn own_node_id(server: &RedisServer) -> Result<String> {
    cluster_nodes(server)
        .map_err(HarnessError::Cluster)?
        .into_iter()
        .find(|l| l.myself)
        .map(|l| l.id)
        .ok_or_else(|| {
            HarnessError::Cluster(format!(
                "{}: CLUSTER NODES has no `myself` line",
                server.addr()
            ))
        })
}

fn cluster_info(server: &RedisServer) -> std::result::Result<Info, String> {
    let reply = server
        .cmd_ok(&["CLUSTER", "INFO"])
        .map_err(|e| format!("{}: {e}", server.addr()))?;
    Ok(Info::parse(reply.as_str().unwrap_or_default()))
}

fn cluster_nodes(server: &RedisServer) -> std::result::Result<Vec<NodeLine>, String> {
    let reply = server
        .cmd_ok(&["CLUSTER", "NODES"])
        .map_err(|e| format!("{}: {e}", server.addr()))?;
    let text = reply
        .as_str()
        .ok_or_else(|| format!("{}: CLUSTER NODES returned {reply}", server.addr()))?;
    parse_nodes(text, "127.0.0.1").map_err(|e| format!("{}: {e}", server.addr()))
}

/// `host:port (id prefix)`: roles move between nodes, so messages name both.
fn describe(line: &NodeLine) -> String {
    format!("{} ({})", line.addr, line.id.get(..8).unwrap_or(&line.id))
}

/// The node's slots as merged, sorted `(first, last)` pairs, comparable with [`Topology`].
fn slot_pairs(line: &NodeLine) -> Vec<(u16, u16)> {
    merge_ranges(line.slots.iter().map(|r| (r.start, r.end)).collect())
}

fn merge_ranges(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_ranges() {
        assert_eq!(
            merge_ranges(vec![(5, 5), (0, 3), (4, 4), (7, 9), (8, 8)]),
            vec![(0, 5), (7, 9)]
        );
    }

    #[test]
    fn cluster_needs_3_0() {
        let err = RedisCluster::start(RedisVersion::V2_8, 3, 0).unwrap_err();
        assert!(matches!(err, HarnessError::Unsupported { .. }), "{err}");
    }
}
