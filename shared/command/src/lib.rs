//! The table of commands a Redis master can put in its replication stream, and what each
//! means for the sync: what kind of change it is, which of its arguments are keys, and
//! whether it may be split per key. It covers the write commands of Redis 2.8 through 8.x
//! (with the vector-set commands Redis 8 ships), plus the control commands a stream
//! carries (`SELECT`, `MULTI`/`EXEC`, `PING`, `REPLCONF`, scripts, `PUBLISH`).
//!
//! It does not parse or execute commands, and it does not check their syntax beyond what
//! finding the keys needs. Commands it does not know — module commands, anything newer —
//! are not errors: [`lookup`] returns `None` and the caller carries them as opaque
//! commands with no known keys. Read-only commands are left out on purpose, as are
//! `MIGRATE` and `XREADGROUP`, which masters never replicate verbatim (they send `DEL` and
//! `XCLAIM`/`XGROUP SETID` instead).
//!
//! Where those keys live in a Redis Cluster — key slots and the `CLUSTER NODES` topology —
//! is the [`cluster`] module.

pub mod cluster;
mod table;

use std::cmp::Ordering;

/// What a command changes, which decides how the sync must treat it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// Writes keys of the currently selected database.
    Data,
    /// Selects, swaps, flushes or crosses databases (`SELECT`, `SWAPDB`, `FLUSHDB`,
    /// `FLUSHALL`, `MOVE`, `COPY … DB`, `SFLUSH`): database selection and mapping apply.
    Database,
    /// `EVAL` and friends, `SCRIPT`: sent verbatim by masters older than 5.0.
    Script,
    /// `FCALL` and friends, `FUNCTION`.
    Function,
    /// `PUBLISH`, `SPUBLISH`: no key, a message.
    PubSub,
    /// `MULTI`, `EXEC`: the bounds of an atomic unit.
    Transaction,
    /// `PING`, `REPLCONF`: link housekeeping that still counts toward the offset.
    Replication,
}

/// Where a command's keys are among its arguments (the command name not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySpec {
    /// No keys.
    None,
    /// The first argument.
    First,
    /// The first two (source and destination: `RENAME`, `LMOVE`, `COPY`, …).
    FirstTwo,
    /// Every argument from this index on (`DEL`, `PFMERGE`, `BITOP op dest src…`).
    AllFrom(usize),
    /// Every argument but the last, which is a timeout (`BLPOP`).
    AllButLast,
    /// Alternating key and value from the first argument (`MSET`).
    Pairs,
    /// A count of keys at index `at`, then that many keys, each followed by `step - 1`
    /// values; with `dest`, argument 0 is a key as well (`ZUNIONSTORE dest numkeys …`).
    NumKeys { at: usize, step: usize, dest: bool },
    /// A subcommand, then the key (`XGROUP CREATE key …`); `HELP` has none.
    AfterSubcommand,
    /// `SORT key … [STORE dest]`: the key, and the destination when there is one.
    Sort,
    /// `GEORADIUS key … [STORE dest] [STOREDIST dest]`: the key, and the destination
    /// named in the options that start at `options_from`.
    GeoRadius { options_from: usize },
}

/// One command of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CommandSpec {
    /// Upper case, as Redis documents it.
    pub name: &'static str,
    pub kind: CommandKind,
    pub keys: KeySpec,
}

/// Arguments that do not fit the command's shape. A master only replicates commands that
/// ran, so seeing one of these means the stream was misread.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("{command} needs at least {needed} arguments, got {got}")]
    TooFewArguments {
        command: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("{command}: key count {value:?} at argument {index} is not a non-negative integer")]
    BadNumKeys {
        command: &'static str,
        index: usize,
        value: String,
    },
    #[error(
        "{command}: key count {numkeys} at argument {index} needs {needed} arguments after it, only {available} follow"
    )]
    NumKeysTooLarge {
        command: &'static str,
        index: usize,
        numkeys: u64,
        needed: u64,
        available: usize,
    },
    #[error("{command} takes keys and values in pairs, got {got} arguments")]
    UnpairedArguments { command: &'static str, got: usize },
}

