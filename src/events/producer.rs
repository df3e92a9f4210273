//! Appends committed events to the Redis Stream, within a short time budget, and remembers under which
//! entry each event went, so that the relay can tell an entry on its way from one that was lost.
//!
//! **The published index.** Every append also sets a field of a hash, outbox id → stream entry id
//! (`StreamNames::published`), in the same script, so an entry and its field exist together or not at
//! all. [`Producer::in_flight`] answers, per outbox id, whether its entry is still in the stream and not
//! yet acknowledged by the counters group (undelivered, or delivered and pending): only then does the
//! relay leave the row alone. A missing field (never published, Redis lost it), a missing entry (stream
//! deleted or trimmed, entry deleted), or an entry the group acknowledged without applying it (dead
//! letters) all read as missing, and the relay publishes the row again.
//!
//! **Its size.** A field lives while its entry is in flight: the consumer deletes the fields of the
//! entries it acknowledges, in the same round trip as the XACK, and the trimmer sweeps a page of the
//! hash per pass for any field whose entry is no longer in flight (a process that died between the two,
//! an instance of an older version). Deleting such a field never changes what the relay decides, since
//! it reads as missing either way. So the hash holds about one field per unapplied event, like the
//! stream. It has no TTL: with `volatile-lru`, Redis never evicts it.
//!
//! **Partitions.** Each event goes to its followee's partition (`Streams::of`), and every script and
//! pipeline here touches one partition's keys (its stream and its index share a hash tag): a batch of
//! events is one script per partition it spans, run side by side, and the relay's check asks each
//! row's partition under the current P.

use std::{sync::Arc, sync::LazyLock, time::Duration};

use anyhow::Context;

use super::{StreamNames, Streams, codec};
use crate::{
    domain::{EventId, FollowEvent},
    redis_health::RedisHealth,
    redis_pool::{RedisPool, redis},
    telemetry::metrics::{EVENTS_PUBLISHED, PUBLISH_FAILURES},
};

/// `KEYS[1]` the stream, `KEYS[2]` the published index; `ARGV[1]` the field-value pairs per event, then
/// per event its outbox id and those pairs. XADDs each event and records its entry id under its outbox id.
const PUBLISH_LUA: &str = r"
local pairs_per_event = tonumber(ARGV[1])
local i = 2
while i <= #ARGV do
  local entry = redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + 2 * pairs_per_event))
  redis.call('HSET', KEYS[2], ARGV[i], entry)
  i = i + 1 + 2 * pairs_per_event
end
return 0
";

/// Whether an entry recorded in the published index is still on its way to the counters group: it is
/// in the stream, and either past the group's last delivered id (or there is no group yet, which a
/// consumer creates at `0`) or in the group's pending list. Shared by the relay's check and the sweep.
///
/// An entry is in the stream if its id lies between the stream's first entry and its last generated id
/// and above the highest id ever deleted from it (XDEL): ids are Redis times, so a stream deleted and
/// created again numbers its entries after the old ones, and trimming only moves the first entry. Only an
/// entry at or below the highest deleted id is looked up (XRANGE, which scans its stream node: 12 µs
/// against 3), and must also carry its outbox id.
const IN_FLIGHT_LUA: &str = r"
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return {tonumber(ms), tonumber(seq)}
end
local function later(a, b)
  return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2])
end
local length, first, last, deleted = 0, nil, nil, nil
local stream = redis.pcall('XINFO', 'STREAM', KEYS[1])
if type(stream) == 'table' and not stream.err then
  for j = 1, #stream, 2 do
    local k = stream[j]
    if k == 'length' then length = stream[j + 1]
    elseif k == 'recorded-first-entry-id' then first = parse(stream[j + 1])
    elseif k == 'last-generated-id' then last = parse(stream[j + 1])
    elseif k == 'max-deleted-entry-id' then deleted = parse(stream[j + 1]) end
  end
