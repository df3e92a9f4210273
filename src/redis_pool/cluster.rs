//! Pipelines on a Redis Cluster: split by slot, in order where order matters.
//!
//! The redis crate's cluster client refuses a pipeline whose keys live in several slots, and the cache's
//! pipelines span users (one hash tag per user). [`SlotRouter`] sends the keyed commands of a pipeline as
//! one sub-pipeline per node (the commands of one slot in their order; a node serves a pipeline of
//! single-slot commands of many slots), concurrently, using the slot owners it last read
//! ([`SlotOwners`]). A thousand users' cache writes are then three round trips on three masters, not a
//! thousand messages. A command without a
//! key (PUBLISH, SCRIPT LOAD, PING) or whose keys span slots (MGET, DEL of many users) is a barrier:
//! everything before it completes first, it runs alone (the cluster client routes it, splitting a
//! multi-key command by slot), and what follows waits for it. So a write is in Redis before the
//! announcement that follows it, and a script is loaded before it is called.
//!
//! A sub-pipeline answered with MOVED or ASK (a slot that moved during a resharding) is sent again one
//! command at a time, through the cluster client's own redirection handling, which also refreshes its
//! slot map.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures::future::try_join_all;

use super::redis::{
    self, Cmd, RedisFuture, RedisResult, ServerErrorKind, Value,
    aio::ConnectionLike,
    cluster_async::ClusterConnection,
    cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr},
};

/// Runs pipelines on a cluster connection, split by node (see the module doc).
pub struct SlotRouter {
    conn: ClusterConnection,
    owners: Arc<SlotOwners>,
    /// Set when a redirection shows the owners are stale.
    stale: Arc<AtomicBool>,
}

/// Which master serves each slot, as `CLUSTER SLOTS` said when last read.
#[derive(Debug, Default)]
pub struct SlotOwners {
    /// `(first slot, last slot, master "host:port")`, sorted by first slot.
    ranges: Vec<(u16, u16, String)>,
}

impl SlotOwners {
    /// Reads the owners through the cluster connection.
    pub async fn read(conn: &mut ClusterConnection) -> RedisResult<Self> {
        let reply = conn
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        Ok(Self::parse(reply))
    }

    /// The owners from a `CLUSTER SLOTS` reply (ranges it cannot read are left out).
    fn parse(reply: Value) -> Self {
        let Value::Array(ranges) = reply else {
            return Self::default();
        };
        let mut ranges: Vec<(u16, u16, String)> = ranges
            .into_iter()
            .filter_map(|range| {
                let Value::Array(parts) = range else {
                    return None;
                };
                let start = redis::from_redis_value::<u16>(parts.first()?.clone()).ok()?;
                let end = redis::from_redis_value::<u16>(parts.get(1)?.clone()).ok()?;
                let Value::Array(master) = parts.get(2)? else {
                    return None;
                };
                let host = redis::from_redis_value::<String>(master.first()?.clone()).ok()?;
                let port = redis::from_redis_value::<u16>(master.get(1)?.clone()).ok()?;
                Some((start, end, format!("{host}:{port}")))
            })
            .collect();
        ranges.sort();
        Self { ranges }
    }

    /// The master of `slot`, if known.
    fn owner(&self, slot: u16) -> Option<&str> {
        let at = self.ranges.partition_point(|(start, _, _)| *start <= slot);
        let (start, end, owner) = self.ranges.get(at.checked_sub(1)?)?;
        (*start..=*end).contains(&slot).then_some(owner.as_str())
    }
}

/// The slot owners a cluster connection routes by, read again after a redirection showed them stale.
#[derive(Default)]
pub struct OwnerCache {
    current: std::sync::RwLock<Arc<SlotOwners>>,
    stale: Arc<AtomicBool>,
}

impl OwnerCache {
    /// A router over `conn` with the current owners, read first when there are none or they are stale
    /// (one `CLUSTER SLOTS`; when it fails, the router groups by slot, which is always right).
    pub async fn router(&self, mut conn: ClusterConnection) -> SlotRouter {
        let known = self.current.read().map(|o| o.clone()).unwrap_or_default();
        let owners = if known.ranges.is_empty() || self.stale.swap(false, Ordering::Relaxed) {
            match SlotOwners::read(&mut conn).await {
                Ok(fresh) => {
                    let fresh = Arc::new(fresh);
                    if let Ok(mut current) = self.current.write() {
                        *current = fresh.clone();
                    }
                    fresh
                }
                Err(_) => Arc::new(SlotOwners::default()),
            }
        } else {
            known
        };
        SlotRouter::new(conn, owners, self.stale.clone())
    }
}