/// Finds a command by name, in any letter case. `None` for commands outside the table,
/// which the caller should carry as opaque, not reject.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    table::COMMANDS
        .binary_search_by(|spec| cmp_upper(spec.name.as_bytes(), name))
        .ok()
        .map(|i| &table::COMMANDS[i])
}

/// Every command in the table, sorted by name.
pub fn commands() -> &'static [CommandSpec] {
    table::COMMANDS
}

/// Compares an upper-case table name with a name in any case, without allocating.
fn cmp_upper(table_name: &[u8], name: &[u8]) -> Ordering {
    table_name
        .iter()
        .copied()
        .cmp(name.iter().map(u8::to_ascii_uppercase))
}

/// Indexes into `args` (the arguments after the command name) of the key arguments, in
/// the order they appear. A key named twice appears twice.
pub fn key_indexes<A: AsRef<[u8]>>(
    spec: &CommandSpec,
    args: &[A],
) -> Result<Vec<usize>, CommandError> {
    let command = spec.name;
    let at_least = |needed: usize| {
        if args.len() < needed {
            Err(CommandError::TooFewArguments {
                command,
                needed,
                got: args.len(),
            })
        } else {
            Ok(())
        }
    };
    match spec.keys {
        KeySpec::None => Ok(Vec::new()),
        KeySpec::First => {
            at_least(1)?;
            Ok(vec![0])
        }
        KeySpec::FirstTwo => {
            at_least(2)?;
            Ok(vec![0, 1])
        }
        KeySpec::AllFrom(from) => {
            at_least(from + 1)?;
            Ok((from..args.len()).collect())
        }
        KeySpec::AllButLast => {
            at_least(2)?;
            Ok((0..args.len() - 1).collect())
        }
        KeySpec::Pairs => {
            at_least(2)?;
            if !args.len().is_multiple_of(2) {
                return Err(CommandError::UnpairedArguments {
                    command,
                    got: args.len(),
                });
            }
            Ok((0..args.len()).step_by(2).collect())
        }
        KeySpec::NumKeys { at, step, dest } => num_keys(command, args, at, step, dest),
        KeySpec::AfterSubcommand => {
            at_least(1)?;
            if args[0].as_ref().eq_ignore_ascii_case(b"HELP") {
                return Ok(Vec::new());
            }
            at_least(2)?;
            Ok(vec![1])
        }
        KeySpec::Sort => {
            at_least(1)?;
            Ok(with_store(sort_store(args)))
        }
        KeySpec::GeoRadius { options_from } => {
            at_least(options_from)?;
            Ok(with_store(georadius_store(args, options_from)))
        }
    }
}

fn num_keys<A: AsRef<[u8]>>(
    command: &'static str,
    args: &[A],
    at: usize,
    step: usize,
    dest: bool,
) -> Result<Vec<usize>, CommandError> {
    let Some(raw) = args.get(at) else {
        return Err(CommandError::TooFewArguments {
            command,
            needed: at + 1,
            got: args.len(),
        });
    };
    let raw = raw.as_ref();
    let numkeys = parse_count(raw).ok_or_else(|| CommandError::BadNumKeys {
        command,
        index: at,
        value: String::from_utf8_lossy(&raw[..raw.len().min(64)]).into_owned(),
    })?;
    let available = args.len() - at - 1;
    // Checked in u64 so that a huge claim cannot overflow before it is compared.
    let needed = numkeys.saturating_mul(step as u64);
    if needed > available as u64 {
        return Err(CommandError::NumKeysTooLarge {
            command,
            index: at,
            numkeys,
            needed,
            available,
        });
    }
    let first = at + 1;
    let mut keys = Vec::with_capacity(usize::from(dest) + needed as usize / step.max(1));
    if dest {
        keys.push(0);
    }
    keys.extend((first..first + needed as usize).step_by(step.max(1)));
    Ok(keys)
}

