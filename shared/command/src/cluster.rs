//! Redis Cluster addressing as every part of the sync sees it: which slot a key hashes
//! to, and what a node's `CLUSTER NODES` reply says about the masters, their slots and
//! slots in the middle of a resharding.
//!
//! ingest, apply and the test harness each route keys and read topologies; they must
//! agree with Redis and with each other to the bit, or a write lands on a master that
//! answers MOVED, or a replica follows the wrong shard. Hence one implementation here.
//!
//! The parser is pure (text in, typed nodes out) and reads every format from Redis 3.0
//! on. It never panics on what a server sends: a line it cannot read is a
//! [`NodeLineError`], and [`parse_nodes`] names the line, so each caller decides whether
//! one bad line spoils the whole reply.

use std::fmt;

/// Hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

// Built at compile time: the hot path (every replicated key) then costs one lookup a byte.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster hashes
/// keys with.
pub fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ b)]
    })
}

/// The slot of `key`. Keys that share a non-empty hash tag — the bytes between the first
/// `{` and the first `}` after it — share a slot; any other key hashes whole, as in Redis.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % SLOTS
}

fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    Some(&rest[..close]).filter(|tag| !tag.is_empty())
}

/// `host:port` as a client dials it. IPv6 hosts get brackets: Redis prints them bare.
pub fn node_address(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
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

    /// How many slots the range holds.
    pub fn count(&self) -> usize {
        usize::from(self.end - self.start) + 1
    }
}

impl fmt::Display for SlotRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Why a line of `CLUSTER NODES` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeLineError {
    /// Every format since 3.0 has at least 8 fields before the slots.
    #[error("{0} fields, fewer than 8")]
    TooFewFields(usize),
    /// The address of a node that is not failed has no usable `host:port`.
    #[error("address {0:?} has no port")]
    BadAddress(String),
    /// A slot, slot range or `[slot->-id]` / `[slot-<-id]` marker that is not one.
    #[error("slot {0:?} not understood")]
    BadSlot(String),
}

/// Why a `CLUSTER NODES` reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CLUSTER NODES line {line}: {reason}")]
pub struct NodesError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: NodeLineError,
}

/// One line of `CLUSTER NODES`:
/// `<id> <ip:port[@cport][,hostname]> <flags> <master id|-> <ping> <pong> <epoch> <link> <slot>...`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// Node id.
    pub id: String,
    /// `host:port` for clients; empty for a failed node that has no address.
    pub addr: String,
    /// Every flag as Redis printed it (`myself`, `master`, `slave`, `fail?`, ...).
    pub flags: Vec<String>,
    /// Flagged `master`.
    pub master: bool,
    /// Flagged `slave` (or `replica`, should a server spell it so).
    pub replica: bool,
    /// The node that answered.
    pub myself: bool,
    /// Flagged `fail`, `handshake` or `noaddr`: no client can use it. A `fail?` node is
    /// only suspected by the node that answered and still counts as up.
    pub failed: bool,
    /// For a replica: the id of its master.
    pub master_id: Option<String>,
    /// Config epoch: the newest claim on a slot wins.
    pub config_epoch: u64,
    /// The answering node's link to it is up.
    pub connected: bool,
    /// Slots owned.
    pub slots: Vec<SlotRange>,
    /// `[slot->-target]`: slots this node is migrating away, with the target's id. Only
    /// the migrating node itself shows them (on its `myself` line).
    pub migrating: Vec<(u16, String)>,
    /// `[slot-<-source]`: slots this node is importing, with the source's id.
    pub importing: Vec<(u16, String)>,
}

