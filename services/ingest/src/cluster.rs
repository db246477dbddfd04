//! Redis Cluster topology as ingest uses it: which masters own slots, and a hash tag that
//! lands a heartbeat key on a given master. Slot hashing and `CLUSTER NODES` parsing are
//! shared with apply (`redis_sync_command::cluster`).

pub use redis_sync_command::cluster::{
    ClusterNode as NodeInfo, SLOTS, SlotRange, key_slot, parse_nodes,
};

/// A master from `CLUSTER NODES` that owns slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMaster {
    /// Node id (the shard id).
    pub id: String,
    /// "host:port" for clients.
    pub addr: String,
    /// Slots owned.
    pub slots: Vec<SlotRange>,
}

/// The usable masters that own slots among `nodes`. Failed masters are left out: their
/// slots are served by whoever took over, or by nobody.
pub fn masters(nodes: &[NodeInfo]) -> Vec<ClusterMaster> {
    nodes
        .iter()
        .filter(|n| n.serves_slots())
        .map(|n| ClusterMaster {
            id: n.id.clone(),
            addr: n.addr.clone(),
            slots: n.slots.clone(),
        })
        .collect()
}

/// Whether the masters together own every slot.
pub fn covers_all_slots(masters: &[ClusterMaster]) -> bool {
    let mut owned = vec![false; SLOTS as usize];
    for r in masters.iter().flat_map(|m| &m.slots) {
        for s in r.start..=r.end {
            owned[s as usize] = true;
        }
    }
    owned.iter().all(|&b| b)
}

/// A hash tag whose slot one of `slots` holds: "0", "1", ... until one fits. A master that
/// owns at least one slot always gets one within a few ten thousand tries.
pub fn hash_tag_for(slots: &[SlotRange]) -> Option<String> {
    (0u32..1_000_000).map(|n| n.to_string()).find(|tag| {
        let slot = key_slot(tag.as_bytes());
        slots.iter().any(|r| r.contains(slot))
    })
}

#[cfg(test)]
mod tests {
    use redis_sync_command::cluster::NodesError;

    use super::*;

    fn parse_cluster_nodes(
        text: &str,
        connected_host: &str,
    ) -> Result<Vec<ClusterMaster>, NodesError> {
        Ok(masters(&parse_nodes(text, connected_host)?))
    }

    #[test]
    fn usable_masters_and_coverage() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002,host2 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003 master - 0 1426238318243 3 connected 10923-16383 [16383->-abc]
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca :30001@31001 myself,master - 0 0 1 connected 0-5459 5460
aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 127.0.0.1:30009@31009 master,fail - 0 0 1 disconnected
bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb 127.0.0.1:30010@31010 master - 0 0 1 connected
";
        let masters = parse_cluster_nodes(text, "10.0.0.1").unwrap();
        assert_eq!(masters.len(), 3);
        assert_eq!(masters[0].addr, "127.0.0.1:30002");
        assert_eq!(
            masters[1].slots,
            vec![SlotRange {
                start: 10923,
                end: 16383
            }]
        );
        assert_eq!(masters[2].addr, "10.0.0.1:30001");
        assert_eq!(masters[2].slots.len(), 2);
        assert!(covers_all_slots(&masters));
        assert!(!covers_all_slots(&masters[1..]));
        assert!(parse_cluster_nodes("x y", "h").is_err());
    }

    #[test]
    fn hash_tags_land_in_owned_slots() {
        let ranges = [SlotRange {
            start: 9000,
            end: 9000,
        }];
        let tag = hash_tag_for(&ranges).unwrap();
        assert_eq!(key_slot(format!("DTS:x:{{{tag}}}").as_bytes()), 9000);
    }
}
