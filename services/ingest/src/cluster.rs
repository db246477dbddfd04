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

#[cfg(test)]
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

/// Parses `CLUSTER NODES` (3.0+ formats: `ip:port`, `ip:port@cport`, `ip:port@cport,hostname`)
/// into the masters that own slots. A node that does not know its own IP yet prints an empty
/// host; `connected_host` (the host we reached) stands in for it. Failed masters are left
/// out: their slots are served by whoever took over, or by nobody.
pub fn parse_cluster_nodes(
    text: &str,
    connected_host: &str,
) -> Result<Vec<ClusterMaster>, NodesError> {
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
        if !flags.contains(&"master")
            || flags
                .iter()
                .any(|f| matches!(*f, "fail" | "handshake" | "noaddr"))
        {
            continue;
        }
        let addr = fields[1].split(['@', ',']).next().unwrap_or("");
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| err("address without port"))?;
        let port: u16 = port.parse().map_err(|_| err("bad port"))?;
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
        let mut slots = Vec::new();
        for s in &fields[8..] {
            // "[slot->-node]" / "[slot-<-node]": a migration in progress, not ownership.
            if s.starts_with('[') {
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
        if !slots.is_empty() {
            out.push(ClusterMaster {
                id: fields[0].to_owned(),
                addr: format!("{host}:{port}"),
                slots,
            });
        }
    }
    Ok(out)
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