/// The hash slot of a key, as Redis computes it: CRC16 (XMODEM) of its hash tag (the part between the
/// first `{` and the next `}`, when not empty) or of the whole key, modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in tagged {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS as u16
}

/// Slots a Redis Cluster has (and that one server's keys are counted in, too).
pub const SLOTS: usize = 16_384;

/// A hash tag of slot `slot`: a key tagged with it lives in that slot, on whichever node owns it (a
/// value kept per slot, such as the cache's epochs, stays beside the keys it speaks for). Found once,
/// by hashing short strings until every slot has one (about 160,000 tries).
pub fn slot_tag(slot: u16) -> &'static str {
    static TAGS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        let mut tags = vec![String::new(); SLOTS];
        let mut left = SLOTS;
        let mut n: u64 = 0;
        while left > 0 {
            let tag = format!("{n:x}");
            let found = &mut tags[usize::from(key_slot(tag.as_bytes()))];
            if found.is_empty() {
                *found = tag;
                left -= 1;
            }
            n += 1;
        }
        tags
    });
    &TAGS[usize::from(slot) % SLOTS]
}

/// Where one command of a pipeline goes.
#[derive(Debug, PartialEq, Eq)]
enum Placement {
    /// Every key in one slot: with the other commands of that slot's node.
    Slot(u16),
    /// No key, or keys in several slots: alone, between barriers.
    Alone,
}

impl SlotRouter {
    pub fn new(conn: ClusterConnection, owners: Arc<SlotOwners>, stale: Arc<AtomicBool>) -> Self {
        Self {
            conn,
            owners,
            stale,
        }
    }

    /// Runs `cmds` and answers one value per command, in their order.
    async fn run(&mut self, cmds: &[&Cmd]) -> RedisResult<Vec<Value>> {
        let mut values = vec![Value::Nil; cmds.len()];
        let mut groups: Vec<(Route, Vec<usize>)> = Vec::new();
        let mut nodes: HashMap<&str, usize> = HashMap::new();
        let mut index = 0;
        while index < cmds.len() {
            match placement(cmds[index]) {
                Placement::Slot(slot) => {
                    // By node when the owner is known (its first slot routes the whole group), else by
                    // slot; a command that reaches the wrong node is answered MOVED and sent again.
                    let group = match self.owners.owner(slot) {
                        Some(node) => *nodes.entry(node).or_insert_with(|| {
                            groups.push((Route::new(slot, SlotAddr::Master), Vec::new()));
                            groups.len() - 1
                        }),
                        None => {
                            let route = Route::new(slot, SlotAddr::Master);
                            match groups.iter().position(|(r, _)| *r == route) {
                                Some(group) => group,
                                None => {
                                    groups.push((route, Vec::new()));
                                    groups.len() - 1
                                }
                            }
                        }
                    };
                    groups[group].1.push(index);
                }
                Placement::Alone => {
                    nodes.clear();
                    self.flush(cmds, &mut groups, &mut values).await?;
                    // Scripts loaded together commute: one round trip for the run of them.
                    let run = if is_script_load(cmds[index]) {
                        cmds[index..]
                            .iter()
                            .take_while(|cmd| is_script_load(cmd))
                            .count()
                    } else {
                        1
                    };
                    let sends = cmds[index..index + run].iter().map(|cmd| {
                        let mut conn = self.conn.clone();
                        async move { conn.req_packed_command(cmd).await }
                    });
                    for (offset, answer) in try_join_all(sends).await?.into_iter().enumerate() {
                        values[index + offset] = answer;
                    }
                    index += run;
                    continue;
                }
            }
            index += 1;
        }
        self.flush(cmds, &mut groups, &mut values).await?;
        Ok(values)
    }

