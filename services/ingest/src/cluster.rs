//! Redis Cluster topology: which masters own slots, and key → slot hashing.

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// CRC16/XMODEM (polynomial 0x1021, initial 0), the checksum Redis Cluster hashes keys with.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of `key`: the hash of its first non-empty `{...}` section if it has one,
/// otherwise of the whole key.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

/// An inclusive range of slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRange {
    /// First slot.
    pub start: u16,
    /// Last slot.
    pub end: u16,
}

impl SlotRange {
    /// Whether `slot` is in the range.
    pub fn contains(&self, slot: u16) -> bool {
        self.start <= slot && slot <= self.end
    }
}

impl std::fmt::Display for SlotRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

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

/// Why `CLUSTER NODES` output could not be used.
#[derive(Debug, thiserror::Error)]
#[error("CLUSTER NODES line {line}: {reason}")]
pub struct NodesError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// "host:port" for clients (empty for a node without an address).
    pub addr: String,
    /// Flagged `master`.
    pub master: bool,
    /// The line of the node that answered (`myself`).
    pub myself: bool,
    /// Flagged `fail`, `handshake` or `noaddr`: not usable.
    pub failed: bool,
    /// For a replica: the id of its master.
    pub master_id: Option<String>,
    /// Config epoch: the newest claim on a slot wins.
    pub config_epoch: u64,
    /// Slots owned.
    pub slots: Vec<SlotRange>,
    /// `[slot->-target]`: slots this node is migrating away, with the target's id. Only the
    /// migrating node itself shows them (on its `myself` line).
    pub migrating: Vec<(u16, String)>,
    /// `[slot-<-source]`: slots this node is importing.
    pub importing: Vec<(u16, String)>,
}

impl NodeInfo {
    /// How many of `slots` this node owns.
    pub fn overlap(&self, slots: &[SlotRange]) -> usize {
        slots
            .iter()
            .map(|r| {
                self.slots
                    .iter()
                    .map(|o| {
                        let (a, b) = (r.start.max(o.start), r.end.min(o.end));
                        if a <= b { usize::from(b - a) + 1 } else { 0 }
                    })
                    .sum::<usize>()
            })
            .sum()
    }
}

/// Parses `CLUSTER NODES` (3.0+ formats: `ip:port`, `ip:port@cport`, `ip:port@cport,hostname`)
/// into one entry per node. A node that does not know its own IP yet prints an empty host;
/// `connected_host` (the host we reached) stands in for it.
pub fn parse_nodes(text: &str, connected_host: &str) -> Result<Vec<NodeInfo>, NodesError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let err = |reason: &str| NodesError {
            line: i + 1,
            reason: reason.to_owned(),
        };
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 8 {
            return Err(err("fewer than 8 fields"));
        }
        let flags: Vec<&str> = fields[2].split(',').collect();
        let failed = flags
            .iter()
            .any(|f| matches!(*f, "fail" | "handshake" | "noaddr"));
        let addr_field = fields[1].split(['@', ',']).next().unwrap_or("");
        let addr = match addr_field.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(port) if port > 0 => {
                    let host = if host.is_empty() {
                        connected_host
                    } else {
                        host
                    };
                    let host = if host.contains(':') && !host.starts_with('[') {
                        format!("[{host}]")
                    } else {
                        host.to_owned()
                    };
                    format!("{host}:{port}")
                }
                _ if failed => String::new(),
                _ => return Err(err("bad port")),
            },
            None if failed => String::new(),
            None => return Err(err("address without port")),
        };
        let mut slots = Vec::new();
        let mut migrating = Vec::new();
        let mut importing = Vec::new();
        for s in &fields[8..] {
            if let Some(marker) = s.strip_prefix('[').and_then(|m| m.strip_suffix(']')) {
                // "[slot->-node]" migrating away, "[slot-<-node]" importing.
                if let Some((slot, node)) = marker.split_once("->-") {
                    migrating.push((
                        parse_slot(slot).ok_or_else(|| err("bad slot"))?,
                        node.to_owned(),
                    ));
                } else if let Some((slot, node)) = marker.split_once("-<-") {
                    importing.push((
                        parse_slot(slot).ok_or_else(|| err("bad slot"))?,
                        node.to_owned(),
                    ));
                }
                continue;
            }
            let range = match s.split_once('-') {
                Some((a, b)) => SlotRange {
                    start: parse_slot(a).ok_or_else(|| err("bad slot"))?,
                    end: parse_slot(b).ok_or_else(|| err("bad slot"))?,
                },
                None => {
                    let n = parse_slot(s).ok_or_else(|| err("bad slot"))?;
                    SlotRange { start: n, end: n }
                }
            };
            slots.push(range);
        }
        out.push(NodeInfo {
            id: fields[0].to_owned(),
            addr,
            master: flags.contains(&"master"),
            myself: flags.contains(&"myself"),
            failed,
            master_id: Some(fields[3]).filter(|m| *m != "-").map(str::to_owned),
            config_epoch: fields[6].parse().unwrap_or(0),
            slots,
            migrating,
            importing,
        });
    }
    Ok(out)
}

#[cfg(test)]
/// The masters that own slots, from `CLUSTER NODES`. Failed masters are left out: their
/// slots are served by whoever took over, or by nobody.
pub fn parse_cluster_nodes(
    text: &str,
    connected_host: &str,
) -> Result<Vec<ClusterMaster>, NodesError> {
    Ok(masters(&parse_nodes(text, connected_host)?))
}

/// The usable masters that own slots among `nodes`.
pub fn masters(nodes: &[NodeInfo]) -> Vec<ClusterMaster> {
    nodes
        .iter()
        .filter(|n| n.master && !n.failed && !n.slots.is_empty())
        .map(|n| ClusterMaster {
            id: n.id.clone(),
            addr: n.addr.clone(),
            slots: n.slots.clone(),
        })
        .collect()
}

fn parse_slot(s: &str) -> Option<u16> {
    s.parse::<u16>().ok().filter(|&n| n < SLOTS)
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
        let slot = crc16(tag.as_bytes()) % SLOTS;
        slots.iter().any(|r| r.contains(slot))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
    }

    #[test]
    fn parses_nodes_of_every_format() {
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
        assert!(parse_cluster_nodes("x y", "h").is_err());

        let nodes = parse_nodes(text, "10.0.0.1").unwrap();
        assert_eq!(nodes.len(), 6);
        assert_eq!(
            nodes[0].master_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert!(!nodes[0].master && nodes[1].master && nodes[3].myself);
        assert_eq!(nodes[2].config_epoch, 3);
        assert_eq!(nodes[2].migrating, vec![(16383, "abc".to_owned())]);
        assert!(nodes[4].failed);
        assert_eq!(
            nodes[3].overlap(&[SlotRange {
                start: 5000,
                end: 6000
            }]),
            461
        );
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