end
local delivered = nil
if length > 0 then
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, id
    for j = 1, #g, 2 do
      if g[j] == 'name' then name = g[j + 1] elseif g[j] == 'last-delivered-id' then id = g[j + 1] end
    end
    if name == ARGV[1] then delivered = parse(id) end
  end
end
local function stored(outbox_id, entry, at)
  if first and last and deleted then
    if later(first, at) or later(at, last) then return false end
    if later(at, deleted) then return true end
  end
  local found = redis.call('XRANGE', KEYS[1], entry, entry)
  local body = found[1] and found[1][2]
  if not body then return false end
  for j = 1, #body, 2 do
    if body[j] == 'id' and body[j + 1] == outbox_id then return true end
  end
  return false
end
local function in_flight(outbox_id, entry)
  if not entry or length == 0 then return false end
  local at = parse(entry)
  if not stored(outbox_id, entry, at) then return false end
  if delivered == nil or later(at, delivered) then return true end
  return #redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1) > 0
end
";

/// `KEYS[1]` the stream, `KEYS[2]` the published index; `ARGV[1]` the group, `ARGV[2..]` outbox ids.
/// Returns 1 per id whose entry is in flight, 0 per id whose entry is missing.
static CHECK_LUA: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{IN_FLIGHT_LUA}
local out = {{}}
for i = 2, #ARGV do
  out[#out + 1] = in_flight(ARGV[i], redis.call('HGET', KEYS[2], ARGV[i])) and 1 or 0
end
return out
"
    )
});

/// `KEYS[1]` the stream, `KEYS[2]` the published index; `ARGV[1]` the group, `ARGV[2]` an HSCAN cursor,
/// `ARGV[3]` its COUNT. Deletes the fields of that page whose entry is not in flight; returns
/// `{next cursor, fields deleted}`.
static SWEEP_LUA: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{IN_FLIGHT_LUA}
local page = redis.call('HSCAN', KEYS[2], ARGV[2], 'COUNT', ARGV[3])
local gone = {{}}
for i = 1, #page[2], 2 do
  if not in_flight(page[2][i], page[2][i + 1]) then gone[#gone + 1] = page[2][i] end
end
if #gone > 0 then redis.call('HDEL', KEYS[2], unpack(gone)) end
return {{page[1], #gone}}
"
    )
});

/// Outbox ids checked per script call: about 1 ms of Redis's time, 3 ms if all must be looked up.
const CHECK_CHUNK: usize = 250;

static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(PUBLISH_LUA));
static CHECK: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(&CHECK_LUA));
static SWEEP: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(&SWEEP_LUA));

/// Publishes events to the stream's partitions; cheap to clone.
#[derive(Clone)]
pub struct Producer {
    redis: RedisPool,
    streams: Streams,
    timeout: Duration,
    /// Who publishes (`writer` or `relay`), for metrics.
    source: &'static str,
    /// The Redis circuit breaker: while open, writers skip the XADD (the relay publishes later).
    health: Arc<RedisHealth>,
}

impl Producer {
    pub fn new(
        redis: RedisPool,
        streams: Streams,
        timeout: Duration,
        source: &'static str,
        health: Arc<RedisHealth>,
    ) -> Self {
        // This source's series from the start (at zero unless counting already), for `increase()`.
        ::metrics::counter!(EVENTS_PUBLISHED, "source" => source).increment(0);
        ::metrics::counter!(PUBLISH_FAILURES, "source" => source).increment(0);
        Self {
            health,
            redis,
            streams,
            source,
            timeout,
        }
    }