    /// Sends the gathered sub-pipelines, one per slot, concurrently, and places their answers.
    async fn flush(
        &self,
        cmds: &[&Cmd],
        groups: &mut Vec<(Route, Vec<usize>)>,
        values: &mut [Value],
    ) -> RedisResult<()> {
        let sends = groups.drain(..).map(|(route, indices)| {
            let mut conn = self.conn.clone();
            let stale = self.stale.clone();
            let mut sub = redis::pipe();
            for &index in &indices {
                sub.add_command(cmds[index].clone());
            }
            async move {
                let count = indices.len();
                let target = SingleNodeRoutingInfo::SpecificNode(route);
                let mut answers = match conn.route_pipeline(sub, 0, count, target).await {
                    Ok(answers) => answers,
                    // Redirected as a whole (the slot is moving, or moved): each command again, in
                    // order, through the client's redirection handling.
                    Err(err) if err.is_cluster_error() => {
                        stale.store(true, Ordering::Relaxed);
                        let mut answers = Vec::with_capacity(count);
                        for &index in &indices {
                            answers.push(conn.req_packed_command(cmds[index]).await?);
                        }
                        answers
                    }
                    Err(err) => return Err(err),
                };
                if answers.iter().any(is_redirection) {
                    // A slot moved: those commands one at a time (in order), which the client redirects.
                    stale.store(true, Ordering::Relaxed);
                    for (answer, &index) in answers.iter_mut().zip(&indices) {
                        if is_redirection(answer) {
                            *answer = conn.req_packed_command(cmds[index]).await?;
                        }
                    }
                }
                Ok::<_, redis::RedisError>((indices, answers))
            }
        });
        for (indices, answers) in try_join_all(sends).await? {
            for (index, answer) in indices.into_iter().zip(answers) {
                values[index] = answer;
            }
        }
        Ok(())
    }
}

/// Whether an answer is a redirection (the slot is served elsewhere now).
fn is_redirection(value: &Value) -> bool {
    matches!(value, Value::ServerError(err)
        if matches!(err.kind(), Some(ServerErrorKind::Moved | ServerErrorKind::Ask)))
}

impl ConnectionLike for SlotRouter {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.conn.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            if pipeline.is_transaction() {
                // MULTI/EXEC needs one slot and one node; nothing here sends one.
                return self.conn.req_packed_commands(pipeline, offset, count).await;
            }
            let cmds: Vec<&Cmd> = pipeline.cmd_iter().skip(offset).take(count).collect();
            self.run(&cmds).await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// Whether `cmd` is `SCRIPT LOAD` (sent to every node; loads of different scripts commute).
fn is_script_load(cmd: &Cmd) -> bool {
    let args = args(cmd);
    args.len() >= 2
        && args[0].eq_ignore_ascii_case(b"SCRIPT")
        && args[1].eq_ignore_ascii_case(b"LOAD")
}

/// The command's name and arguments as bytes.
fn args(cmd: &Cmd) -> Vec<&[u8]> {
    cmd.args_iter()
        .filter_map(|arg| match arg {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect()
}

/// The keys of the commands this service sends (see the module doc): the positions Redis's command
/// table gives them. A command not listed here takes its first argument as its one key.
fn keys<'a>(args: &[&'a [u8]]) -> Option<Vec<&'a [u8]>> {
    let name = args.first()?.to_ascii_uppercase();
    let rest = &args[1..];
    match name.as_slice() {
        b"PUBLISH" | b"SPUBLISH" | b"PING" | b"SCRIPT" | b"INFO" | b"TIME" | b"ECHO"
        | b"CLUSTER" | b"CLIENT" | b"CONFIG" | b"DBSIZE" | b"FLUSHALL" | b"FLUSHDB" | b"SCAN"
        | b"KEYS" | b"MULTI" | b"EXEC" => None,
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let count: usize = std::str::from_utf8(rest.get(1)?).ok()?.parse().ok()?;
            (count > 0).then(|| rest.iter().skip(2).take(count).copied().collect())
        }
        b"MGET" | b"DEL" | b"UNLINK" | b"EXISTS" | b"TOUCH" => Some(rest.to_vec()),
        b"XGROUP" | b"XINFO" => Some(vec![*rest.get(1)?]),
        b"XREAD" | b"XREADGROUP" => {
            let streams = rest
                .iter()
                .position(|arg| arg.eq_ignore_ascii_case(b"STREAMS"))?;
            let named = &rest[streams + 1..];
            Some(named[..named.len() / 2].to_vec())
        }
        _ => Some(vec![*rest.first()?]),
    }
}