impl ClusterNode {
    /// Reads one line. A node that does not know its own IP yet prints an empty host;
    /// `connected_host`, the host the reply came from, stands in for it.
    pub fn parse(line: &str, connected_host: &str) -> Result<Self, NodeLineError> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [
            id,
            address,
            flags,
            master_id,
            _ping_sent,
            _pong_received,
            config_epoch,
            link,
            slot_fields @ ..,
        ] = fields.as_slice()
        else {
            return Err(NodeLineError::TooFewFields(fields.len()));
        };
        let flags: Vec<String> = flags.split(',').map(str::to_owned).collect();
        let has = |flag: &str| flags.iter().any(|f| f == flag);
        let failed = has("fail") || has("handshake") || has("noaddr");
        let addr = match client_address(address, connected_host) {
            Some(addr) => addr,
            // A node that left or was never reached (`:0@0 ... noaddr`) has no address
            // but still tells which slots are unserved.
            None if failed => String::new(),
            None => return Err(NodeLineError::BadAddress((*address).to_owned())),
        };
        let mut slots = Vec::new();
        let mut migrating = Vec::new();
        let mut importing = Vec::new();
        for &field in slot_fields {
            let bad = || NodeLineError::BadSlot(field.to_owned());
            if let Some(marker) = field.strip_prefix('[').and_then(|m| m.strip_suffix(']')) {
                if let Some((slot, target)) = marker.split_once("->-") {
                    migrating.push((parse_slot(slot).ok_or_else(bad)?, target.to_owned()));
                } else if let Some((slot, source)) = marker.split_once("-<-") {
                    importing.push((parse_slot(slot).ok_or_else(bad)?, source.to_owned()));
                }
                continue;
            }
            let (start, end) = field.split_once('-').unwrap_or((field, field));
            let range = SlotRange {
                start: parse_slot(start).ok_or_else(bad)?,
                end: parse_slot(end).ok_or_else(bad)?,
            };
            if range.start > range.end {
                return Err(bad());
            }
            slots.push(range);
        }
        Ok(Self {
            id: (*id).to_owned(),
            addr,
            master: has("master"),
            replica: has("slave") || has("replica"),
            myself: has("myself"),
            failed,
            flags,
            master_id: Some(*master_id).filter(|m| *m != "-").map(str::to_owned),
            // Only ranks competing claims on a slot: an unreadable epoch ranks lowest
            // rather than spoiling the whole reply.
            config_epoch: config_epoch.parse().unwrap_or(0),
            connected: *link == "connected",
            slots,
            migrating,
            importing,
        })
    }

    /// Whether Redis printed `flag` among the node's flags.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// A master clients can reach that owns slots: where keys are routed.
    pub fn serves_slots(&self) -> bool {
        self.master && !self.failed && !self.slots.is_empty()
    }

    /// How many slots the node owns.
    pub fn slot_count(&self) -> usize {
        self.slots.iter().map(SlotRange::count).sum()
    }

    /// How many of `slots` the node owns.
    pub fn overlap(&self, slots: &[SlotRange]) -> usize {
        slots
            .iter()
            .flat_map(|r| self.slots.iter().map(move |o| (r, o)))
            .map(|(r, o)| {
                let (a, b) = (r.start.max(o.start), r.end.min(o.end));
                if a <= b { usize::from(b - a) + 1 } else { 0 }
            })
            .sum()
    }
}

/// Reads a whole `CLUSTER NODES` reply, one node a line (blank lines skipped);
/// `connected_host` as in [`ClusterNode::parse`].
pub fn parse_nodes(text: &str, connected_host: &str) -> Result<Vec<ClusterNode>, NodesError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            ClusterNode::parse(line, connected_host).map_err(|reason| NodesError {
                line: i + 1,
                reason,
            })
        })
        .collect()
}

/// `ip:port` (3.x), `ip:port@cport` (4.0+) or `ip:port@cport,hostname` (7.0+).
fn client_address(field: &str, connected_host: &str) -> Option<String> {
    let host_port = field.split(['@', ',']).next()?;
    let (host, port) = host_port.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|&p| p > 0)?;
    let host = if host.is_empty() {
        connected_host
    } else {
        host
    };
    Some(node_address(host, port))
}