    /// XADDs every event and records its entry in the published index, in one script and one round trip
    /// per partition, the partitions side by side (the stream is trimmed by the consumers' progress, never
    /// by length: see `recovery`). An error here loses nothing: the events stay in the outbox and the
    /// relay publishes them later.
    pub async fn publish(&self, events: &[FollowEvent]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        // While the breaker is open, Redis is not called: the events wait in the outbox for the relay.
        if !self.health.is_closed() {
            ::metrics::counter!(PUBLISH_FAILURES, "source" => self.source)
                .increment(events.len() as u64);
            anyhow::bail!("Redis is considered down (circuit open)");
        }
        let appends = self
            .by_partition(events)
            .into_iter()
            .map(|(names, events)| async move {
                let args = publish_args(&events, false);
                let call = async {
                    let _: i64 = self
                        .run(names, &PUBLISH, PUBLISH_LUA, &args)
                        .await
                        .context("XADD failed")?;
                    anyhow::Ok(())
                };
                let outcome = tokio::time::timeout(self.timeout, call)
                    .await
                    .context("XADD timed out")
                    .and_then(|r| r);
                let name = if outcome.is_ok() {
                    EVENTS_PUBLISHED
                } else {
                    PUBLISH_FAILURES
                };
                ::metrics::counter!(name, "source" => self.source).increment(events.len() as u64);
                outcome
            });
        futures::future::join_all(appends)
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<()>>>()
            .map(|_| ())
    }

    /// The append of these events split for the cache's round trip: the events of the partition with
    /// the most of them ride it (a script's keys must share a Redis Cluster slot), their entries marked
    /// as recorded in the caches by that same round trip; the others (none when P = 1) are left for
    /// [`Producer::publish`] beside it, unmarked, since their append does not depend on that round trip.
    /// No rider when there is nothing to append or the breaker is open (counted as a failure: the relay
    /// publishes them). Report the round trip's outcome with [`Producer::carried`].
    pub fn rider(&self, events: &[FollowEvent]) -> Riding {
        if events.is_empty() {
            return Riding::default();
        }
        if !self.health.is_closed() {
            ::metrics::counter!(PUBLISH_FAILURES, "source" => self.source)
                .increment(events.len() as u64);
            return Riding::default();
        }
        let mut groups = self.by_partition(events);
        let Some(largest) = (0..groups.len()).max_by_key(|&i| groups[i].1.len()) else {
            return Riding::default();
        };
        let (names, riding) = groups.swap_remove(largest);
        Riding {
            rider: Some(crate::cache::l2::Rider {
                script: &PUBLISH,
                text: PUBLISH_LUA,
                keys: vec![names.stream.clone(), names.published.clone()],
                args: publish_args(&riding, true),
            }),
            carried: riding.len(),
            beside: groups.into_iter().flat_map(|(_, events)| events).collect(),
        }
    }

    /// The events grouped by the partition they go to, in partition order.
    fn by_partition(&self, events: &[FollowEvent]) -> Vec<(&StreamNames, Vec<FollowEvent>)> {
        let mut groups: Vec<(&StreamNames, Vec<FollowEvent>)> = Vec::new();
        for event in events {
            let names = self.streams.of(event.followee);
            match groups
                .iter_mut()
                .find(|(n, _)| n.partition == names.partition)
            {
                Some((_, group)) => group.push(event.clone()),
                None => groups.push((names, vec![event.clone()])),
            }
        }
        groups.sort_by_key(|(names, _)| names.partition);
        groups
    }

    /// Counts the events a rider carried, published or not.
    pub fn carried(&self, events: usize, published: bool) {
        let name = if published {
            EVENTS_PUBLISHED
        } else {
            PUBLISH_FAILURES
        };
        ::metrics::counter!(name, "source" => self.source).increment(events as u64);
    }

