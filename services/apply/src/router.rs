//! Cluster slot routing for a cluster destination: key slots, the slot map, checkpoint
//! hash tags per master, and the split of multi-key commands whose keys span slots.

use crate::endpoint;
use redis::Value;
pub use redis_sync_command::cluster::key_slot;
use redis_sync_command::cluster::{SLOTS, node_address};

/// [`SLOTS`] as an index bound of per-slot tables.
const SLOT_COUNT: usize = SLOTS as usize;

/// Why the slot map could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TopologyError {
    /// CLUSTER SLOTS answered something unexpected.
    #[error("CLUSTER SLOTS reply not understood: {0}")]
    BadReply(String),
    /// Some slots have no master (the cluster is not fully covered right now).
    #[error("slot {0} has no master in CLUSTER SLOTS")]
    Uncovered(usize),
}

/// One master of a cluster destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    /// "host:port" to connect to.
    pub address: String,
    /// Its lowest slot: keyless commands (FLUSHDB, FUNCTION, SCRIPT, PUBLISH) run in a
    /// MULTI of this slot.
    pub home_slot: u16,
}

/// The slot map of a cluster destination.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Masters, in order of their lowest slot.
    pub masters: Vec<Master>,
    /// Index into `masters` of the owner of each slot.
    owner: Vec<u16>,
}

impl Topology {
    /// Builds the map from a `CLUSTER SLOTS` reply. `seed_host` stands in for masters
    /// announced without an address (an empty host means "the node you asked").
    pub fn from_cluster_slots(reply: &Value, seed_host: &str) -> Result<Self, TopologyError> {
        let Value::Array(ranges) = reply else {
            return Err(TopologyError::BadReply(format!("{reply:?}")));
        };
        let mut owner = vec![u16::MAX; SLOT_COUNT];
        let mut addresses: Vec<(usize, String)> = Vec::new();
        for range in ranges {
            let Value::Array(items) = range else {
                return Err(TopologyError::BadReply(format!("range {range:?}")));
            };
            let (Some(start), Some(end), Some(Value::Array(node))) = (
                items.first().and_then(int),
                items.get(1).and_then(int),
                items.get(2),
            ) else {
                return Err(TopologyError::BadReply(format!("range {range:?}")));
            };
            let (Some(host), Some(port)) = (
                node.first().and_then(endpoint::value_text),
                node.get(1).and_then(int),
            ) else {
                return Err(TopologyError::BadReply(format!("node {node:?}")));
            };
            let host = if host.is_empty() || host == "?" {
                seed_host.to_owned()
            } else {
                host
            };
            let Ok(port) = u16::try_from(port) else {
                return Err(TopologyError::BadReply(format!("node {node:?}")));
            };
            let address = node_address(&host, port);
            let (start, end) = (
                usize::try_from(start).unwrap_or(SLOT_COUNT),
                usize::try_from(end).unwrap_or(SLOT_COUNT),
            );
            if start > end || end >= SLOT_COUNT {
                return Err(TopologyError::BadReply(format!("slot range {start}-{end}")));
            }
            let index = match addresses.iter().position(|(_, a)| *a == address) {
                Some(i) => i,
                None => {
                    addresses.push((start, address));
                    addresses.len() - 1
                }
            };
            if let Some(entry) = addresses.get_mut(index) {
                entry.0 = entry.0.min(start);
            }
            for slot in &mut owner[start..=end] {
                *slot = u16::try_from(index).unwrap_or(u16::MAX);
            }
        }
        if let Some(slot) = owner.iter().position(|o| *o == u16::MAX) {
            return Err(TopologyError::Uncovered(slot));
        }
        // Order masters by their lowest slot so the same cluster always gives the same
        // order, then renumber the owner table.
        let mut order: Vec<usize> = (0..addresses.len()).collect();
        order.sort_by_key(|i| addresses[*i].0);
        let mut renumber = vec![0u16; addresses.len()];
        for (new, old) in order.iter().enumerate() {
            renumber[*old] = u16::try_from(new).unwrap_or(u16::MAX);
        }
        for o in &mut owner {
            *o = renumber[usize::from(*o)];
        }
        let masters: Vec<Master> = order
            .iter()
            .map(|i| Master {
                address: addresses[*i].1.clone(),
                home_slot: u16::try_from(addresses[*i].0).unwrap_or(0),
            })
            .collect();
        Ok(Self { masters, owner })
    }