fn parse_slot(s: &str) -> Option<u16> {
    s.parse::<u16>().ok().filter(|&n| n < SLOTS)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn crc16_check_value() {
        // The standard check input of CRC-16/XMODEM.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn key_slots_match_cluster_keyslot() {
        // Every value as `CLUSTER KEYSLOT` of a Redis 7.0 server answers it.
        for (key, slot) in [
            (&b"foo"[..], 12182),
            (b"bar", 5061),
            (b"", 0),
            (b"123456789", 12739),
            (b"{user1000}.following", 3443),
            (b"{user1000}.followers", 3443),
            (b"user1000", 3443),
            // An empty tag does not count: the whole key is hashed.
            (b"{}", 15257),
            (b"foo{}{bar}", 8363),
            // Unbalanced braces: no tag.
            (b"{", 4092),
            (b"}", 12090),
            (b"{a", 10276),
            // The tag ends at the first `}` after the first `{`.
            (b"foo{{bar}}zap", 4015),
            (b"foo{bar}{zap}", 5061),
            (b"}{a}", 15495),
            (b"a", 15495),
        ] {
            assert_eq!(key_slot(key), slot, "{:?}", String::from_utf8_lossy(key));
        }
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn addresses_for_clients() {
        assert_eq!(node_address("10.0.0.1", 7000), "10.0.0.1:7000");
        assert_eq!(node_address("::1", 7000), "[::1]:7000");
        assert_eq!(node_address("[::1]", 7000), "[::1]:7000");
        assert_eq!(node_address("redis.example", 7000), "redis.example:7000");
    }

    // Replies of real servers (3.2.6, 5.0.6 and 7.0) while slot 93 moved from the 7.0
    // node 9ca9... to 13e7...; the 7.0 reply's replica line is added.
    const REDIS_3_2: &str = "\
33d6b82dbd9b08e50efb5f5d496866c298483f90 :27125 myself,master - 0 0 0 connected 0-2 5
a1a898ab757f4c2b1af3e1dbc987a69ed9c10ad8 127.0.0.1:27123 handshake - 1795623582220 0 0 disconnected
";
    const REDIS_5_0: &str = "\
9ca93394161f7184e933cd0a32393f53c88d53da 127.0.0.1:27123@37123 master - 0 1795623582958 0 connected 3-4 6-8191
4a612a307540b268433ec7ff9bc347bfee5a8085 127.0.0.1:27126@37126 myself,master - 0 0 2 connected 0-2 5
";
    const REDIS_7_0: &str = "\
9ca93394161f7184e933cd0a32393f53c88d53da 127.0.0.1:27123@37123 myself,master - 0 0 0 connected 0-8191 [93->-13e797c98c351c047d4eff032c09d49b57950bf2]
13e797c98c351c047d4eff032c09d49b57950bf2 127.0.0.1:27124@37124,node-b.example master - 0 1795623580558 1 connected 8192-16383
4a612a307540b268433ec7ff9bc347bfee5a8085 127.0.0.1:27126@37126 master,fail - 1795623587509 1795623584588 2 disconnected
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:27127@37127 slave 9ca93394161f7184e933cd0a32393f53c88d53da 0 1426238317239 4 connected
";
    // The importing side's own line, from its reply.
    const REDIS_7_0_IMPORTING: &str = "13e797c98c351c047d4eff032c09d49b57950bf2 127.0.0.1:27124@37124,node-b.example myself,master - 0 0 1 connected 8192-16383 [93-<-9ca93394161f7184e933cd0a32393f53c88d53da]";

    fn range(start: u16, end: u16) -> SlotRange {
        SlotRange { start, end }
    }

    #[test]
    fn parses_3_2_without_cluster_bus_port() {
        let nodes = parse_nodes(REDIS_3_2, "10.0.0.1").unwrap();
        assert_eq!(nodes.len(), 2);
        let me = &nodes[0];
        // No own IP yet: the host we reached stands in.
        assert_eq!(me.addr, "10.0.0.1:27125");
        assert!(me.myself && me.master && !me.replica && !me.failed && me.connected);
        assert_eq!(me.slots, vec![range(0, 2), range(5, 5)]);
        assert_eq!(me.slot_count(), 4);
        assert!(me.serves_slots());
        let handshake = &nodes[1];
        assert_eq!(handshake.addr, "127.0.0.1:27123");
        assert!(handshake.failed && !handshake.master && !handshake.connected);
        assert!(handshake.has_flag("handshake") && !handshake.serves_slots());
    }

    #[test]
    fn parses_4_0_and_later_with_cluster_bus_port() {
        let nodes = parse_nodes(REDIS_5_0, "10.0.0.1").unwrap();
        assert_eq!(nodes[0].addr, "127.0.0.1:27123");
        assert_eq!(nodes[0].slots, vec![range(3, 4), range(6, 8191)]);
        assert_eq!(nodes[0].config_epoch, 0);
        assert_eq!(nodes[1].config_epoch, 2);
        assert_eq!(nodes[1].overlap(&[range(0, 10), range(5000, 6000)]), 4);
        assert_eq!(
            nodes[0].overlap(&[range(0, 10), range(5000, 6000)]),
            2 + 5 + 1001
        );
    }

    #[test]
    fn parses_7_0_hostnames_and_resharding_markers() {
        let nodes = parse_nodes(REDIS_7_0, "10.0.0.1").unwrap();
        let [source, target, failed, replica] = nodes.as_slice() else {
            panic!("{nodes:?}");
        };
        assert_eq!(source.slots, vec![range(0, 8191)]);
        assert_eq!(
            source.migrating,
            vec![(93, "13e797c98c351c047d4eff032c09d49b57950bf2".to_owned())]
        );
        assert!(source.importing.is_empty());
        assert_eq!(target.addr, "127.0.0.1:27124");
        assert!(target.migrating.is_empty() && target.importing.is_empty());
        let importing = ClusterNode::parse(REDIS_7_0_IMPORTING, "h").unwrap();
        assert_eq!(
            importing.importing,
            vec![(93, "9ca93394161f7184e933cd0a32393f53c88d53da".to_owned())]
        );
        assert_eq!(importing.slots, vec![range(8192, 16383)]);
        assert!(failed.master && failed.failed && !failed.connected);
        assert!(!failed.serves_slots());
        assert!(replica.replica && !replica.master);
        assert_eq!(replica.master_id.as_deref(), Some(source.id.as_str()));
        assert_eq!(source.master_id, None);
        assert_eq!(
            nodes.iter().filter(|n| n.serves_slots()).count(),
            2,
            "{nodes:?}"
        );
    }

    #[test]
    fn failed_and_suspected_nodes() {
        let noaddr = ClusterNode::parse(
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa :0@0 master,fail,noaddr - 1 1 3 disconnected 100-200",
            "h",
        )
        .unwrap();
        assert!(noaddr.failed && noaddr.addr.is_empty());
        assert_eq!(noaddr.slots, vec![range(100, 200)]);
        assert!(!noaddr.serves_slots());

        let suspected = ClusterNode::parse(
            "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb ::1:7001@17001 master,fail? - 1 1 3 connected 0-16383",
            "h",
        )
        .unwrap();
        assert!(!suspected.failed && suspected.has_flag("fail?"));
        assert_eq!(suspected.addr, "[::1]:7001");
        assert!(suspected.serves_slots());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let line = |rest: &str| format!("a 127.0.0.1:7000 master - 0 0 1 connected {rest}");
        for (text, error) in [
            ("x y".to_owned(), NodeLineError::TooFewFields(2)),
            (
                "a 127.0.0.1:7000 master".to_owned(),
                NodeLineError::TooFewFields(3),
            ),
            (line("16384"), NodeLineError::BadSlot("16384".into())),
            (line("0-99999"), NodeLineError::BadSlot("0-99999".into())),
            (line("10-5"), NodeLineError::BadSlot("10-5".into())),
            (line("-5"), NodeLineError::BadSlot("-5".into())),
            (line("abc"), NodeLineError::BadSlot("abc".into())),
            (line("[x->-b]"), NodeLineError::BadSlot("[x->-b]".into())),
            (
                "a 127.0.0.1 master - 0 0 1 connected".to_owned(),
                NodeLineError::BadAddress("127.0.0.1".into()),
            ),
            (
                "a 127.0.0.1:0@0 master - 0 0 1 connected".to_owned(),
                NodeLineError::BadAddress("127.0.0.1:0@0".into()),
            ),
            (
                "a 127.0.0.1:70000 master - 0 0 1 connected".to_owned(),
                NodeLineError::BadAddress("127.0.0.1:70000".into()),
            ),
        ] {
            assert_eq!(
                ClusterNode::parse(&text, "h"),
                Err(error.clone()),
                "{text:?}"
            );
        }
        let err = parse_nodes(&format!("{}\n\n{}\n", line("0"), line("x")), "h").unwrap_err();
        assert_eq!(err.line, 3);
        assert_eq!(
            err.to_string(),
            "CLUSTER NODES line 3: slot \"x\" not understood"
        );
        assert_eq!(parse_nodes("", "h"), Ok(Vec::new()));
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC*") {
            let _ = parse_nodes(&text, "h");
        }

        #[test]
        fn never_panics_on_near_misses(
            fields in prop::collection::vec(
                prop_oneof![
                    Just("a".to_owned()),
                    Just(":0@0".to_owned()),
                    Just("[::1]:1".to_owned()),
                    Just("master,fail".to_owned()),
                    Just("-".to_owned()),
                    Just("[1->-".to_owned()),
                    Just("[-<-]".to_owned()),
                    "[0-9-]{0,12}",
                    "\\[[0-9]{0,6}(->-|-<-)[a-z]{0,3}\\]",
                ],
                0..14,
            ),
        ) {
            let line = fields.join(" ");
            if let Ok(node) = ClusterNode::parse(&line, "h") {
                prop_assert!(node.slots.iter().all(|r| r.start <= r.end && r.end < SLOTS));
                let _ = node.slot_count();
            }
        }

        #[test]
        fn tagged_keys_share_the_tag_slot(tag in "[^{}]{1,16}", before in ".{0,8}", after in ".{0,8}") {
            prop_assume!(!before.contains('{'));
            let key = format!("{before}{{{tag}}}{after}");
            prop_assert_eq!(key_slot(key.as_bytes()), key_slot(tag.as_bytes()));
        }
    }
}