/// SORT's destination, parsed the way `SORT` itself reads its options so that a pattern
/// or a key that happens to be called "store" is not taken for the option. The last
/// `STORE` wins, as in Redis.
fn sort_store<A: AsRef<[u8]>>(args: &[A]) -> Option<usize> {
    let mut store = None;
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].as_ref();
        let left = args.len() - i - 1;
        if arg.eq_ignore_ascii_case(b"LIMIT") && left >= 2 {
            i += 3;
        } else if arg.eq_ignore_ascii_case(b"STORE") && left >= 1 {
            store = Some(i + 1);
            i += 2;
        } else if (arg.eq_ignore_ascii_case(b"BY") || arg.eq_ignore_ascii_case(b"GET")) && left >= 1
        {
            i += 2;
        } else {
            i += 1;
        }
    }
    store
}

/// GEORADIUS's destination: `STORE` or `STOREDIST` with its key, skipping `COUNT`'s value;
/// the last one wins, as in Redis.
fn georadius_store<A: AsRef<[u8]>>(args: &[A], options_from: usize) -> Option<usize> {
    let mut store = None;
    let mut i = options_from;
    while i < args.len() {
        let arg = args[i].as_ref();
        let has_value = i + 1 < args.len();
        if (arg.eq_ignore_ascii_case(b"STORE") || arg.eq_ignore_ascii_case(b"STOREDIST"))
            && has_value
        {
            store = Some(i + 1);
            i += 2;
        } else if arg.eq_ignore_ascii_case(b"COUNT") && has_value {
            i += 2;
        } else {
            i += 1;
        }
    }
    store
}

fn with_store(store: Option<usize>) -> Vec<usize> {
    let mut keys = vec![0];
    keys.extend(store);
    keys
}

/// A non-negative decimal without sign, spaces or leading zeros, as Redis writes counts.
fn parse_count(s: &[u8]) -> Option<u64> {
    match s {
        [] => None,
        [b'0'] => Some(0),
        [b'0', ..] => None,
        _ => s.iter().try_fold(0u64, |acc, &d| {
            if d.is_ascii_digit() {
                acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            } else {
                None
            }
        }),
    }
}