    /// Index of the master that owns `slot`.
    pub fn owner(&self, slot: u16) -> usize {
        self.owner
            .get(usize::from(slot))
            .map_or(0, |o| usize::from(*o))
    }

    /// Index of the master that owns `key`.
    pub fn owner_of_key(&self, key: &[u8]) -> usize {
        self.owner(key_slot(key))
    }

    /// The slots master `index` owns.
    pub fn slots_of(&self, index: usize) -> impl Iterator<Item = u16> + '_ {
        self.owner
            .iter()
            .enumerate()
            .filter(move |(_, o)| usize::from(**o) == index)
            .filter_map(|(s, _)| u16::try_from(s).ok())
    }
}

/// A hash tag for every slot: `slot_tag(s)` is the first of "0", "1", "2", ... whose slot
/// is `s`, so a key `...{<tag>}...` lands in slot `s`, and every process computes the
/// same table.
pub fn slot_tag(slot: u16) -> &'static str {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); SLOT_COUNT];
        let mut missing = SLOT_COUNT;
        // About 170 000 candidates cover all slots (coupon collector); the bound only
        // guards against an impossible loop.
        for n in 0u32..10_000_000 {
            let tag = n.to_string();
            let s = usize::from(key_slot(tag.as_bytes()));
            if tags[s].is_empty() {
                tags[s] = tag;
                missing -= 1;
                if missing == 0 {
                    break;
                }
            }
        }
        tags
    });
    tags.get(usize::from(slot)).map_or("", String::as_str)
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// Groups `key_positions` (argument indexes) by slot, keeping first-seen order.
pub fn group_by_slot(args: &[Vec<u8>], key_positions: &[usize]) -> Vec<(u16, Vec<usize>)> {
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for &i in key_positions {
        let Some(key) = args.get(i) else { continue };
        let slot = key_slot(key);
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, v)) => v.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_from_cluster_slots() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node(7001)]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node(7000)]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node(7002)]),
        ]);
        let t = Topology::from_cluster_slots(&reply, "127.0.0.1").unwrap();
        assert_eq!(t.masters[0].address, "127.0.0.1:7000");
        assert_eq!(t.owner(0), 0);
        assert_eq!(t.owner(6000), 1);
        assert_eq!(t.owner(16383), 2);
        for (i, m) in t.masters.iter().enumerate() {
            assert_eq!(t.owner(m.home_slot), i);
            assert_eq!(t.slots_of(i).next(), Some(m.home_slot));
        }
        assert_eq!(t.slots_of(1).count(), 10922 - 5461 + 1);
        let partial = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(10),
            node(7000),
        ])]);
        assert!(matches!(
            Topology::from_cluster_slots(&partial, "h"),
            Err(TopologyError::Uncovered(11))
        ));
    }

    #[test]
    fn every_slot_has_a_tag() {
        for s in [0u16, 1, 5460, 12182, 16383] {
            let key = format!("x{{{}}}y", slot_tag(s));
            assert_eq!(key_slot(key.as_bytes()), s);
        }
        assert!((0..16384u16).all(|s| !slot_tag(s).is_empty()));
    }

    #[test]
    fn groups_keys_by_slot() {
        let args: Vec<Vec<u8>> = vec![
            b"{a}1".to_vec(),
            b"v".to_vec(),
            b"{b}1".to_vec(),
            b"v".to_vec(),
            b"{a}2".to_vec(),
        ];
        let g = group_by_slot(&args, &[0, 2, 4]);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].1, vec![0, 4]);
        assert_eq!(g[1].1, vec![2]);
    }
}