/// Where `cmd` goes: the slot of its keys, or alone when it has none or they span slots.
fn placement(cmd: &Cmd) -> Placement {
    let args = args(cmd);
    let Some(keys) = keys(&args) else {
        return Placement::Alone;
    };
    let mut slots = keys.iter().map(|key| key_slot(key));
    let Some(first) = slots.next() else {
        return Placement::Alone;
    };
    if slots.all(|slot| slot == first) {
        Placement::Slot(first)
    } else {
        Placement::Alone
    }
}

/// Groups keys by hash slot, keeping their order within each slot: for a script that may take keys of
/// one slot only.
pub fn by_slot<K: AsRef<[u8]>>(keys: &[K]) -> Vec<Vec<usize>> {
    let mut slots: HashMap<u16, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let slot = key_slot(key.as_ref());
        let group = *slots.entry(slot).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(index);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(key: &str) -> Placement {
        Placement::Slot(key_slot(key.as_bytes()))
    }

    #[test]
    fn key_slots_are_redis_s() {
        // As `CLUSTER KEYSLOT` answers.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"x:{42}:y"), 8000);
        assert_eq!(key_slot(b"{}a"), 10875);
        assert_eq!(key_slot(b"a:{42}"), key_slot(b"42"));
        for n in 0..2_000 {
            let key = format!("p:c1:st:{{{n}}}:{}", n * 7);
            assert_eq!(
                Route::new(key_slot(key.as_bytes()), SlotAddr::Master),
                Route::with_key(&key, SlotAddr::Master),
                "{key}"
            );
        }
    }

    #[test]
    fn owners_are_read_from_cluster_slots() {
        let range = |start: i64, end: i64, port: i64| {
            Value::Array(vec![
                Value::Int(start),
                Value::Int(end),
                Value::Array(vec![
                    Value::BulkString(b"127.0.0.1".to_vec()),
                    Value::Int(port),
                ]),
            ])
        };
        let owners = SlotOwners::parse(Value::Array(vec![
            range(5461, 10922, 7002),
            range(0, 5460, 7001),
            range(10923, 16383, 7003),
        ]));
        assert_eq!(owners.owner(0), Some("127.0.0.1:7001"));
        assert_eq!(owners.owner(5461), Some("127.0.0.1:7002"));
        assert_eq!(owners.owner(16383), Some("127.0.0.1:7003"));
        assert_eq!(SlotOwners::default().owner(7), None);
    }

    #[test]
    fn keyed_commands_go_to_their_key_slot() {
        let mut set = redis::cmd("SET");
        set.arg("p:{7}:a").arg("v");
        assert_eq!(placement(&set), route("{7}"));

        let mut script = redis::cmd("EVALSHA");
        script
            .arg("abc")
            .arg(2)
            .arg("p:st:{7}:1")
            .arg("p:fs:{7}")
            .arg("x");
        assert_eq!(placement(&script), route("{7}"));

        let mut group = redis::cmd("XGROUP");
        group.arg("CREATE").arg("s:{events}").arg("g").arg("$");
        assert_eq!(placement(&group), route("{events}"));
    }

    #[test]
    fn keyless_or_cross_slot_commands_run_alone() {
        let mut publish = redis::cmd("PUBLISH");
        publish.arg("channel").arg("message");
        assert_eq!(placement(&publish), Placement::Alone);

        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg("return 1");
        assert_eq!(placement(&load), Placement::Alone);

        let mut mget = redis::cmd("MGET");
        mget.arg("a:{1}").arg("a:{2}");
        assert_eq!(placement(&mget), Placement::Alone);

        let mut same = redis::cmd("MGET");
        same.arg("a:{1}").arg("b:{1}");
        assert_eq!(placement(&same), route("{1}"));
    }

    #[test]
    fn every_slot_has_a_tag_that_hashes_to_it() {
        for slot in 0..SLOTS as u16 {
            let key = format!("prefix:ep:{{{}}}", slot_tag(slot));
            assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
        }
    }

    #[test]
    fn keys_group_by_slot_in_order() {
        let keys = ["a:{1}", "a:{2}", "b:{1}", "c:{3}", "c:{2}"];
        let groups = by_slot(&keys);
        assert_eq!(groups, vec![vec![0, 2], vec![1, 4], vec![3]]);
    }
}