/// Whether running the command once per key (or per key/value pair) has the same effect
/// as running it whole, which is what a cluster destination needs when the keys live on
/// different masters. True only for `MSET`, `DEL` and `UNLINK`; `MSETNX` (all or none),
/// `RENAME`, the `*STORE` commands and the rest lose their meaning when split.
pub fn splittable_by_key(spec: &CommandSpec) -> bool {
    matches!(spec.name, "MSET" | "DEL" | "UNLINK")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key indexes of a command written as a space-separated line.
    fn keys(line: &str) -> Result<Vec<usize>, CommandError> {
        let mut words = line.split(' ');
        let name = words.next().unwrap_or_default();
        let spec = lookup(name.as_bytes()).unwrap_or_else(|| panic!("{name} not in the table"));
        let args: Vec<&str> = words.collect();
        key_indexes(spec, &args)
    }

    fn kind(name: &str) -> CommandKind {
        lookup(name.as_bytes()).expect(name).kind
    }

    #[test]
    fn lookup_ignores_case() {
        for name in ["set", "SET", "SeT"] {
            assert_eq!(lookup(name.as_bytes()).map(|s| s.name), Some("SET"));
        }
        assert_eq!(
            lookup(b"restore-asking").map(|s| s.name),
            Some("RESTORE-ASKING")
        );
        assert_eq!(lookup(b"Eval_Ro").map(|s| s.name), Some("EVAL_RO"));
    }

    #[test]
    fn unknown_and_read_only_commands_are_not_in_the_table() {
        for name in [
            &b"GET"[..],
            b"LPOS",
            b"EXISTS",
            b"MGET",
            b"SORT_RO",
            b"BITFIELD_RO",
            b"MIGRATE",
            b"XREADGROUP",
            b"JSON.SET",
            b"",
            b"SETX",
            b"SE",
            b"\xffSET",
        ] {
            assert_eq!(lookup(name), None, "{:?}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn the_table_is_sorted_upper_case_and_every_entry_is_found() {
        for pair in commands().windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} / {}",
                pair[0].name,
                pair[1].name
            );
        }
        for spec in commands() {
            assert_eq!(spec.name, spec.name.to_ascii_uppercase());
            assert_eq!(lookup(spec.name.as_bytes()), Some(spec));
            assert_eq!(
                lookup(spec.name.to_ascii_lowercase().as_bytes()),
                Some(spec)
            );
        }
    }

    #[test]
    fn covers_what_masters_replicate() {
        let names = "APPEND BITFIELD BITOP BLMOVE BRPOPLPUSH COPY DECR DECRBY DEL DELEX EVAL \
            EVALSHA EVALSHA_RO EVAL_RO EXEC EXPIRE EXPIREAT FCALL FCALL_RO FLUSHALL FLUSHDB \
            FUNCTION GEOADD GEORADIUS GEOSEARCHSTORE GETDEL GETEX GETSET HDEL HEXPIRE HEXPIREAT \
            HGETDEL HGETEX HINCRBY HINCRBYFLOAT HMSET HPERSIST HPEXPIRE HPEXPIREAT HSET HSETEX \
            HSETNX INCR INCRBY INCRBYFLOAT LINSERT LMOVE LMPOP LPOP LPUSH LREM LSET LTRIM MOVE \
            MSET MSETEX MSETNX MULTI PERSIST PEXPIRE PEXPIREAT PFADD PFCOUNT PFMERGE PING \
            PSETEX PUBLISH RENAME RENAMENX REPLCONF RESTORE RESTORE-ASKING RPOP RPOPLPUSH RPUSH \
            SADD SCRIPT SDIFFSTORE SELECT SET SETBIT SETEX SETNX SETRANGE SINTERSTORE SMOVE SORT \
            SPOP SPUBLISH SREM SUNIONSTORE SWAPDB UNLINK XACK XACKDEL XADD XAUTOCLAIM XCLAIM \
            XDEL XDELEX XGROUP XSETID XTRIM ZADD ZDIFFSTORE ZINCRBY ZINTERSTORE ZMPOP ZPOPMIN \
            ZRANGESTORE ZREM ZREMRANGEBYSCORE ZUNIONSTORE";
        for name in names.split_whitespace() {
            assert!(lookup(name.as_bytes()).is_some(), "{name} missing");
        }
    }

    #[test]
    fn kinds() {
        for name in ["SELECT", "SWAPDB", "FLUSHDB", "FLUSHALL", "MOVE", "COPY"] {
            assert_eq!(kind(name), CommandKind::Database, "{name}");
        }
        for name in ["EVAL", "EVALSHA", "EVAL_RO", "SCRIPT"] {
            assert_eq!(kind(name), CommandKind::Script, "{name}");
        }
        for name in ["FCALL", "FCALL_RO", "FUNCTION"] {
            assert_eq!(kind(name), CommandKind::Function, "{name}");
        }
        assert_eq!(kind("PUBLISH"), CommandKind::PubSub);
        assert_eq!(kind("MULTI"), CommandKind::Transaction);
        assert_eq!(kind("EXEC"), CommandKind::Transaction);
        assert_eq!(kind("PING"), CommandKind::Replication);
        assert_eq!(kind("REPLCONF"), CommandKind::Replication);
        assert_eq!(kind("SET"), CommandKind::Data);
        assert_eq!(kind("PFCOUNT"), CommandKind::Data);
    }

    #[test]
    fn single_key_commands() {
        assert_eq!(keys("SET k v PXAT 1700000000000 KEEPTTL"), Ok(vec![0]));
        assert_eq!(keys("HSETEX h FNX EX 10 FIELDS 1 f v"), Ok(vec![0]));
        assert_eq!(keys("RESTORE-ASKING k 0 payload REPLACE"), Ok(vec![0]));
        assert_eq!(keys("MOVE k 3"), Ok(vec![0]));
        assert_eq!(
            keys("SET"),
            Err(CommandError::TooFewArguments {
                command: "SET",
                needed: 1,
                got: 0
            })
        );
    }

    #[test]
    fn source_and_destination_commands() {
        for line in [
            "RENAME a b",
            "RENAMENX a b",
            "RPOPLPUSH a b",
            "BRPOPLPUSH a b 0",
            "LMOVE a b LEFT RIGHT",
            "BLMOVE a b LEFT RIGHT 0",
            "SMOVE a b m",
            "COPY a b DB 2 REPLACE",
            "ZRANGESTORE a b 0 -1",
            "GEOSEARCHSTORE a b FROMMEMBER m BYRADIUS 1 km",
        ] {
            assert_eq!(keys(line), Ok(vec![0, 1]), "{line}");
        }
        assert!(matches!(
            keys("RENAME a"),
            Err(CommandError::TooFewArguments { needed: 2, .. })
        ));
    }

    #[test]
    fn all_arguments_are_keys() {
        assert_eq!(keys("DEL a b c"), Ok(vec![0, 1, 2]));
        assert_eq!(keys("UNLINK a"), Ok(vec![0]));
        assert_eq!(keys("PFMERGE d s1 s2"), Ok(vec![0, 1, 2]));
        assert_eq!(keys("PFCOUNT a b"), Ok(vec![0, 1]));
        assert_eq!(keys("SINTERSTORE d a b"), Ok(vec![0, 1, 2]));
        assert_eq!(keys("SUNIONSTORE d a"), Ok(vec![0, 1]));
        assert_eq!(keys("SDIFFSTORE d a b c"), Ok(vec![0, 1, 2, 3]));
        assert_eq!(keys("BITOP AND dest a b"), Ok(vec![1, 2, 3]));
        assert!(matches!(
            keys("DEL"),
            Err(CommandError::TooFewArguments { .. })
        ));
    }

    #[test]
    fn blocking_pops_end_with_a_timeout() {
        assert_eq!(keys("BLPOP a b 0"), Ok(vec![0, 1]));
        assert_eq!(keys("BZPOPMIN z 1.5"), Ok(vec![0]));
        assert!(matches!(
            keys("BRPOP 0"),
            Err(CommandError::TooFewArguments { .. })
        ));
    }

    #[test]
    fn key_value_pairs() {
        assert_eq!(keys("MSET a 1 b 2 c 3"), Ok(vec![0, 2, 4]));
        assert_eq!(keys("MSETNX a 1"), Ok(vec![0]));
        assert_eq!(
            keys("MSET a 1 b"),
            Err(CommandError::UnpairedArguments {
                command: "MSET",
                got: 3
            })
        );
    }

    #[test]
    fn counted_keys() {
        assert_eq!(keys("EVAL return 2 k1 k2 arg"), Ok(vec![2, 3]));
        assert_eq!(keys("EVAL return 0"), Ok(vec![]));
        assert_eq!(keys("evalsha abc 1 k"), Ok(vec![2]));
        assert_eq!(keys("FCALL f 1 k arg"), Ok(vec![2]));
        assert_eq!(
            keys("ZUNIONSTORE d 2 a b WEIGHTS 1 2 AGGREGATE MAX"),
            Ok(vec![0, 2, 3])
        );
        assert_eq!(keys("ZINTERSTORE d 1 a"), Ok(vec![0, 2]));
        assert_eq!(keys("ZDIFFSTORE d 2 a b"), Ok(vec![0, 2, 3]));
        assert_eq!(keys("LMPOP 2 a b LEFT COUNT 3"), Ok(vec![1, 2]));
        assert_eq!(keys("ZMPOP 1 z MIN"), Ok(vec![1]));
        assert_eq!(keys("BLMPOP 0 2 a b RIGHT"), Ok(vec![2, 3]));
        assert_eq!(keys("BZMPOP 0.5 1 z MAX"), Ok(vec![2]));
        assert_eq!(keys("MSETEX 2 a 1 b 2 EX 10"), Ok(vec![1, 3]));
    }

    #[test]
    fn bad_key_counts() {
        for (line, value) in [
            ("EVAL s abc k", "abc"),
            ("EVAL s -1", "-1"),
            ("EVAL s 01 k", "01"),
            (
                "EVAL s 99999999999999999999999 k",
                "99999999999999999999999",
            ),
            ("ZUNIONSTORE d x a", "x"),
        ] {
            match keys(line) {
                Err(CommandError::BadNumKeys { value: v, .. }) => assert_eq!(v, value, "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        assert_eq!(
            keys("EVAL s 3 k1 k2"),
            Err(CommandError::NumKeysTooLarge {
                command: "EVAL",
                index: 1,
                numkeys: 3,
                needed: 3,
                available: 2
            })
        );
        // Pairs: two keys need four arguments.
        assert!(matches!(
            keys("MSETEX 2 a 1 b"),
            Err(CommandError::NumKeysTooLarge {
                needed: 4,
                available: 3,
                ..
            })
        ));
        assert!(matches!(
            keys("EVAL s"),
            Err(CommandError::TooFewArguments {
                needed: 2,
                got: 1,
                ..
            })
        ));
        let e = keys("EVAL s 18446744073709551615 k").unwrap_err();
        assert!(e.to_string().contains("18446744073709551615"), "{e}");
    }

    #[test]
    fn stream_group_subcommands() {
        assert_eq!(keys("XGROUP CREATE s g $ MKSTREAM"), Ok(vec![1]));
        assert_eq!(keys("XGROUP DELCONSUMER s g c"), Ok(vec![1]));
        assert_eq!(keys("XGROUP help"), Ok(vec![]));
        assert!(matches!(
            keys("XGROUP CREATE"),
            Err(CommandError::TooFewArguments { needed: 2, .. })
        ));
    }

    #[test]
    fn sort_store_destination() {
        assert_eq!(keys("SORT k"), Ok(vec![0]));
        assert_eq!(keys("SORT k BY w_* GET # ALPHA STORE out"), Ok(vec![0, 7]));
        assert_eq!(keys("sort k limit 0 10 store out"), Ok(vec![0, 5]));
        // Patterns that happen to read "store" are not the option.
        assert_eq!(keys("SORT k BY store GET store"), Ok(vec![0]));
        // Nor is a LIMIT value, and the last STORE wins.
        assert_eq!(keys("SORT k STORE a LIMIT 0 1 STORE b"), Ok(vec![0, 7]));
        assert_eq!(keys("SORT k STORE"), Ok(vec![0]));
    }

    #[test]
    fn georadius_store_destination() {
        assert_eq!(keys("GEORADIUS k 15 37 200 km"), Ok(vec![0]));
        assert_eq!(
            keys("GEORADIUS k 15 37 200 km COUNT 5 ASC STORE dst"),
            Ok(vec![0, 9])
        );
        // A member called "store" is not the option.
        assert_eq!(
            keys("GEORADIUSBYMEMBER k store 100 km STOREDIST d"),
            Ok(vec![0, 5])
        );
        assert!(matches!(
            keys("GEORADIUS k 15 37"),
            Err(CommandError::TooFewArguments { needed: 5, .. })
        ));
    }

    #[test]
    fn commands_without_keys() {
        assert_eq!(keys("SELECT 0"), Ok(vec![]));
        assert_eq!(keys("SWAPDB 0 1"), Ok(vec![]));
        assert_eq!(keys("PUBLISH chan msg"), Ok(vec![]));
        assert_eq!(keys("FUNCTION FLUSH"), Ok(vec![]));
        assert_eq!(keys("PING"), Ok(vec![]));
    }

    #[test]
    fn accepts_any_byte_arguments() {
        let spec = lookup(b"DEL").unwrap();
        let args = vec![b"a\xff".to_vec(), b"b".to_vec()];
        assert_eq!(key_indexes(spec, &args), Ok(vec![0, 1]));
    }

    #[test]
    fn only_mset_del_unlink_split_per_key() {
        for name in ["MSET", "DEL", "UNLINK"] {
            assert!(
                splittable_by_key(lookup(name.as_bytes()).unwrap()),
                "{name}"
            );
        }
        for name in [
            "MSETNX",
            "MSETEX",
            "RENAME",
            "SUNIONSTORE",
            "PFMERGE",
            "PFCOUNT",
            "BITOP",
            "EVAL",
        ] {
            assert!(
                !splittable_by_key(lookup(name.as_bytes()).unwrap()),
                "{name}"
            );
        }
    }
}