    /// Of these events (outbox rows), the ids of those whose entry is still on its way to the counters
    /// group in their partition under the current P (see the module's documentation); one script per
    /// partition and chunk of ids, each a consistent view of that partition's stream, group and index.
    pub async fn in_flight(&self, events: &[FollowEvent]) -> anyhow::Result<Vec<EventId>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        if !self.health.is_closed() {
            anyhow::bail!("Redis is considered down (circuit open)");
        }
        let mut in_flight = Vec::new();
        for (names, events) in self.by_partition(events) {
            let outbox_ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
            // A script holds Redis for its whole run: a few milliseconds at most per call.
            for chunk in outbox_ids.chunks(CHECK_CHUNK) {
                let mut args = Vec::with_capacity(1 + chunk.len());
                args.push(names.group.to_owned());
                args.extend(chunk.iter().map(ToString::to_string));
                let flags: Vec<i64> =
                    tokio::time::timeout(self.timeout, self.run(names, &CHECK, &CHECK_LUA, &args))
                        .await
                        .context("the in-flight check timed out")?
                        .context("the in-flight check failed")?;
                anyhow::ensure!(
                    flags.len() == chunk.len(),
                    "the in-flight check answered {} flags for {} ids",
                    flags.len(),
                    chunk.len()
                );
                in_flight.extend(
                    chunk
                        .iter()
                        .zip(flags)
                        .filter(|(_, flag)| *flag == 1)
                        .map(|(id, _)| *id),
                );
            }
        }
        Ok(in_flight)
    }

    /// Runs a script over one partition's stream and published index by its hash, sending the text only
    /// when Redis does not know it (after a restart).
    async fn run<T: redis::FromRedisValue>(
        &self,
        names: &StreamNames,
        script: &redis::Script,
        text: &str,
        args: &[String],
    ) -> anyhow::Result<T> {
        let call = |command: &str, body: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(body)
                .arg(2)
                .arg(&names.stream)
                .arg(&names.published)
                .arg(args);
            cmd
        };
        match self
            .redis
            .query_cmd(&call("EVALSHA", script.get_hash()))
            .await
        {
            Err(err) if is_no_script(&err) => self.redis.query_cmd(&call("EVAL", text)).await,
            other => other,
        }
    }
}

/// What [`Producer::rider`] makes of a group commit's events.
#[derive(Default)]
pub struct Riding {
    /// The script that rides the cache's round trip, if any.
    pub rider: Option<crate::cache::l2::Rider<'static>>,
    /// Events the rider carries, for [`Producer::carried`].
    pub carried: usize,
    /// Events of the other partitions, for [`Producer::publish`] beside the round trip.
    pub beside: Vec<FollowEvent>,
}

/// The arguments of `PUBLISH_LUA` for these events (at least one).
/// `recorded`: the entries say that their status went to the caches in the same round trip (see
/// [`codec::RECORDED_FIELD`]).
fn publish_args(events: &[FollowEvent], recorded: bool) -> Vec<String> {
    let pairs = events.first().map_or(0, |e| codec::fields(e).len()) + usize::from(recorded);
    let mut args: Vec<String> = Vec::with_capacity(1 + events.len() * (1 + 2 * pairs));
    args.push(pairs.to_string());
    for event in events {
        args.push(event.id.to_string());
        for (field, value) in codec::fields(event) {
            args.push(field.to_owned());
            args.push(value);
        }
        if recorded {
            args.push(codec::RECORDED_FIELD.to_owned());
            args.push("1".to_owned());
        }
    }
    args
}

/// Deletes the fields of one page of a partition's published index whose entry is no longer in flight; returns
/// the next HSCAN cursor (`0`: the sweep went round) and how many fields it deleted.
pub async fn sweep_published(
    conn: &mut crate::redis_pool::Dedicated,
    names: &StreamNames,
    cursor: u64,
    count: usize,
) -> anyhow::Result<(u64, i64)> {
    let reply: (u64, i64) = SWEEP
        .key(&names.stream)
        .key(&names.published)
        .arg(names.group)
        .arg(cursor)
        .arg(count)
        .invoke_async(conn)
        .await
        .context("sweeping the published index failed")?;
    Ok(reply)
}

fn is_no_script(err: &anyhow::Error) -> bool {
    err.downcast_ref::<redis::RedisError>()
        .is_some_and(|e| e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
}
